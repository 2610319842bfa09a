"""What noise to inject: :class:`NoiseSpec`, validated once, and the noise-type vocabulary.

A spec is the same thing wherever it is written: the ``data.noise`` section of a training config
or of a sweep (a mapping, errors name the dotted config key), the options of ``noisyfr inject``
(errors name the flag) or a Python call. ``NoiseSpec.from_mapping(values, name=...)`` checks every
field and its ``name`` callable turns a field into the name the user wrote.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from noisyfr import numeric
from noisyfr.errors import NoisyFRError

#: Noise types of a manifest's ``noise`` column, in code order (the manifest stores the code).
NOISE_TYPES = ("clean", "closed", "open", "split", "merge")
#: Closed-set flip targets.
CLOSED_MODES = ("symmetric", "pairwise", "nearest")


def config_key(field: str) -> str:
    """The config spelling of a spec field: ``data.noise.<field>``."""
    return f"data.noise.{field}"


def cli_flag(field: str) -> str:
    """The ``noisyfr inject`` spelling of a spec field: ``--closed-mode``."""
    return "--" + field.replace("_", "-")


def _rate(name: str, value: Any) -> float:
    return numeric.real(value, name, lo=0.0, hi=1.0)


def _count(name: str, value: Any, hi: int | None = None) -> int:
    return numeric.integer(value, name, lo=0, hi=hi)


def _path(name: str, value: Any, also: Callable[[Any], bool] = lambda v: False):
    """A path as ``str`` (``None`` stays None); objects ``also`` accepts pass unchanged (an opened
    outlier index, an embeddings array from Python)."""
    if value is None or also(value):
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise NoisyFRError(f"{name}: expected a path, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class NoiseSpec:
    """Label noise to inject (see :mod:`noisyfr.noise.inject` for the order of application).

    ``closed`` / ``open``: rates in [0, 1] of samples given another in-set label (``closed_mode``:
    symmetric, pairwise or nearest; ``embeddings``: optional ``.npy`` features for ``nearest``) /
    replaced by an out-of-set image (from the ``outliers`` ImageFolder, or from ``holdout_ids``
    identities removed from the label set); ``split`` identities spread over two labels each;
    ``merge`` pairs of identities sharing one label; ``seed`` the only source of randomness
    (``None``: the run's seed, filled in by :meth:`with_seed`). From Python, ``outliers`` may also
    be an opened FaceIndex and ``embeddings`` a numpy array.
    """

    closed: float = 0.0
    closed_mode: str = "symmetric"
    open: float = 0.0
    outliers: str | None = None
    holdout_ids: int = 0
    split: int = 0
    merge: int = 0
    seed: int | None = None
    embeddings: str | None = None

    def __post_init__(self):
        self.check()

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None,
                     name: Callable[[str], str] = config_key) -> NoiseSpec:
        """A spec from a mapping of fields (missing ones take their defaults). An unknown key or a
        bad value raises NoisyFRError naming ``name(field)``."""
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise NoisyFRError(f"{name('')[:-1] or 'noise'}: expected a mapping of noise settings, "
                               f"got {type(values).__name__}")
        known = cls.fields()
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {name(close[0])}?)" if close else f" (known: {', '.join(known)})"
                raise NoisyFRError(f"{name(str(key))}: unknown noise key{hint}")
        return cls._checked(dict(values), name)

    @classmethod
    def _checked(cls, values: dict, name: Callable[[str], str]) -> NoiseSpec:
        spec = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(spec, f.name, values.get(f.name, f.default))
        spec.check(name)
        return spec

    def check(self, name: Callable[[str], str] = config_key) -> None:
        """Validate every field (normalising numbers in place); NoisyFRError naming ``name(field)``."""
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("closed", _rate(name("closed"), self.closed))
        set_("open", _rate(name("open"), self.open))
        if self.closed + self.open > 1.0 + 1e-12:
            raise NoisyFRError(f"{name('closed')} {self.closed:g} + {name('open')} {self.open:g}: "
                               f"rates sum to {self.closed + self.open:g} > 1")
        if self.closed_mode not in CLOSED_MODES:
            raise NoisyFRError(f"{name('closed_mode')}: must be one of {', '.join(CLOSED_MODES)}, "
                               f"got {self.closed_mode!r}")
        for k in ("holdout_ids", "split", "merge"):
            set_(k, _count(name(k), getattr(self, k)))
        if self.seed is not None:
            set_("seed", _count(name("seed"), self.seed, numeric.MAX_SEED))
        set_("outliers", _path(name("outliers"), self.outliers, lambda v: hasattr(v, "load_image")))
        set_("embeddings", _path(name("embeddings"), self.embeddings, lambda v: isinstance(v, np.ndarray)))
        if self.outliers is not None and self.holdout_ids:
            raise NoisyFRError(f"{name('outliers')} and {name('holdout_ids')}: give one outlier source, "
                               "not both")
        if self.open > 0 and self.outliers is None and not self.holdout_ids:
            raise NoisyFRError(f"{name('open')} {self.open:g}: needs an outlier source "
                               f"({name('outliers')} or {name('holdout_ids')})")
        if self.embeddings is not None and self.closed_mode != "nearest":
            raise NoisyFRError(f"{name('embeddings')}: only used with {name('closed_mode')} nearest, "
                               f"not {self.closed_mode!r}")

    def with_seed(self, seed: int) -> NoiseSpec:
        """This spec with ``seed`` filled in when it has none."""
        return self if self.seed is not None else dataclasses.replace(self, seed=int(seed))

    def replace(self, **changes) -> NoiseSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain values (for configs, sidecars and JSON)."""
        return dataclasses.asdict(self)

    @property
    def is_clean(self) -> bool:
        """True when the spec injects nothing (every sample stays clean)."""
        return not (self.closed or self.open or self.split or self.merge or self.holdout_ids)


def spec_matches_meta(spec: NoiseSpec, meta: dict) -> bool:
    """True when a manifest sidecar ``meta`` records ``spec``: the requested rates, counts and
    closed mode and the seed."""
    req = meta.get("requested") if isinstance(meta.get("requested"), dict) else {}
    mine = {"closed": spec.closed, "closed_mode": spec.closed_mode, "open": spec.open,
            "holdout_ids": spec.holdout_ids, "split": spec.split, "merge": spec.merge}
    return all(req.get(k) == v for k, v in mine.items()) and meta.get("seed") == (spec.seed or 0)
