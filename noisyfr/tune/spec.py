"""Sweep specs: a training config plus a grid, parsed, expanded into trials and validated.

A sweep YAML is a training config (see docs/training.md) plus sweep-only keys:

- ``grid``: axes, each a dotted config key -> non-empty list of values (``loss.name: [arcface, cosface]``,
  ``data.noise.closed: [0.0, 0.4]``, ``seed: [0, 1, 2]``). A list of mappings sets a whole section
  per value (``loss: [{name: arcface, m: 0.5}, {name: cosface, m: 0.35}]``); whole sections are
  applied before the keys inside them. Trials are the cartesian product.
- ``resources``: ``{cpu: 1, gpu: 0}`` per trial (per worker when ``workers_per_trial`` > 1); fractions allowed.
- ``workers_per_trial`` (1): > 1 runs each trial as a Ray Train ``TorchTrainer`` (DDP; gloo on CPU, nccl on GPU).
- ``max_failures`` (1): retries of a crashed trial (Tune ``FailureConfig``), from its last checkpoint.
- ``max_concurrent_trials`` (0 = as many as the resources allow).
- ``stop_grace_s`` (120): how long a TERMed driver waits for its training trials to stop after their
  current step (``checkpoints/interrupted.pt``) before it ends them (they keep their last epoch checkpoint).
- ``name`` / ``output_dir``: the sweep's name and directory (``runs/<name>``).
- ``trainer`` (``noisyfr.train:train``): import path of the ``train(config, report)`` callable.
- ``analysis``: how ``noisyfr analyze`` compares the runs, fixed before they run: ``epoch`` (``last``
  or an epoch number: both runs of a pair are read there) and ``primary`` (the one comparison the
  grid answers; every other one is Holm-corrected). See :mod:`noisyfr.analysis.comparisons`.

Label noise is the training config's own ``data.noise`` section (:class:`noisyfr.noise.NoiseSpec`):
one manifest per distinct (dataset, noise spec with its seed) is planned under
``SWEEP_DIR/manifests`` and shared by the trials that use it; ``data.noise.seed`` defaults to the
trial's ``seed``. :func:`load_sweep` checks everything and writes nothing.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisyfr import numeric
from noisyfr.dotted import get_dotted, set_dotted
from noisyfr.errors import NoisyFRError
from noisyfr.io import read_json, read_yaml
from noisyfr.names import label_value, slug
from noisyfr.noise.spec import NoiseSpec

SWEEP_KEYS = ("grid", "resources", "workers_per_trial", "max_failures", "max_concurrent_trials",
              "trainer", "name", "output_dir", "stop_grace_s", "analysis")
RESOURCE_KEYS = ("cpu", "gpu")
DEFAULT_TRAINER = "noisyfr.train:train"
STATE_FILE = "sweep.json"


def _err(key: str, msg: str) -> NoisyFRError:
    return NoisyFRError(f"sweep key '{key}': {msg}")


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@dataclass
class Trial:
    """One expanded trial: its name, its raw training config and the grid values that made it."""
    name: str
    config: dict                       # raw training config (paths absolute, output_dir set)
    values: dict                       # axis key -> value
    noise: NoiseSpec | None            # the trial's data.noise with its seed resolved, or None
    manifest: str | None = None        # absolute manifest path (set by plan_manifests)


@dataclass
class SweepSpec:
    """A validated sweep: trials plus run settings."""
    name: str
    sweep_dir: Path
    axes: dict
    trials: list[Trial]
    resources: dict
    workers_per_trial: int = 1
    max_failures: int = 1
    max_concurrent_trials: int = 0
    stop_grace_s: int = 120
    trainer: str = DEFAULT_TRAINER
    raw: dict = field(default_factory=dict)
    base_dir: str = "."

    def state(self) -> dict:
        """JSON-able description used to recognise the same sweep on --resume."""
        return {
            "name": self.name,
            "trainer": self.trainer,
            "resources": self.resources,
            "workers_per_trial": self.workers_per_trial,
            "trials": [{"name": t.name, "config": t.config, "values": t.values,
                        "noise": None if t.noise is None else t.noise.to_dict()}
                       for t in self.trials],
        }


# --------------------------------------------------------------------------- parsing

def _moved_noise(raw: Mapping, axes: Iterable[str]) -> None:
    """Noise lives in ``data.noise`` in training configs and sweeps alike: refuse the old spelling."""
    if "noise" in raw:
        raise _err("noise", "moved to data.noise (training configs and sweeps spell the noise section "
                            "the same way): write data: {noise: {...}}")
    for key in axes:
        if key == "noise" or key.startswith("noise."):
            raise _err(f"grid.{key}", f"noise settings moved to data.noise: write grid.data.{key}")


def _parse_grid(grid: Any) -> dict[str, list]:
    if grid is None or (isinstance(grid, Mapping) and not grid):
        raise _err("grid", "empty grid: give at least one axis, e.g. grid: {loss.name: [arcface, cosface]}")
    if not isinstance(grid, Mapping):
        raise _err("grid", f"expected a mapping of axes, got {type(grid).__name__}")
    axes: dict[str, list] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping):
                if not v:
                    raise _err(f"grid.{key}", "empty axis")
                walk(v, key + ".")
            elif isinstance(v, (list, tuple)):
                if not v:
                    raise _err(f"grid.{key}", "empty axis: give a non-empty list of values")
                axes[key] = list(v)
            else:
                raise _err(f"grid.{key}", f"expected a non-empty list of values, got {v!r}")
    walk(grid, "")
    _moved_noise({}, axes)
    for key in axes:
        if key in SWEEP_KEYS[1:] or key.split(".")[0] in ("grid", "resources"):
            raise _err(f"grid.{key}", "this key cannot be a grid axis")
        if key in ("output_dir", "name", "data.manifest"):
            raise _err(f"grid.{key}", "set by the sweep for each trial; cannot be a grid axis")
        if key.startswith("data.noise.") and key.split(".", 2)[2] not in NoiseSpec.fields():
            raise _err(f"grid.{key}", f"unknown noise key (known: {', '.join(NoiseSpec.fields())})")
    return axes


def _check_resources(res: Any) -> dict:
    if res is None:
        res = {}
    if not isinstance(res, Mapping):
        raise _err("resources", f"expected a mapping like {{cpu: 1, gpu: 0}}, got {res!r}")
    out = {"cpu": 1.0, "gpu": 0.0}
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            raise _err(f"resources.{k}", "unknown resource (known: cpu, gpu)")
        out[k] = numeric.real(v, f"sweep key 'resources.{k}'", lo=0.0)
    if out["cpu"] <= 0:
        raise _err("resources.cpu", f"must be > 0, got {out['cpu']:g}")
    if out["gpu"] > 1 and out["gpu"] != int(out["gpu"]):
        raise _err("resources.gpu", f"fractions are only allowed below 1, got {out['gpu']:g}")
    return out


def _int_key(raw: Mapping, key: str, default: int, lo: int) -> int:
    v = raw.get(key, default)
    return numeric.integer(default if v is None else v, f"sweep key '{key}'", lo=lo)


def _abs(path: str, base: Path) -> str:
    if isinstance(path, str) and path.startswith(FEATURES):  # features:PATH -> features:/abs/PATH
        return FEATURES + _abs(path[len(FEATURES):], base)
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (base / p).resolve())


#: The prefix of a feature-file dataset (noisyfr.data.features): the path after it is resolved.
FEATURES = "features:"


def _path_of(value: str) -> str:
    return value[len(FEATURES):] if value.startswith(FEATURES) else value


def is_generated(value: Any) -> bool:
    """A generated-data spec (``synthetic:...`` / ``synthetic-features:...`` training set,
    ``synthetic-pairs...`` val set), not a path."""
    return isinstance(value, str) and (value.startswith(("synthetic:", "synthetic-features:"))
                                       or value == "synthetic-pairs" or value.startswith("synthetic-pairs:"))


def _resolve_paths(cfg: dict, base: Path) -> None:
    from noisyfr.data.pairs import is_set_name
    from noisyfr.plugins import is_plugin_file

    plugins = cfg.get("plugins")
    if isinstance(plugins, list):  # plugin files load in Ray workers with other working directories
        cfg["plugins"] = [_abs(p, base) if isinstance(p, str) and is_plugin_file(p) else p for p in plugins]
    data = cfg.get("data")
    if not isinstance(data, dict):
        return
    train = data.get("train")
    if isinstance(train, str) and train and not is_generated(train):
        data["train"] = _abs(train, base)
    if isinstance(data.get("manifest"), str):
        data["manifest"] = _abs(data["manifest"], base)
    val = data.get("val")
    keep = lambda v: (not isinstance(v, str) or is_generated(v)  # noqa: E731
                      or (is_set_name(v) and not (base / v).exists()))
    if isinstance(val, str):
        data["val"] = [val if keep(val) else _abs(val, base)]
    elif isinstance(val, list):
        data["val"] = [v if keep(v) else _abs(v, base) for v in val]
    noise = data.get("noise")
    if isinstance(noise, dict):
        for k in ("outliers", "embeddings"):
            if isinstance(noise.get(k), str):
                noise[k] = _abs(noise[k], base)


def _trial_names(axes: dict[str, list], combos: list[tuple]) -> list[str]:
    # Short axis labels: last dotted part, unless that collides with another axis.
    lasts = [k.rsplit(".", 1)[-1] for k in axes]
    labels = [k.rsplit(".", 1)[-1] if lasts.count(k.rsplit(".", 1)[-1]) == 1 else k for k in axes]
    names = []
    for i, combo in enumerate(combos):
        parts = [f"{lab}={label_value(v)}" for lab, v in zip(labels, combo)]
        names.append(slug(f"{i:03d}_" + "_".join(parts))[:120])
    return names


def import_callable(path: str) -> Callable:
    """The callable named ``module:function`` (sweep key ``trainer``)."""
    mod, _, attr = path.partition(":")
    if not mod or not attr:
        raise _err("trainer", f"expected 'module:function', got {path!r}")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise _err("trainer", f"cannot import {path!r} ({exc})") from None


def validator_for(trainer: str) -> Callable | None:
    """``load_config`` from the trainer's module (None when it has none)."""
    mod = trainer.partition(":")[0]
    try:
        return getattr(importlib.import_module(mod), "load_config", None)
    except ImportError as exc:
        raise _err("trainer", f"cannot import {mod!r} ({exc})") from None


def _read_raw(path_or_dict, overrides) -> tuple[dict, str]:
    from noisyfr.train.config import parse_override

    if isinstance(path_or_dict, Mapping):
        raw, stem = copy.deepcopy(dict(path_or_dict)), "sweep"
    else:
        raw = read_yaml(path_or_dict, "sweep config")
        if not isinstance(raw, dict):
            raise NoisyFRError(f"sweep config {path_or_dict}: expected a mapping at the top level")
        stem = Path(path_or_dict).stem
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        if key.startswith("grid."):  # ``grid.<dotted key>`` names one axis, not a path
            grid = raw.get("grid")
            if grid is None:
                grid = raw["grid"] = {}
            if not isinstance(grid, dict):
                raise _err("grid", "expected a mapping of axes")
            grid[key[len("grid."):]] = value
        else:
            set_dotted(raw, key, value, err=_err)
    return raw, stem


def _expand(train_base: dict, axes: dict[str, list], sdir: Path, base: Path, gpu: float) -> list[Trial]:
    """Every trial of the grid: its config (axes applied, paths absolute, output_dir set) and its
    noise spec (seed resolved)."""
    combos = list(itertools.product(*axes.values()))
    trials: list[Trial] = []
    for tname, combo in zip(_trial_names(axes, combos), combos):
        cfg = copy.deepcopy(train_base)
        values = dict(zip(axes, combo))
        # whole sections first, then keys inside them (loss: [...] before loss.grad_mode: [...])
        for key, value in sorted(values.items(), key=lambda kv: kv[0].count(".")):
            set_dotted(cfg, key, value, err=_err)
        _resolve_paths(cfg, base)
        if gpu == 0 and cfg.get("device", "auto") in (None, "auto"):
            cfg["device"] = "cpu"   # no GPU reserved for the trial: do not let it grab one
        cfg["name"] = tname
        cfg["output_dir"] = str(sdir / "trials" / tname)
        noise = None
        if get_dotted(cfg, "data.noise") is not None:
            seed = cfg.get("seed", 0)
            noise = NoiseSpec.from_mapping(get_dotted(cfg, "data.noise")).with_seed(
                seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
            cfg["data"]["noise"] = noise.to_dict()
        trials.append(Trial(tname, cfg, values, noise))
    return trials


def load_sweep(path_or_dict: str | os.PathLike | Mapping, overrides: Iterable[str | tuple[str, Any]] = (),
               sweep_dir: str | os.PathLike | None = None, base_dir: str | os.PathLike | None = None,
               validate: bool = True) -> SweepSpec:
    """Parse, expand and validate a sweep config; no Ray, no files written.

    ``overrides``: ``"key=value"`` strings or ``(key, value)`` pairs; ``grid.<axis>=[...]`` sets an axis.
    ``sweep_dir`` overrides ``output_dir``; relative paths are resolved against ``base_dir``
    (default: the current directory). With ``validate``, each trial's training config is checked with the
    trainer module's ``load_config`` and every dataset path is checked to exist.
    Raises NoisyFRError naming the key or path for any problem.
    """
    raw, stem = _read_raw(path_or_dict, overrides)
    base = Path(base_dir or os.getcwd()).resolve()
    _moved_noise(raw, ())
    axes = _parse_grid(raw.get("grid"))
    resources = _check_resources(raw.get("resources"))
    from noisyfr.analysis.comparisons import parse_analysis

    parse_analysis(raw.get("analysis"))  # checked now: a bad plan fails before any trial runs
    trainer = raw.get("trainer") or DEFAULT_TRAINER
    if not isinstance(trainer, str):
        raise _err("trainer", f"expected 'module:function', got {trainer!r}")
    name = raw.get("name") or stem
    if not isinstance(name, str):
        raise _err("name", f"expected a string, got {name!r}")
    raw["name"] = name
    sdir = Path(_abs(str(sweep_dir if sweep_dir is not None else raw.get("output_dir") or Path("runs") / name),
                     base))
    train_base = {k: v for k, v in raw.items() if k not in SWEEP_KEYS}
    has_noise = get_dotted(train_base, "data.noise") is not None or any(
        k == "data.noise" or k.startswith("data.noise.") for k in axes)
    if has_noise and get_dotted(train_base, "data.manifest"):
        raise _err("data.manifest", "a sweep writes the manifests of data.noise itself: "
                                    "give data.noise or data.manifest, not both")
    trials = _expand(train_base, axes, sdir, base, resources["gpu"])
    spec = SweepSpec(name=name, sweep_dir=sdir, axes=axes, trials=trials, resources=resources,
                     workers_per_trial=_int_key(raw, "workers_per_trial", 1, 1),
                     max_failures=_int_key(raw, "max_failures", 1, 0),
                     max_concurrent_trials=_int_key(raw, "max_concurrent_trials", 0, 0),
                     stop_grace_s=_int_key(raw, "stop_grace_s", 120, 0),
                     trainer=trainer, raw=raw, base_dir=str(base))
    if validate:
        validate_sweep(spec)
    return spec


def load_stored_sweep(sweep_dir: str | os.PathLike, validate: bool = True) -> SweepSpec:
    """The sweep stored in ``SWEEP_DIR/sweep.json`` (for ``noisyfr sweep --resume --out SWEEP_DIR``)."""
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        raise NoisyFRError(f"sweep dir {sweep_dir}: no {STATE_FILE} (not a sweep directory, or it never started)")
    try:
        doc = read_json(path, "sweep state")
        raw, base_dir = doc["source"]["raw"], doc["source"]["base_dir"]
    except (KeyError, TypeError) as exc:
        raise NoisyFRError(f"{path}: unreadable sweep state (missing {exc})") from None
    if not isinstance(raw, dict):
        raise NoisyFRError(f"{path}: unreadable sweep state (source.raw is not a mapping)")
    spec = load_sweep(raw, sweep_dir=Path(sweep_dir).resolve(), base_dir=base_dir, validate=validate)
    stored = (doc.get("state") or {}).get("trials") if isinstance(doc.get("state"), dict) else None
    if isinstance(stored, list):
        _adopt_stored_names(spec, stored)
    return spec


def _adopt_stored_names(spec: SweepSpec, stored: list) -> None:
    """Give ``spec`` the trial names and order the stored sweep ran under, when only they differ.

    ``sweep.json`` keeps the config's key order, so the trials rebuilt from it carry the names of
    the original config. One written before that (keys sorted) rebuilds other names, because a
    mapping-valued axis is labelled in its key order and the axes are taken in file order: match
    the trials by their grid values instead. Nothing changes when the values do not match one to one
    (the resume is then refused as a different config)."""
    if [t.name for t in spec.trials] == [s.get("name") if isinstance(s, dict) else None for s in stored]:
        return
    key = lambda values: json.dumps(values, sort_keys=True, default=str)  # noqa: E731
    by_values = {key(t.values): t for t in spec.trials}
    if len(by_values) != len(spec.trials) or len(stored) != len(spec.trials):
        return
    order = []
    for s in stored:
        t = by_values.get(key(s.get("values"))) if isinstance(s, dict) else None
        name = s.get("name") if isinstance(s, dict) else None
        if t is None or not isinstance(name, str) or slug(name) != name or name.strip(".") == "":
            return
        order.append((t, name))
    if len({id(t) for t, _ in order}) != len(order) or len({n for _, n in order}) != len(order):
        return
    for t, name in order:
        t.name = t.config["name"] = name
        t.config["output_dir"] = str(spec.sweep_dir / "trials" / name)
    spec.trials = [t for t, _ in order]


def validate_sweep(spec: SweepSpec) -> None:
    """Check each trial config with the trainer's ``load_config`` and every dataset path exists."""
    from noisyfr.data.pairs import is_set_name

    load_config = validator_for(spec.trainer)
    checked: set[str] = set()
    for t in spec.trials:
        if load_config is not None:
            try:
                load_config(copy.deepcopy(t.config))
            except NoisyFRError as exc:
                raise NoisyFRError(f"trial {t.name}: {exc}") from None
        paths: list[tuple[str, Any]] = [("data.train", get_dotted(t.config, "data.train")),
                                        ("data.manifest", get_dotted(t.config, "data.manifest"))]
        paths += [("data.val", v) for v in (get_dotted(t.config, "data.val") or [])]
        if t.noise:
            paths += [("data.noise.outliers", t.noise.outliers), ("data.noise.embeddings", t.noise.embeddings)]
        for key, p in paths:
            if not isinstance(p, str) or is_generated(p) or is_set_name(p) or p in checked:
                continue
            p = _path_of(p)
            if not os.path.exists(p):
                raise NoisyFRError(f"{key} {p}: dataset path does not exist")
            if key == "data.train" and os.path.isdir(p) and not any(os.scandir(p)):
                raise NoisyFRError(f"{key} {p}: empty folder")
            checked.add(p)


# --------------------------------------------------------------------------- manifests

def manifest_key(data_train: str, noise: NoiseSpec) -> str:
    """Stable dedup key of a manifest: sha256 of the dataset and the full noise spec (seed included)."""
    payload = json.dumps({"train": data_train, "noise": noise.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def manifest_name(noise: NoiseSpec, key: str) -> str:
    """Readable file name: ``closed0.4-symmetric_open0_seed0_<hash8>.parquet``."""
    parts = [f"closed{label_value(noise.closed)}-{noise.closed_mode}", f"open{label_value(noise.open)}"]
    for k in ("holdout_ids", "split", "merge"):
        if getattr(noise, k):
            parts.append(f"{k}{getattr(noise, k)}")
    parts.append(f"seed{noise.seed}")
    return slug("_".join(parts)) + f"_{key[:8]}.parquet"


def plan_manifests(spec: SweepSpec) -> dict[str, tuple[str, NoiseSpec, list[Trial]]]:
    """Group trials by manifest: key -> (data.train, noise spec, trials); sets each trial's
    ``manifest`` path and its config's ``data.manifest``."""
    groups: dict[str, tuple[str, NoiseSpec, list[Trial]]] = {}
    for t in spec.trials:
        if t.noise is None:
            continue
        train = get_dotted(t.config, "data.train")
        key = manifest_key(train, t.noise)
        if key not in groups:
            groups[key] = (train, t.noise, [])
        groups[key][2].append(t)
        t.manifest = str(spec.sweep_dir / "manifests" / manifest_name(t.noise, key))
        set_dotted(t.config, "data.manifest", t.manifest, err=_err)
    return groups
