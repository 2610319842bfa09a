"""Training configuration: YAML file + ``key=value`` overrides -> validated dict with defaults.

``load_config(path_or_dict, overrides=())`` reads the YAML (or takes a dict), applies overrides
(``optim.lr=0.05``, ``data.val=[a.txt,b.bin]``; the value is parsed as YAML, aliases refused),
checks every key against :data:`SCHEMA` and fills in defaults. An unknown key, a wrong type or an
invalid value raises :class:`NoisyFRError` naming the dotted key, e.g.
``config key 'optim.lrr': unknown key (did you mean 'optim.lr'?)``.

The ``loss`` section is free-form apart from ``name``: its other keys are the loss's parameters
and are validated by calling :func:`noisyfr.losses.build_loss`.
"""
from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from noisyfr import numeric
from noisyfr.dotted import set_dotted
from noisyfr.errors import NoisyFRError
from noisyfr.io import parse_yaml, read_yaml

_REQUIRED = object()


# --------------------------------------------------------------------------- value checkers
# Each checker takes (key, value) and returns the (possibly coerced) value or raises.

def _err(key: str, msg: str) -> NoisyFRError:
    return NoisyFRError(f"config key '{key}': {msg}")


def int_(lo: int | None = None, optional: bool = False,
         hi: int | None = None) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        return numeric.integer(v, f"config key '{key}'", lo=lo, hi=hi)
    return check


def float_(lo: float | None = None, hi: float | None = None, hi_open: bool = False,
           lo_open: bool = False) -> Callable[[str, Any], float]:
    # PyYAML (YAML 1.1) reads ``5e-4`` (no dot) as a string: numeric strings are accepted, and
    # NaN / infinity are refused in every spelling (noisyfr.numeric).
    def check(key: str, v: Any) -> float:
        return numeric.real(v, f"config key '{key}'", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return check


def optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``check``, or None passed through."""
    def check_optional(key: str, v: Any) -> Any:
        return None if v is None else check(key, v)
    return check_optional


def bool_(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _err(key, f"expected true or false, got {type(v).__name__} {v!r}")
    return v


def str_(optional: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if not isinstance(v, str) or not v:
            raise _err(key, f"expected a non-empty string, got {type(v).__name__} {v!r}")
        return v
    return check


def choice(*options: str) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        if v not in options:
            raise _err(key, f"expected one of {', '.join(options)}, got {v!r}")
        return v
    return check


def device_(key: str, v: Any) -> str:
    if isinstance(v, str) and (v in ("auto", "cpu", "cuda") or
                               (v.startswith("cuda:") and v[5:].isdigit())):
        return v
    raise _err(key, f"expected auto, cpu, cuda or cuda:N, got {v!r}")


def str_list(key: str, v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (str, os.PathLike)):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise _err(key, f"expected a list of paths, got {type(v).__name__} {v!r}")
    out = []
    for i, item in enumerate(v):
        out.append(str_()(f"{key}[{i}]", item))
    return out


def number_list(integer: bool = False, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise _err(key, f"expected a list of numbers, got {type(v).__name__} {v!r}")
        if integer:
            return [int_(lo=1)(f"{key}[{i}]", x) for i, x in enumerate(v)]
        return [float_(lo=0.0)(f"{key}[{i}]", x) for i, x in enumerate(v)]
    return check


def mapping_or_none(key: str, v: Any) -> Any:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise _err(key, f"expected a mapping, got {type(v).__name__} {v!r}")
    return dict(v)


# --------------------------------------------------------------------------- schema
# section -> key -> (default, checker). ``loss`` accepts any further key (loss parameters).
SCHEMA: dict[str, Any] = {
    "name": (None, str_(optional=True)),
    "plugins": ([], str_list),
    "seed": (0, int_(lo=0, hi=numeric.MAX_SEED)),
    "device": ("auto", device_),
    "output_dir": (None, str_(optional=True)),
    "resume": (False, bool_),
    "overwrite": (False, bool_),
    "data": {
        "train": (_REQUIRED, str_()),
        "manifest": (None, str_(optional=True)),
        "noise": (None, mapping_or_none),
        "image_size": (112, int_(lo=1, hi=numeric.MAX_IMAGE_SIZE)),
        "center_crop": (1.0, float_(lo=0.0, hi=1.0, lo_open=True)),
        "flip": (True, bool_),
        "crop_jitter": (0.0, float_(lo=0.0, hi=1.0, hi_open=True)),
        "val": ([], str_list),
        "num_workers": (0, int_(lo=0, hi=numeric.MAX_WORKERS)),
        "max_samples": (None, int_(lo=1, optional=True)),
        "max_per_id": (None, int_(lo=1, optional=True)),
        "holdout": (0.0, float_(lo=0.0, hi=1.0, hi_open=True)),
    },
    "model": {
        "backbone": ("iresnet50", str_()),
        "embedding_dim": (512, int_(lo=1, hi=numeric.MAX_EMBEDDING_DIM)),
        "dropout": (0.0, float_(lo=0.0, hi=1.0, hi_open=True)),
        "width": (1.0, float_(lo=0.0, lo_open=True, hi=4.0)),
        "depth": (None, int_(lo=1, optional=True, hi=64)),
        "input_dim": (None, int_(lo=1, optional=True, hi=numeric.MAX_EMBEDDING_DIM)),
        "init": (None, str_(optional=True)),
        "sync_bn": (False, bool_),
        "channels_last": (False, bool_),
        "compile": (False, bool_),
    },
    "loss": {
        "name": ("arcface", str_()),
        "sample_rate": (None, optional(float_(lo=0.0, lo_open=True, hi=1.0))),
    },
    "optim": {
        "name": ("sgd", choice("sgd", "adamw")),
        "lr": (0.1, float_(lo=0.0, lo_open=True)),
        "momentum": (0.9, float_(lo=0.0, hi=1.0, hi_open=True)),
        "weight_decay": (5.0e-4, float_(lo=0.0)),
        "batch_size": (None, int_(lo=2, optional=True, hi=numeric.MAX_TRAIN_BATCH)),
        "batch_size_per_device": (None, int_(lo=2, optional=True, hi=numeric.MAX_TRAIN_BATCH)),
        "epochs": (20, int_(lo=1)),
        "warmup_epochs": (0.0, float_(lo=0.0)),
        "schedule": ("cosine", choice("cosine", "poly", "step", "constant")),
        "lr_steps": ([], number_list()),
        "gamma": (0.1, float_(lo=0.0, lo_open=True)),
        "power": (2.0, float_(lo=0.0, lo_open=True)),
        "min_lr": (0.0, float_(lo=0.0)),
        "grad_clip": (0.0, float_(lo=0.0)),
        "amp": ("none", choice("none", "bf16", "fp16")),
    },
    "eval": {
        "epochs": (None, number_list(integer=True, optional=True)),
        "every": (1, int_(lo=0)),
        "batch_size": (64, int_(lo=1, hi=numeric.MAX_EVAL_BATCH)),
    },
    "track": {
        "angles": (True, bool_),
        "log_every": (10, int_(lo=1)),
        "angles_every": (1, int_(lo=1)),
        "angles_fraction": (1.0, float_(lo=0.0, hi=1.0, lo_open=True)),
    },
    "health": {
        "learned_accuracy": (0.8, float_(lo=0.0, hi=1.0)),
        "learned_heldout_accuracy": (0.5, float_(lo=0.0, hi=1.0)),
    },
    "checkpoint": {
        "keep": (0, int_(lo=0)),
    },
}

FREE_SECTIONS = ("loss",)


def _unknown(key: str, candidates: Iterable[str]) -> NoisyFRError:
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: -len(leaf)]
    close = difflib.get_close_matches(leaf, list(candidates), n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return _err(key, f"unknown key{hint}")


def _validate(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in raw:
        if not isinstance(key, str):
            raise _err(str(key), "keys must be strings")
        if key not in SCHEMA:
            raise _unknown(key, SCHEMA)
    for key, spec in SCHEMA.items():
        if isinstance(spec, dict):
            section = raw.get(key, None)
            if section is None:
                section = {}
            if not isinstance(section, Mapping):
                raise _err(key, f"expected a mapping, got {type(section).__name__} {section!r}")
            sec_out: dict[str, Any] = {}
            for sub in section:
                if not isinstance(sub, str):
                    raise _err(f"{key}.{sub}", "keys must be strings")
                if sub not in spec and key not in FREE_SECTIONS:
                    raise _unknown(f"{key}.{sub}", spec)
            for sub, (default, check) in spec.items():
                dotted = f"{key}.{sub}"
                if sub in section:
                    sec_out[sub] = check(dotted, section[sub])
                elif default is _REQUIRED:
                    raise _err(dotted, "required key is missing")
                else:
                    sec_out[sub] = copy.deepcopy(default)
            if key in FREE_SECTIONS:
                for sub, value in section.items():
                    if sub not in spec:
                        sec_out[sub] = _plain(f"{key}.{sub}", value)
            out[key] = sec_out
        else:
            default, check = spec
            out[key] = check(key, raw[key]) if key in raw else copy.deepcopy(default)
    return out


def _plain(key: str, value: Any) -> Any:
    """Loss parameters must be plain YAML scalars/lists (they go into checkpoints)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(f"{key}[{i}]", v) for i, v in enumerate(value)]
    raise _err(key, f"expected a number, string, boolean or list, got {type(value).__name__}")


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.05"`` -> ``("optim.lr", 0.05)``; the value is parsed as YAML (aliases refused)."""
    if "=" not in text:
        raise NoisyFRError(f"override {text!r}: expected KEY=VALUE (e.g. optim.lr=0.05)")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise NoisyFRError(f"override {text!r}: empty key")
    shown = text if len(text) <= 80 else f"{text[:77]}..."
    return key, (parse_yaml(value, f"override {shown!r}") if value.strip() else None)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a raw (unvalidated) config dict; returns a new dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_dotted(raw, key, value, err=_err)
    return raw


def _read_config_file(path: Path) -> dict[str, Any]:
    raw = read_yaml(path, "config")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise NoisyFRError(f"config {path}: expected a mapping at the top level, "
                           f"got {type(raw).__name__}")
    return raw


_BACKBONE_KEYS = {"backbone": "model.backbone", "embedding_dim": "model.embedding_dim",
                  "image_size": "data.image_size", "dropout": "model.dropout",
                  "width": "model.width", "depth": "model.depth", "input_dim": "model.input_dim"}


def _check_model(cfg: dict[str, Any]) -> None:
    from noisyfr.data.features import is_features_spec
    from noisyfr.models import check_backbone_args

    try:
        check_backbone_args(cfg["model"]["backbone"], cfg["model"]["embedding_dim"],
                            cfg["data"]["image_size"], cfg["model"]["dropout"],
                            cfg["model"]["width"], depth=cfg["model"]["depth"],
                            input_dim=cfg["model"]["input_dim"],
                            vectors=is_features_spec(cfg["data"]["train"]))
    except NoisyFRError as exc:
        msg = str(exc)
        head, _, rest = msg.partition(":")
        key = _BACKBONE_KEYS.get(head.strip())
        raise (_err(key, rest.strip()) if key else _err("model", msg)) from None


def loss_kwargs(section: Mapping[str, Any]) -> dict[str, Any]:
    """The loss's own parameters in a ``loss`` section: every key but those of the schema
    (``name``, and ``sample_rate``, which belongs to the head)."""
    return {k: v for k, v in section.items() if k not in SCHEMA["loss"]}


def _loss_numbers(section: dict[str, Any]) -> None:
    """The loss's numeric parameters parsed once, naming ``loss.<key>``: a number written as text
    (YAML 1.1 reads ``3e1`` as a string) becomes a number, NaN and infinity are refused; words
    (``grad_mode: exact``) are left to the loss."""
    for k, v in loss_kwargs(section).items():
        name = f"config key 'loss.{k}'"
        if isinstance(v, str):
            try:
                float(v)
            except ValueError:
                continue
            section[k] = numeric.integer(v, name) if numeric.is_int_text(v) else numeric.real(v, name)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            numeric.real(v, name)


def _check_loss(cfg: dict[str, Any]) -> None:
    from noisyfr.losses import build_loss

    _loss_numbers(cfg["loss"])
    try:
        loss = build_loss(cfg["loss"]["name"], **loss_kwargs(cfg["loss"]))
    except NoisyFRError as exc:
        raise _err("loss", str(exc)) from None
    except TypeError as exc:  # a loss without a parameter check of its own
        raise _err("loss", f"{cfg['loss']['name']}: {exc}") from None
    if cfg["loss"]["sample_rate"] is not None:
        from noisyfr.losses.partial_fc import partial_fc_blocker

        why = partial_fc_blocker(loss)
        if why:
            raise _err("loss.sample_rate", f"Partial FC cannot train loss {loss.name}: {why}")


#: Global batch when neither optim.batch_size nor optim.batch_size_per_device is given.
DEFAULT_BATCH_SIZE = 128


def _check_consistency(cfg: dict[str, Any]) -> None:
    optim = cfg["optim"]
    if optim["batch_size"] is not None and optim["batch_size_per_device"] is not None:
        raise _err("optim.batch_size", "and config key 'optim.batch_size_per_device' are both set: "
                                       "give the global batch or the batch per device, not both")
    if optim["batch_size"] is None and optim["batch_size_per_device"] is None:
        optim["batch_size"] = DEFAULT_BATCH_SIZE
    if optim["warmup_epochs"] >= optim["epochs"] and optim["warmup_epochs"] > 0:
        raise _err("optim.warmup_epochs",
                   f"must be < optim.epochs ({optim['epochs']}), got {optim['warmup_epochs']:g}")
    if optim["schedule"] == "step" and not optim["lr_steps"]:
        raise _err("optim.lr_steps", "the step schedule needs at least one epoch, e.g. [8, 14]")
    if sorted(optim["lr_steps"]) != optim["lr_steps"]:
        raise _err("optim.lr_steps", f"must be increasing, got {optim['lr_steps']}")
    if optim["min_lr"] >= optim["lr"] and optim["min_lr"] > 0:
        raise _err("optim.min_lr", f"must be < optim.lr ({optim['lr']:g})")
    _check_noise(cfg)
    _resolve_val_names(cfg)


def _resolve_val_names(cfg: dict[str, Any]) -> None:
    """``data.val`` entries that are bare set names (``lfw``, ``cfp_fp``, ``agedb_30``, ...) and
    not existing paths become the ``<name>.bin`` beside ``data.train`` (arcface_torch's
    ``val_targets``)."""
    from noisyfr.data.pairs import bin_beside, is_set_name

    data = cfg["data"]
    for i, value in enumerate(data["val"]):
        if is_set_name(value) and not Path(value).exists():
            data["val"][i] = str(bin_beside(value, data["train"], f"config key 'data.val[{i}]'"))


def _check_noise(cfg: dict[str, Any]) -> None:
    """``data.noise`` as a validated :class:`noisyfr.noise.NoiseSpec` mapping, its seed defaulting
    to the run's ``seed`` (errors name ``data.noise.<key>``)."""
    from noisyfr.noise import NoiseSpec

    noise = cfg["data"]["noise"]
    if noise is not None:
        spec = NoiseSpec.from_mapping(noise, name=lambda k: f"config key 'data.noise.{k}'")
        cfg["data"]["noise"] = spec.with_seed(cfg["seed"]).to_dict()


def load_config(path_or_dict: str | os.PathLike | Mapping[str, Any],
                overrides: Iterable[str | tuple[str, Any]] = ()) -> dict[str, Any]:
    """Read, override, validate and complete a training config.

    ``path_or_dict``: a YAML file or an already-parsed mapping. ``overrides``: ``"dotted.key=value"``
    strings (value parsed as YAML) or ``(dotted_key, value)`` pairs, applied before validation.
    Returns a plain dict with every key of :data:`SCHEMA` (defaults filled in); ``name`` defaults to
    the config file's stem (``"run"`` for a dict) and ``output_dir`` to ``runs/<name>``.
    Raises NoisyFRError naming the dotted key for an unknown key, a wrong type or a bad value,
    including loss parameters (checked with ``build_loss``) and backbone/image-size combinations.
    """
    if isinstance(path_or_dict, Mapping):
        raw, stem = copy.deepcopy(dict(path_or_dict)), "run"
    else:
        path = Path(path_or_dict)
        raw, stem = _read_config_file(path), path.stem
    raw = apply_overrides(raw, overrides)
    cfg = _validate(raw)
    if cfg["name"] is None:
        cfg["name"] = stem
    if cfg["output_dir"] is None:
        cfg["output_dir"] = str(Path("runs") / cfg["name"])
    _check_consistency(cfg)
    from noisyfr.plugins import load_plugins

    load_plugins(cfg["plugins"])  # user losses and backbones, before they are named below
    _check_model(cfg)
    _check_loss(cfg)
    return cfg


def dump_config(cfg: Mapping[str, Any]) -> str:
    """The resolved config as YAML text (keys in schema order)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


def run_inputs(cfg: Mapping[str, Any]) -> list:
    """Every path a run with config ``cfg`` reads (none of them may be written): the dataset,
    manifest, verification sets, noise outliers and embeddings, and ``model.init``; works on raw
    sweep trial configs too (missing keys are skipped)."""
    from noisyfr.data.pairs import is_set_name
    from noisyfr.dotted import get_dotted

    val = get_dotted(cfg, "data.val") or []
    val = [v for v in (val if isinstance(val, list) else [val]) if not (is_set_name(v) and not Path(v).exists())]
    noise = get_dotted(cfg, "data.noise") or {}
    paths = [get_dotted(cfg, "data.train"), get_dotted(cfg, "data.manifest"),
             *val,
             *(noise.get(k) for k in ("outliers", "embeddings") if isinstance(noise, dict)),
             get_dotted(cfg, "model.init")]
    return [p[len("features:"):] if isinstance(p, str) and p.startswith("features:") else p
            for p in paths if isinstance(p, (str, os.PathLike))]
