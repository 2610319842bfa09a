"""Synthetic data by spec: ``synthetic:``/``synthetic-pairs:`` parsing, ``SyntheticIndex``, ``montage``.

``synthetic:ids=100,per_id=20,size=112,seed=0`` is an in-memory :class:`SyntheticIndex` of face-like
identities drawn by :mod:`noisyfr.data.render`; ``synthetic-pairs:...`` is a verification set over
identities unseen in training (:class:`~noisyfr.data.synthetic_pairs.SyntheticPairs`), whose spec is
parsed and validated here by the same helper as the training spec's.
"""
from __future__ import annotations

import contextlib
import io
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from noisyfr import numeric
from noisyfr.data.index import FaceIndex

# re-exported: the renderer lived in this module before, and these names stay importable from it
from noisyfr.data.render import (  # noqa: F401
    MAX_SIZE,
    MIN_SIZE,
    RENDERER_VERSION,
    IdentityParams,
    render_identity_params,
    render_image,
    render_image_array,
)
from noisyfr.data.specs import spec_items
from noisyfr.errors import NoisyFRError

DEFAULTS = {"ids": 100, "per_id": 20, "size": 112, "seed": 0}
MAX_IMAGES = 10_000_000
MAX_SEED = 2**63 - 1
PNG_COMPRESS_LEVEL = 6

PAIRS_PREFIX = "synthetic-pairs"
PAIRS_DEFAULTS = {"ids": 100, "per_id": 10, "first_id": 100_000, "pairs": 600, "size": 112,
                  "seed": 0}
MAX_PAIRS = 2_000_000
MAX_LABEL = 2**62

#: Inclusive bounds of every parameter of a ``synthetic:`` spec and of a ``synthetic-pairs:`` spec.
BOUNDS = {"ids": (1, MAX_IMAGES), "per_id": (1, MAX_IMAGES), "size": (MIN_SIZE, MAX_SIZE),
          "seed": (0, MAX_SEED)}
PAIRS_BOUNDS = {"ids": (2, MAX_IMAGES), "per_id": (2, MAX_IMAGES), "first_id": (0, MAX_LABEL),
                "pairs": (2, MAX_PAIRS), "size": (MIN_SIZE, MAX_SIZE), "seed": (0, MAX_SEED)}


def encode_png(image: torch.Tensor | np.ndarray) -> bytes:
    """PNG bytes of a uint8 [3, H, W] tensor or array, with fixed settings (same image -> same bytes)."""
    arr = (image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="RGB").save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def check_int_params(values: dict, bounds: dict, where: str | None,
                     names: dict | None = None) -> dict:
    """Validate the integer parameters ``values`` (``{name: value}``, checked in that order)
    against the inclusive ``bounds`` (``{name: (lo, hi)}``) and ``ids x per_id <= MAX_IMAGES``.

    Returns them as a dict of plain ints; otherwise NoisyFRError ``"<where>: <name>: ..."``
    (parsed by :func:`noisyfr.numeric.integer`).
    ``names`` renames parameters in messages (e.g. ``{"per_id": "--per-id"}`` for the CLI);
    ``where=None`` drops the prefix. Serves both :func:`check_params` and :func:`check_pairs_params`.
    """
    names = names or {}
    prefix = f"{where}: " if where else ""
    out = {}
    for name, value in values.items():
        lo, hi = bounds[name]
        out[name] = numeric.integer(value, f"{prefix}{names.get(name, name)}", lo=lo, hi=hi)
    if out["ids"] * out["per_id"] > MAX_IMAGES:
        raise NoisyFRError(f"{prefix}{names.get('ids', 'ids')} x {names.get('per_id', 'per_id')} = "
                           f"{out['ids'] * out['per_id']} images exceeds the limit {MAX_IMAGES}")
    return out


def check_params(ids, per_id, size, seed, where: str | None = "synthetic",
                 names: dict | None = None) -> tuple[int, int, int, int]:
    """Validate the four parameters of a ``synthetic:`` spec; NoisyFRError ``"<where>: <name>: ..."``
    otherwise. Returns ``(ids, per_id, size, seed)`` as ints.

    ``names`` renames parameters in messages (e.g. ``{"per_id": "--per-id"}`` for the CLI);
    ``where=None`` drops the prefix.
    """
    out = check_int_params({"ids": ids, "per_id": per_id, "size": size, "seed": seed}, BOUNDS,
                           where, names)
    return out["ids"], out["per_id"], out["size"], out["seed"]


def pairs_available(ids: int, per_id: int) -> tuple[int, int]:
    """(number of distinct same-identity pairs, number of distinct different-identity pairs)."""
    n = ids * per_id
    same = ids * (per_id * (per_id - 1) // 2)
    return same, n * (n - 1) // 2 - same


def check_pairs_params(ids, per_id, first_id, pairs, size, seed,
                       where: str = "synthetic-pairs") -> dict:
    """Validate the parameters of a synthetic verification set; NoisyFRError naming the bad one.

    ``ids`` >= 2 and ``per_id`` >= 2 (both kinds of pairs must exist), ``first_id`` >= 0,
    ``pairs`` even, >= 2 and at most the number of distinct same (and different) pairs,
    ``size`` in [16, 1024], ``seed`` >= 0. Returns the parameters as a dict of ints.
    """
    out = check_int_params({"ids": ids, "per_id": per_id, "first_id": first_id, "pairs": pairs,
                            "size": size, "seed": seed}, PAIRS_BOUNDS, where)
    if out["first_id"] + out["ids"] > MAX_LABEL:
        raise NoisyFRError(f"{where}: first_id + ids must be <= {MAX_LABEL}")
    if out["pairs"] % 2:
        raise NoisyFRError(f"{where}: pairs must be even (half same, half different), "
                           f"got {out['pairs']}")
    same, diff = pairs_available(out["ids"], out["per_id"])
    half = out["pairs"] // 2
    if half > same:
        raise NoisyFRError(f"{where}: pairs={out['pairs']} needs {half} distinct same-identity "
                           f"pairs but ids={out['ids']} x per_id={out['per_id']} has only {same}")
    if half > diff:  # pragma: no cover - unreachable with ids, per_id >= 2 and half <= same
        raise NoisyFRError(f"{where}: pairs={out['pairs']} needs {half} distinct "
                           f"different-identity pairs but only {diff} exist")
    return out


def _parse_int_items(body: str, defaults: dict, where: str) -> dict:
    """``"ids=10,per-id=5"`` -> ``defaults`` updated with those integers (``-`` may replace ``_``);
    an unknown, repeated or valueless key, or a non-integer value, is a NoisyFRError naming ``where``."""
    params = dict(defaults)
    for key, value in spec_items(body, defaults, where, "N").items():
        params[key] = numeric.integer(value, f"{where}: {key}")
    return params


def parse_spec(spec: str) -> dict:
    """Parse ``synthetic[:key=value,...]`` (keys ids, per_id, size, seed) into a full parameter dict."""
    if not isinstance(spec, str) or not (spec == "synthetic" or spec.startswith("synthetic:")):
        raise NoisyFRError(f"synthetic spec {spec!r}: must look like "
                           f"'synthetic:ids=100,per_id=20,size=112,seed=0'")
    body = spec[len("synthetic:"):] if spec.startswith("synthetic:") else ""
    params = _parse_int_items(body, DEFAULTS, f"synthetic spec {spec!r}")
    check_params(params["ids"], params["per_id"], params["size"], params["seed"],
                  f"synthetic spec {spec!r}")
    return params


def parse_pairs_spec(spec: str) -> dict:
    """Parse ``synthetic-pairs[:key=value,...]`` (keys ids, per_id, first_id, pairs, size, seed;
    ``-`` may replace ``_``) into a full, validated parameter dict (defaults for missing keys)."""
    if not isinstance(spec, str) or not (spec == PAIRS_PREFIX or spec.startswith(PAIRS_PREFIX + ":")):
        raise NoisyFRError(f"synthetic pairs spec {spec!r}: must look like 'synthetic-pairs:"
                           f"ids=100,per_id=10,first_id=100000,pairs=600,size=112,seed=0'")
    where = f"synthetic pairs spec {spec!r}"
    params = _parse_int_items(spec[len(PAIRS_PREFIX) + 1:], PAIRS_DEFAULTS, where)
    return check_pairs_params(**params, where=where)


#: The process-wide cache of :func:`shared_renders` while one is open: ``[images, max images]``.
_SHARED: list | None = None


@contextlib.contextmanager
def shared_renders(cache_mb: float = 256.0):
    """Within the block every synthetic set of this process (training indexes and verification
    pairs alike) shares one bounded LRU cache of rendered images, keyed by what
    :func:`~noisyfr.data.render.render_image` is a pure function of (seed, identity, image, size).
    Runs trained one after another in one process (``noisyfr loop``) then render each image once
    instead of once per run. Outside such a block nothing is shared (each set has its own cache);
    the images are the same either way. Blocks do not nest: an inner one uses the outer cache."""
    global _SHARED
    if _SHARED is not None:
        yield
        return
    _SHARED = [OrderedDict(), max(0, int(cache_mb * 2**20))]
    try:
        yield
    finally:
        _SHARED = None


def _shared_get(key):
    if _SHARED is None:
        return None
    img = _SHARED[0].get(key)
    if img is not None:
        _SHARED[0].move_to_end(key)
    return img


def _shared_put(key, img: torch.Tensor) -> None:
    if _SHARED is None:
        return
    cache, limit = _SHARED
    cache[key] = img
    while cache and len(cache) * img.numel() > limit:
        cache.popitem(last=False)


class RenderedImages:
    """Images of a synthetic set, shared by :class:`SyntheticIndex` and
    :class:`~noisyfr.data.synthetic_pairs.SyntheticPairs`: image ``i`` is
    ``render_image(seed, first_label + i // per_id, i % per_id, size)``, rendered on first access
    and kept in a bounded LRU cache (``cache_mb`` megabytes, 0 disables it) that is not pickled
    (DataLoader workers start with an empty cache)."""

    first_label = 0
    _what = "image"

    def _init_cache(self, cache_mb: float) -> None:
        self._cache_max = max(0, int(cache_mb * 2**20 // (3 * self.size * self.size)))
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _check_index(self, i) -> int:
        n = self.ids * self.per_id
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"{self.source}: {self._what} index {i!r} out of range [0, {n})")
        return int(i) % n

    def identity_params(self, label: int) -> IdentityParams:
        """The stable parameters of identity ``label`` (an absolute label)."""
        return render_identity_params(self.seed, int(label))

    def load_image(self, i: int) -> torch.Tensor:
        """uint8 tensor [3, size, size] of image ``i`` (rendered once, then cached)."""
        i = self._check_index(i)
        img = self._cache.get(i)
        if img is not None:
            self._cache.move_to_end(i)
            return img.clone()
        j, k = divmod(i, self.per_id)
        key = (self.seed, self.first_label + j, k, self.size)
        img = _shared_get(key)
        if img is None:
            img = render_image(self.seed, self.first_label + j, k, self.size)
            _shared_put(key, img)
        if self._cache_max:
            self._cache[i] = img
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
            return img.clone()
        return img.clone() if _SHARED is not None else img   # never hand out a cached tensor

    def read_bytes(self, i: int) -> bytes:
        """PNG bytes of image ``i`` (decode them to get exactly :meth:`load_image`)."""
        return encode_png(self.load_image(i))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()   # don't ship rendered images to DataLoader workers
        return state


class SyntheticIndex(RenderedImages, FaceIndex):
    """In-memory index of ``ids`` x ``per_id`` synthetic face-like images of ``size`` x ``size``.

    ``labels = repeat(arange(ids), per_id)``; identity names ``id0000``...; paths
    ``"<identity>/<k:03d>.png"`` (the layout ``noisyfr synth`` writes). Images are rendered on
    first access and kept in a bounded cache (``cache_mb`` megabytes, 0 disables it).
    """

    def __init__(self, ids: int = 100, per_id: int = 20, size: int = 112, seed: int = 0,
                 cache_mb: float = 512.0):
        self.ids, self.per_id, self.size, self.seed = check_params(
            ids, per_id, size, seed, "SyntheticIndex")
        self.source = self.spec
        width = max(4, len(str(self.ids - 1)))
        kwidth = max(3, len(str(self.per_id - 1)))
        self.identities = [f"id{i:0{width}d}" for i in range(self.ids)]
        self.labels = np.repeat(np.arange(self.ids, dtype=np.int64), self.per_id)
        self.paths = [f"{name}/{k:0{kwidth}d}.png" for name in self.identities
                      for k in range(self.per_id)]
        self._init_cache(cache_mb)

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> SyntheticIndex:
        """``SyntheticIndex.from_spec("synthetic:ids=100,per_id=20,size=112,seed=0")``; keys optional."""
        return cls(**parse_spec(spec), **kwargs)

    @property
    def spec(self) -> str:
        """The canonical spec string of this index (what :meth:`from_spec` reads back)."""
        return (f"synthetic:ids={self.ids},per_id={self.per_id},size={self.size},"
                f"seed={self.seed}")

    _what = "sample"


def montage(index: FaceIndex, ids: int = 8, per_id: int = 8) -> np.ndarray:
    """A uint8 [ids*H, per_id*W, 3] grid: row r holds the first ``per_id`` images of identity r."""
    rows = []
    for label in range(min(ids, index.num_identities)):
        where = np.flatnonzero(index.labels == label)[:per_id]
        rows.append(np.concatenate([index.load_image(int(i)).permute(1, 2, 0).numpy()
                                    for i in where], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)
