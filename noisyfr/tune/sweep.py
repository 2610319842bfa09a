"""Ray Tune grids of training runs: losses x noise settings x seeds.

A sweep YAML is a training config (see docs/training.md) plus sweep-only keys:

- ``grid``: axes, each a dotted config key -> non-empty list of values (``loss.name: [arcface, cosface]``,
  ``noise.closed: [0.0, 0.4]``, ``seed: [0, 1, 2]``). A list of mappings sets a whole section per value
  (``loss: [{name: arcface, m: 0.5}, {name: cosface, m: 0.35}]``). Trials are the cartesian product.
- ``noise``: the label-noise injection (keywords of :func:`data_tools.inject.inject_index`); one
  manifest per distinct (dataset, noise settings, noise seed) is written once under ``SWEEP_DIR/manifests``
  and shared by the trials that use it. ``noise.seed`` defaults to the trial's ``seed``.
- ``resources``: ``{cpu: 1, gpu: 0}`` per trial (per worker when ``workers_per_trial`` > 1); fractions allowed.
- ``workers_per_trial`` (1): > 1 runs each trial as a Ray Train ``TorchTrainer`` (DDP; gloo on CPU, nccl on GPU).
- ``max_failures`` (1): retries of a crashed trial (Tune ``FailureConfig``), from its last checkpoint.
- ``max_concurrent_trials`` (0 = as many as the resources allow).
- ``name`` / ``output_dir``: the sweep's name and directory (``runs/<name>``).
- ``trainer`` (``noisyfr.train:train``): import path of the ``train(config, report)`` callable.

Everything is validated before any trial starts (:func:`prepare_sweep`); :func:`run_sweep` then runs the trials
with Ray Tune and writes ``results.parquet``, ``results.csv`` and ``summary.md`` into the sweep directory.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import itertools
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from noisyfr.dotted import get_dotted, set_dotted as _set_dotted
from noisyfr.errors import NoisyFRError
from noisyfr.train.angles import DEFAULT_LEARNED_ACCURACY
from noisyfr.train.config import parse_override

# Keep Ray quiet, offline and light. Set before ray is imported anywhere in this process.
for _k, _v in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
}.items():
    os.environ.setdefault(_k, _v)

SWEEP_KEYS = ("grid", "noise", "resources", "workers_per_trial", "max_failures",
              "max_concurrent_trials", "trainer", "name", "output_dir")
NOISE_DEFAULTS: dict[str, Any] = {
    "closed": 0.0, "closed_mode": "symmetric", "open": 0.0, "outliers": None, "holdout_ids": 0,
    "split": 0, "merge": 0, "seed": None, "embeddings": None,
}
CLOSED_MODES = ("symmetric", "pairwise", "nearest")
RESOURCE_KEYS = ("cpu", "gpu")
DEFAULT_TRAINER = "noisyfr.train:train"
METRICS = ("loss", "val_accuracy", "noisy_auc", "theta_clean_mean", "theta_noisy_mean",
           "clean_true_accuracy", "noisy_fit_given", "noisy_fit_true", "theta_clean_median",
           "theta_noisy_median")
STATE_FILE = "sweep.json"
DRIVER_CPU = 0.01   # CPU reserved by a trial's driver when its workers are Ray Train actors


# --------------------------------------------------------------------------- small helpers

def _err(key: str, msg: str) -> NoisyFRError:
    return NoisyFRError(f"sweep key '{key}': {msg}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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


def _apply_override(raw: dict, key: str, value: Any) -> None:
    # ``grid.<dotted key>`` names one axis: the rest of the key is the axis name, not a path.
    if key.startswith("grid."):
        grid = raw.get("grid")
        if grid is None:
            grid = raw["grid"] = {}
        if not isinstance(grid, dict):
            raise _err("grid", "expected a mapping of axes")
        grid[key[len("grid."):]] = value
    else:
        _set_dotted(raw, key, value, err=_err)


def read_sweep_yaml(path: str | os.PathLike) -> dict:
    """Read a sweep YAML file into a dict (NoisyFRError naming the file if it is missing or invalid)."""
    p = Path(path)
    if not p.is_file():
        raise NoisyFRError(f"sweep config {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise NoisyFRError(f"sweep config {p}: invalid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise NoisyFRError(f"sweep config {p}: expected a mapping at the top level")
    return raw


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, Mapping):
        # numbers carry their key (s32, m0.5); names and other words stand alone (arcface, detached)
        return "-".join(f"{k}{_fmt(x)}" if _is_num(x) else _fmt(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(x) for x in v)
    return str(v)


# --------------------------------------------------------------------------- sweep spec

@dataclass
class Trial:
    """One expanded trial: its name, its raw training config and the grid values that made it."""
    name: str
    config: dict                       # raw training config (paths absolute, output_dir set)
    values: dict                       # axis key -> value
    noise: dict | None                 # full noise settings (seed resolved) or None
    manifest: str | None = None        # absolute manifest path (set by prepare_sweep)


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
            "trials": [{"name": t.name, "config": t.config, "values": t.values, "noise": t.noise}
                       for t in self.trials],
        }


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
    for key in axes:
        if key in SWEEP_KEYS[1:] or key.split(".")[0] in ("grid", "resources"):
            raise _err(f"grid.{key}", "this key cannot be a grid axis")
        if key in ("output_dir", "name", "data.manifest"):
            raise _err(f"grid.{key}", "set by the sweep for each trial; cannot be a grid axis")
        if key.startswith("noise.") and key.split(".", 1)[1] not in NOISE_DEFAULTS:
            raise _err(f"grid.{key}", f"unknown noise key (known: {', '.join(NOISE_DEFAULTS)})")
    return axes


def _check_noise(noise: Any, where: str) -> dict:
    if not isinstance(noise, Mapping):
        raise _err(where, f"expected a mapping, got {type(noise).__name__}")
    out = dict(NOISE_DEFAULTS)
    for k, v in noise.items():
        if k not in NOISE_DEFAULTS:
            raise _err(f"{where}.{k}", f"unknown noise key (known: {', '.join(NOISE_DEFAULTS)})")
        out[k] = v
    for k in ("closed", "open"):
        v = out[k]
        if not _is_num(v) or not 0.0 <= float(v) <= 1.0:
            raise _err(f"{where}.{k}", f"rate must be a number in [0, 1], got {v!r}")
        out[k] = float(v)
    if out["closed"] + out["open"] > 1.0:
        raise _err(where, f"closed + open rates sum to {out['closed'] + out['open']:g} > 1")
    if out["closed_mode"] not in CLOSED_MODES:
        raise _err(f"{where}.closed_mode", f"expected one of {', '.join(CLOSED_MODES)}, "
                                            f"got {out['closed_mode']!r}")
    for k in ("holdout_ids", "split", "merge"):
        v = out[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _err(f"{where}.{k}", f"expected an integer >= 0, got {v!r}")
    if out["seed"] is not None and (not isinstance(out["seed"], int) or isinstance(out["seed"], bool)):
        raise _err(f"{where}.seed", f"expected an integer, got {out['seed']!r}")
    if out["open"] > 0 and not out["outliers"] and not out["holdout_ids"]:
        raise _err(f"{where}.open", "open-set noise needs noise.outliers (a folder) or noise.holdout_ids")
    return out


def _check_resources(res: Any) -> dict:
    if res is None:
        res = {}
    if not isinstance(res, Mapping):
        raise _err("resources", f"expected a mapping like {{cpu: 1, gpu: 0}}, got {res!r}")
    out = {"cpu": 1.0, "gpu": 0.0}
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            raise _err(f"resources.{k}", "unknown resource (known: cpu, gpu)")
        if not _is_num(v) or v < 0 or not math.isfinite(v):
            raise _err(f"resources.{k}", f"expected a number >= 0, got {v!r}")
        out[k] = float(v)
    if out["cpu"] <= 0:
        raise _err("resources.cpu", f"must be > 0, got {out['cpu']:g}")
    if out["gpu"] > 1 and out["gpu"] != int(out["gpu"]):
        raise _err("resources.gpu", f"fractions are only allowed below 1, got {out['gpu']:g}")
    return out


def _int_key(raw: Mapping, key: str, default: int, lo: int) -> int:
    v = raw.get(key, default)
    if v is None:
        v = default
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise _err(key, f"expected an integer >= {lo}, got {v!r}")
    return v


def _abs(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (base / p).resolve())


def _is_spec(value: Any) -> bool:
    """A generated-data spec (``synthetic:...`` training set, ``synthetic-pairs...`` val set), not a path."""
    return isinstance(value, str) and (value.startswith("synthetic:") or value == "synthetic-pairs"
                                       or value.startswith("synthetic-pairs:"))


def _resolve_paths(cfg: dict, base: Path) -> None:
    data = cfg.get("data")
    if not isinstance(data, dict):
        return
    train = data.get("train")
    if isinstance(train, str) and train and not _is_spec(train):
        data["train"] = _abs(train, base)
    if isinstance(data.get("manifest"), str):
        data["manifest"] = _abs(data["manifest"], base)
    val = data.get("val")
    if isinstance(val, str):
        data["val"] = [val if _is_spec(val) else _abs(val, base)]
    elif isinstance(val, list):
        data["val"] = [_abs(v, base) if isinstance(v, str) and not _is_spec(v) else v for v in val]


def _trial_names(axes: dict[str, list], combos: list[tuple]) -> list[str]:
    # Short axis labels: last dotted part, unless that collides with another axis.
    lasts = [k.rsplit(".", 1)[-1] for k in axes]
    labels = [k.rsplit(".", 1)[-1] if lasts.count(k.rsplit(".", 1)[-1]) == 1 else k for k in axes]
    names = []
    for i, combo in enumerate(combos):
        parts = [f"{lab}={_fmt(v)}" if not isinstance(v, Mapping) else f"{lab}={_fmt(v)}"
                 for lab, v in zip(labels, combo)]
        names.append(_slug(f"{i:03d}_" + "_".join(parts))[:120])
    return names


def _import_callable(path: str) -> Callable:
    mod, _, attr = path.partition(":")
    if not mod or not attr:
        raise _err("trainer", f"expected 'module:function', got {path!r}")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise _err("trainer", f"cannot import {path!r} ({exc})") from None


def _validator_for(trainer: str) -> Callable | None:
    """``load_config`` from the trainer's module (None when it has none)."""
    mod = trainer.partition(":")[0]
    try:
        return getattr(importlib.import_module(mod), "load_config", None)
    except ImportError as exc:
        raise _err("trainer", f"cannot import {mod!r} ({exc})") from None


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
    if isinstance(path_or_dict, Mapping):
        raw, stem = copy.deepcopy(dict(path_or_dict)), "sweep"
    else:
        raw, stem = read_sweep_yaml(path_or_dict), Path(path_or_dict).stem
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _apply_override(raw, key, value)
    base = Path(base_dir or os.getcwd()).resolve()

    axes = _parse_grid(raw.get("grid"))
    resources = _check_resources(raw.get("resources"))
    workers = _int_key(raw, "workers_per_trial", 1, 1)
    max_failures = _int_key(raw, "max_failures", 1, 0)
    max_conc = _int_key(raw, "max_concurrent_trials", 0, 0)
    trainer = raw.get("trainer") or DEFAULT_TRAINER
    if not isinstance(trainer, str):
        raise _err("trainer", f"expected 'module:function', got {trainer!r}")
    name = raw.get("name") or stem
    if not isinstance(name, str):
        raise _err("name", f"expected a string, got {name!r}")
    raw["name"] = name
    out = sweep_dir if sweep_dir is not None else raw.get("output_dir") or Path("runs") / name
    sdir = Path(_abs(str(out), base))

    base_noise = raw.get("noise")
    has_noise = base_noise is not None or any(k == "noise" or k.startswith("noise.") for k in axes)
    if base_noise is not None and not isinstance(base_noise, Mapping):
        raise _err("noise", f"expected a mapping, got {type(base_noise).__name__}")
    train_base = {k: v for k, v in raw.items() if k not in SWEEP_KEYS}
    if has_noise and get_dotted(train_base, "data.manifest"):
        raise _err("noise", "give either a noise section or data.manifest, not both")

    combos = list(itertools.product(*axes.values()))
    names = _trial_names(axes, combos)
    trials: list[Trial] = []
    for tname, combo in zip(names, combos):
        cfg = copy.deepcopy(train_base)
        noise = dict(base_noise or {})
        values = dict(zip(axes, combo))
        # whole sections first, then keys inside them (loss: [...] before loss.grad_mode: [...])
        for key, value in sorted(values.items(), key=lambda kv: kv[0].count(".")):
            if key == "noise":
                if not isinstance(value, Mapping):
                    raise _err("grid.noise", f"values must be mappings of noise keys, got {value!r}")
                noise = dict(value)
            elif key.startswith("noise."):
                noise[key.split(".", 1)[1]] = value
            else:
                _set_dotted(cfg, key, value, err=_err)
        _resolve_paths(cfg, base)
        if resources["gpu"] == 0 and cfg.get("device", "auto") in (None, "auto"):
            cfg["device"] = "cpu"   # no GPU reserved for the trial: do not let it grab one
        cfg["name"] = tname
        cfg["output_dir"] = str(sdir / "trials" / tname)
        full_noise = None
        if has_noise:
            full_noise = _check_noise(noise, "noise")
            if full_noise["seed"] is None:
                seed = cfg.get("seed", 0)
                full_noise["seed"] = seed if isinstance(seed, int) else 0
            for k in ("outliers", "embeddings"):
                if full_noise[k]:
                    full_noise[k] = _abs(full_noise[k], base)
        trials.append(Trial(tname, cfg, values, full_noise))

    spec = SweepSpec(name=name, sweep_dir=sdir, axes=axes, trials=trials, resources=resources,
                     workers_per_trial=workers, max_failures=max_failures,
                     max_concurrent_trials=max_conc, trainer=trainer, raw=raw, base_dir=str(base))
    if validate:
        validate_sweep(spec)
    return spec


def load_stored_sweep(sweep_dir: str | os.PathLike, validate: bool = True) -> SweepSpec:
    """The sweep stored in ``SWEEP_DIR/sweep.json`` (for ``noisyfr sweep --resume --out SWEEP_DIR``)."""
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        raise NoisyFRError(f"sweep dir {sweep_dir}: no {STATE_FILE} (not a sweep directory, or it never started)")
    try:
        src = json.loads(path.read_text(encoding="utf-8"))["source"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NoisyFRError(f"{path}: unreadable sweep state ({exc})") from None
    return load_sweep(src["raw"], sweep_dir=Path(sweep_dir).resolve(), base_dir=src["base_dir"],
                      validate=validate)


def validate_sweep(spec: SweepSpec) -> None:
    """Check each trial config with the trainer's ``load_config`` and every dataset path exists."""
    load_config = _validator_for(spec.trainer)
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
            paths += [("noise.outliers", t.noise["outliers"]), ("noise.embeddings", t.noise["embeddings"])]
        for key, p in paths:
            if not isinstance(p, str) or _is_spec(p) or p in checked:
                continue
            if not os.path.exists(p):
                raise NoisyFRError(f"{key} {p}: dataset path does not exist")
            if key == "data.train" and os.path.isdir(p) and not any(os.scandir(p)):
                raise NoisyFRError(f"{key} {p}: empty folder")
            checked.add(p)


# --------------------------------------------------------------------------- manifests

def manifest_key(data_train: str, noise: Mapping) -> str:
    """Stable dedup key of a manifest: sha256 of the dataset and the full noise settings (seed included)."""
    payload = json.dumps({"train": data_train, "noise": dict(sorted(noise.items()))},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def manifest_name(noise: Mapping, key: str) -> str:
    """Readable file name: ``closed0.4-symmetric_open0_seed0_<hash8>.parquet``."""
    parts = [f"closed{_fmt(noise['closed'])}-{noise['closed_mode']}", f"open{_fmt(noise['open'])}"]
    for k in ("holdout_ids", "split", "merge"):
        if noise.get(k):
            parts.append(f"{k}{noise[k]}")
    parts.append(f"seed{noise['seed']}")
    return _slug("_".join(parts)) + f"_{key[:8]}.parquet"


def plan_manifests(spec: SweepSpec) -> dict[str, tuple[str, dict, list[Trial]]]:
    """Group trials by manifest: key -> (data.train, noise, trials); sets each trial's ``manifest`` path."""
    groups: dict[str, tuple[str, dict, list[Trial]]] = {}
    for t in spec.trials:
        if t.noise is None:
            continue
        train = get_dotted(t.config, "data.train")
        key = manifest_key(train, t.noise)
        if key not in groups:
            groups[key] = (train, t.noise, [])
        groups[key][2].append(t)
        t.manifest = str(spec.sweep_dir / "manifests" / manifest_name(t.noise, key))
        _set_dotted(t.config, "data.manifest", t.manifest, err=_err)
    return groups


def make_manifests(spec: SweepSpec, progress: bool | None = None) -> list[str]:
    """Write each distinct manifest once (skipping those already written); return their paths."""
    from tqdm import tqdm

    groups = plan_manifests(spec)
    if not groups:
        return []
    from data_tools.inject import inject_index
    from noisyfr.data import open_index

    indexes: dict[str, Any] = {}
    written = []
    for key, (train, noise, trials) in tqdm(groups.items(), desc="manifests", unit="manifest",
                                            disable=None if progress is None else not progress):
        path = trials[0].manifest
        written.append(path)
        # The file name carries the dedup key; a manifest and its sidecar both present = already made
        # (inject_index writes each atomically), e.g. on --resume.
        if Path(path).exists() and Path(path + ".json").exists():
            continue
        if train not in indexes:
            indexes[train] = open_index(train)
        command = (f"noisyfr inject {train} --out {path} --seed {noise['seed']}"
                   f" --closed {noise['closed']:g} --closed-mode {noise['closed_mode']}"
                   f" --open {noise['open']:g}")
        inject_index(indexes[train], path, command=command, **noise)
    return written


# --------------------------------------------------------------------------- running trials (Ray side)

def _scalar(v: Any) -> Any:
    try:
        import numpy as np
        if isinstance(v, np.generic):
            v = v.item()
    except ImportError:  # pragma: no cover
        pass
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return None


def clean_metrics(metrics: Mapping) -> dict:
    """Scalar metrics for Tune (non-scalars dropped; ``checkpoint`` kept as ``checkpoint_path``)."""
    out = {}
    for k, v in metrics.items():
        if k == "checkpoint":
            out["checkpoint_path"] = str(v) if v is not None else None
            continue
        s = _scalar(v)
        if s is not None or v is None:
            out[str(k)] = s
    return out


def _one_line(exc: BaseException | str) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    # Ray wraps remote errors with a traceback: the last line is the original "Type: message".
    return lines[-1][:500]


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _node_info(name: str) -> dict:
    import socket

    info = {"trial": name, "hostname": socket.gethostname()}
    try:
        import ray
        info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - outside Ray
        info["node_id"] = None
    return info


def _restore_checkpoint(cfg: dict, ckpt: Any) -> int | None:
    """Put the Tune checkpoint's ``last.pt`` at ``output_dir/checkpoints/last.pt`` and set ``resume``;
    return the checkpoint's epoch (None without a checkpoint)."""
    if ckpt is None:
        return None
    last = Path(cfg["output_dir"]) / "checkpoints" / "last.pt"
    epoch = None
    with ckpt.as_directory() as d:
        src = Path(d) / "last.pt"
        if src.is_file():
            from noisyfr.io import atomic_path
            with atomic_path(last) as tmp:
                shutil.copyfile(src, tmp)
            cfg["resume"] = True
        try:
            epoch = int(json.loads((Path(d) / "trial.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            epoch = None
    return epoch


def _tune_checkpoint_dir(d: Path, metrics: Mapping) -> None:
    _link_or_copy(metrics["checkpoint"], d / "last.pt")
    (d / "trial.json").write_text(json.dumps({"epoch": _scalar(metrics.get("epoch"))}))


def _set_threads(cpu: float) -> None:
    import torch

    n = max(1, int(cpu))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def _trial_fn(tune_config: dict) -> None:
    """Tune function trainable: one trial = one training run (or one TorchTrainer run)."""
    from ray import tune

    t = tune_config["trial"]
    cfg = copy.deepcopy(t["config"])
    Path(cfg["output_dir"]).mkdir(parents=True, exist_ok=True)
    done_epoch = _restore_checkpoint(cfg, tune.get_checkpoint())
    if t["workers"] > 1:
        _run_distributed(t, cfg)
        return
    _set_threads(t["resources"]["cpu"])
    train = _import_callable(t["trainer"])
    load_config = _validator_for(t["trainer"])
    info = _node_info(t["name"])

    def report(metrics: Mapping) -> None:
        row = {**clean_metrics(metrics), **info}
        path = metrics.get("checkpoint")
        if path and os.path.isfile(path):
            with tempfile.TemporaryDirectory(prefix="noisyfr-ckpt-") as d:
                _tune_checkpoint_dir(Path(d), metrics)
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(row)

    try:
        if load_config is not None:
            cfg = load_config(cfg)
        epochs = get_dotted(cfg, "optim.epochs")
        if done_epoch is not None and isinstance(epochs, int) and done_epoch >= epochs:
            # Finished before the driver died, but Tune had not recorded it yet: nothing to re-run.
            return
        train(cfg, report=report)
    except NoisyFRError as exc:
        # Deterministic failures (divergence: non-finite loss, bad data) are not retried: the trial
        # ends with status "failed" and its reason in the results; other trials go on.
        tune.report({**info, "failed": True, "error": _one_line(exc)})


def _worker_loop(loop_config: dict) -> None:
    """Ray Train worker: runs ``train`` under torch.distributed (set up by TorchTrainer)."""
    import ray.train

    t, cfg = loop_config["trial"], copy.deepcopy(loop_config["config"])
    _set_threads(t["resources"]["cpu"])
    rank = ray.train.get_context().get_world_rank()
    train = _import_callable(t["trainer"])
    load_config = _validator_for(t["trainer"])
    if t["resources"]["gpu"] > 0:
        # Ray Train shows each node's workers all of that node's trial GPUs: use this worker's own.
        import torch
        from ray.train.torch import get_device

        device = get_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
            cfg["device"] = f"cuda:{device.index or 0}"
    if load_config is not None:
        cfg = load_config(cfg)
    info = {**_node_info(t["name"]), "world_size": ray.train.get_context().get_world_size()}

    def report(metrics: Mapping) -> None:
        row = {**clean_metrics(metrics), **info}
        path = metrics.get("checkpoint")
        if rank == 0 and path and os.path.isfile(path):
            with tempfile.TemporaryDirectory(prefix="noisyfr-ckpt-") as d:
                _tune_checkpoint_dir(Path(d), metrics)
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(row)

    train(cfg, report=report)


def _run_distributed(t: dict, cfg: dict) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    last = Path(cfg["output_dir"]) / "checkpoints" / "last.pt"
    if last.is_file():
        cfg["resume"] = True
    res = t["resources"]
    use_gpu = res["gpu"] > 0
    per_worker = {"CPU": res["cpu"]}
    if use_gpu:
        per_worker["GPU"] = res["gpu"]
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": t, "config": cfg},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t["workers"], use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=t["name"], storage_path=str(Path(t["sweep_dir"]) / "train"),
                                       callbacks=[TuneReportCallback()]),
    )
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's exception
        text = f"{exc!r} {exc.__cause__!r}"
        if "NoisyFRError" not in text:
            raise
        from ray import tune
        # deterministic failure inside the workers (e.g. non-finite loss): do not retry
        tune.report({**_node_info(t["name"]), "failed": True, "error": _one_line(exc.__cause__ or exc)})


def _trial_name(trial: Any) -> str:
    return trial.config["trial"]["name"]


def check_cluster(spec: SweepSpec) -> dict:
    """Compare the per-trial resources with the connected Ray cluster; NoisyFRError if they cannot fit."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total_gpu = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    max_cpu = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    max_gpu = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
    cpu, gpu = spec.resources["cpu"], spec.resources["gpu"]
    if gpu > 0 and total_gpu == 0:
        raise _err("resources.gpu", f"{gpu:g} GPU per trial requested but the Ray cluster has no GPU "
                                    "(set resources.gpu: 0 to train on CPU)")
    if gpu > max_gpu:
        raise _err("resources.gpu", f"{gpu:g} GPUs per trial requested but no node has more than {max_gpu:g}")
    if cpu > max_cpu:
        raise _err("resources.cpu", f"{cpu:g} CPUs per trial requested but no node has more than {max_cpu:g}")
    total_cpu = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
    if spec.workers_per_trial > 1 and spec.workers_per_trial * cpu + DRIVER_CPU > total_cpu:
        raise _err("workers_per_trial", f"{spec.workers_per_trial} workers x {cpu:g} CPUs (+ {DRIVER_CPU:g} "
                                        f"for the trial driver) do not fit the cluster's {total_cpu:g} CPUs")
    return {"nodes": len(nodes), "cpu": total_cpu, "gpu": total_gpu}


def _trial_dicts(spec: SweepSpec) -> list[dict]:
    return [{"name": t.name, "config": t.config, "trainer": spec.trainer, "resources": spec.resources,
             "workers": spec.workers_per_trial, "sweep_dir": str(spec.sweep_dir)} for t in spec.trials]


def _progress_callback(total: int, progress: bool | None):
    from ray import tune

    class _Progress(tune.Callback):
        """tqdm bar over finished trials (not pickled with the experiment)."""

        def __init__(self):
            self.bar = None

        def __getstate__(self):
            return {"bar": None}

        def setup(self, **info):
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="trials", unit="trial",
                            disable=None if progress is None else not progress)

        def _tick(self, trial):
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(_trial_name(trial)[:40])

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._tick(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._tick(trial)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return _Progress()


def _state_json(spec: SweepSpec) -> dict:
    return json.loads(json.dumps(spec.state(), sort_keys=True, default=str))


def run_sweep(spec: SweepSpec, *, resume: bool = False, address: str | None = None,
              progress: bool | None = None, echo: Callable[[str], Any] | None = print):
    """Run every trial of ``spec`` with Ray Tune; write results and summary; return the results DataFrame.

    ``resume``: finish an interrupted sweep in ``spec.sweep_dir`` (``Tuner.restore``: finished trials are
    kept, unfinished ones continue from their last checkpoint, errored ones are not re-run).
    ``address``: an existing Ray cluster (``auto`` or ``HOST:PORT``); default: reuse an initialised Ray
    session, else start a local one. Everything is checked before the first trial starts.
    """
    from noisyfr.io import atomic_write

    sdir = spec.sweep_dir
    tune_dir = sdir / "tune"
    state_path = sdir / STATE_FILE
    plan_manifests(spec)
    state = _state_json(spec)
    if state_path.exists():
        if not resume:
            raise NoisyFRError(f"sweep dir {sdir}: already holds a sweep; use --resume to finish it "
                               "or choose another output directory")
        try:
            stored = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NoisyFRError(f"sweep dir {sdir}: unreadable {STATE_FILE} ({exc})") from None
        if stored.get("state") != state:
            raise NoisyFRError(f"sweep dir {sdir}: the config differs from the sweep stored there; "
                               "resume with the same config or choose another output directory")
    elif resume and tune_dir.exists():
        raise NoisyFRError(f"sweep dir {sdir}: no {STATE_FILE}, cannot resume")

    import ray
    from ray import tune

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        started = True
    try:
        check_cluster(spec)
        make_manifests(spec, progress=progress)
        if not state_path.exists():
            with atomic_write(state_path, "w", encoding="utf-8") as fh:
                json.dump({"state": state, "source": {"raw": spec.raw, "base_dir": spec.base_dir}},
                          fh, sort_keys=True, indent=1, default=str)
        driver_res = ({"cpu": DRIVER_CPU} if spec.workers_per_trial > 1 else
                      {k: v for k, v in spec.resources.items() if v > 0})
        trainable = tune.with_resources(_trial_fn, driver_res)
        if resume and tune.Tuner.can_restore(str(tune_dir)):
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable,
                                       resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(_trial_dicts(spec))},
                tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent_trials or None,
                                            trial_name_creator=_trial_name,
                                            trial_dirname_creator=_trial_name),
                run_config=tune.RunConfig(
                    storage_path=str(sdir), name="tune", verbose=0,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[_progress_callback(len(spec.trials), progress)]),
            )
        grid = tuner.fit()
        histories = {}
        for r in grid:
            name = r.config["trial"]["name"]
            hist = r.metrics_dataframe
            histories[name] = (hist, None if r.error is None else _one_line(r.error))
    finally:
        if started:
            ray.shutdown()
    table = results_table(spec, histories)
    write_results(table, sdir, spec)
    if echo is not None:
        echo((sdir / "summary.md").read_text(encoding="utf-8"))
    return table


# --------------------------------------------------------------------------- results and summary

def _config_columns(spec: SweepSpec, t: Trial) -> dict:
    from noisyfr.losses import loss_label, loss_settings

    section = t.config.get("loss") if isinstance(t.config.get("loss"), Mapping) else {}
    # every loss setting that changes a number (defaults filled in), and the label naming them
    cols: dict[str, Any] = {f"loss.{k}": v for k, v in loss_settings(section).items()}
    cols["loss.label"] = loss_label(section)
    for key, value in t.values.items():
        if isinstance(value, Mapping):
            for k, v in flatten(value).items():
                cols[f"{key}.{k}"] = v
        elif not key.startswith(("noise.", "loss.")):
            cols[key] = value
    if t.noise is not None:
        for k, v in t.noise.items():
            cols[f"noise.{k}"] = v
    cols["seed"] = t.config.get("seed", 0)
    threshold = get_dotted(t.config, "health.learned_accuracy")
    cols["learned_threshold"] = float(DEFAULT_LEARNED_ACCURACY if threshold is None else threshold)
    return cols


def summarize_trial(history: Any, error: str | None, finished: bool = True) -> dict:
    """Final and best metrics plus status from one trial's per-epoch history (a DataFrame or None)."""
    import numpy as np
    import pandas as pd

    out: dict[str, Any] = {"status": "pending", "epochs": 0, "error": error}
    for m in METRICS:
        out[f"final_{m}"] = float("nan")
    out["final_theta_gap_deg"] = float("nan")
    out["learned"] = False
    out["best_val_accuracy"] = out["best_noisy_auc"] = float("nan")
    out["best_epoch"] = out["hostname"] = out["node_id"] = None
    out["world_size"] = 1
    h = history if isinstance(history, pd.DataFrame) else pd.DataFrame()
    failed = None
    if "failed" in h.columns:
        f = h[h["failed"].fillna(False).astype(bool)]
        if len(f):
            failed = str(f["error"].iloc[-1]) if "error" in f.columns else "failed"
            h = h[~h["failed"].fillna(False).astype(bool)]
    if "epoch" in h.columns:
        h = h[h["epoch"].notna()].drop_duplicates("epoch", keep="last").sort_values("epoch")
    if len(h):
        last = h.iloc[-1]
        out["epochs"] = int(last["epoch"]) if "epoch" in h.columns else len(h)
        for m in METRICS:
            if m in h.columns:
                out[f"final_{m}"] = float(pd.to_numeric(last[m], errors="coerce"))
        out["final_theta_gap_deg"] = float(np.degrees(out["final_theta_noisy_mean"] -
                                                      out["final_theta_clean_mean"]))
        for m in ("val_accuracy", "noisy_auc"):
            if m in h.columns:
                vals = pd.to_numeric(h[m], errors="coerce")
                if vals.notna().any():
                    i = vals.idxmax()
                    out[f"best_{m}"] = float(vals[i])
                    if m == "val_accuracy" and "epoch" in h.columns:
                        out["best_epoch"] = int(h.loc[i, "epoch"])
        for k in ("hostname", "node_id", "world_size"):
            if k in h.columns:
                out[k] = last[k]
        if "learned" in h.columns and last["learned"] is not None:
            out["learned"] = bool(last["learned"])
    # Tuner.fit returns only when every trial has ended: a trial without error that reported is complete.
    if len(h):
        out["status"] = "completed" if finished else "incomplete"
    if failed is not None:
        out["status"], out["error"] = "failed", failed
    elif error is not None:
        out["status"] = "error"
    return out


def results_table(spec: SweepSpec, histories: Mapping[str, tuple[Any, str | None]]):
    """One tidy row per trial: config columns (every loss setting, ``loss.label``), final/best
    metrics, the last epoch's health, ``learned`` (only completed trials can have learned),
    status, paths."""
    import pandas as pd

    rows = []
    for t in spec.trials:
        hist, error = histories.get(t.name, (None, None))
        row = {"trial": t.name, **_config_columns(spec, t), **summarize_trial(hist, error)}
        row["learned"] = bool(row["learned"]) and row["status"] == "completed"
        row["output_dir"] = t.config["output_dir"]
        row["manifest"] = t.manifest
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in df.columns:
        vals = [v for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if any(isinstance(v, (list, dict, tuple)) for v in vals):
            df[col] = [json.dumps(v) if isinstance(v, (list, dict, tuple)) else v for v in df[col]]
            vals = [v for v in df[col] if v is not None]
        kinds = {"num" if _is_num(v) else "bool" if isinstance(v, bool) else "str" for v in vals}
        if len(kinds) > 1:
            df[col] = [None if v is None else str(v) for v in df[col]]
    return df


def _group_labels(df, spec: SweepSpec):
    """(row label, column label) per trial: loss label (+ other varying non-loss, non-noise keys)
    x noise setting."""
    cfg_cols = [c for c in df.columns if c.startswith("noise.") or c in spec.axes
                or any(c.startswith(a + ".") for a in spec.axes)]
    varying = [c for c in cfg_cols if df[c].astype(str).nunique() > 1]
    noise_cols = [c for c in varying if c.startswith("noise.") and c != "noise.seed"]
    row_cols = [c for c in varying if c not in noise_cols and c not in ("seed", "noise.seed")
                and not c.startswith("loss.") and c != "loss"]

    def row_label(r):
        extra = " ".join(f"{c.rsplit('.', 1)[-1]}={_fmt(r[c])}" for c in row_cols)
        return f"{r['loss.label']} {extra}".strip()

    def col_label(r):
        if not noise_cols:
            return "all"
        return ", ".join(f"{c.split('.', 1)[1]}={_fmt(r[c])}" for c in noise_cols)

    return df.apply(row_label, axis=1), df.apply(col_label, axis=1)


#: (column, title, scale, digits, learned runs only) of the summary's metric tables.
SUMMARY_METRICS = (
    ("final_clean_true_accuracy", "Clean-sample accuracy on their labels, last epoch (all completed runs)",
     1.0, 3, False),
    ("best_noisy_auc", "Noisy-sample detection AUC from theta_y, best epoch", 1.0, 3, True),
    ("final_noisy_auc", "Noisy-sample detection AUC from theta_y, last epoch", 1.0, 3, True),
    ("final_noisy_fit_given", "Closed-set noisy samples fitted to their given (wrong) label, last epoch",
     1.0, 3, True),
    ("final_theta_clean_median_deg", "Median theta_y of clean samples, last epoch (degrees)", 1.0, 1, True),
    ("final_theta_noisy_median_deg", "Median theta_y of noisy samples, last epoch (degrees)", 1.0, 1, True),
    ("final_val_accuracy", "Verification accuracy, last epoch (%)", 100.0, 2, True),
    ("best_val_accuracy", "Verification accuracy, best epoch (%)", 100.0, 2, True),
    ("final_loss", "Training loss, last epoch", 1.0, 3, True),
)


def _cell(values, scale: float, digits: int) -> str:
    v = [x * scale for x in values if x == x]
    if not v:
        return "–"
    mean = sum(v) / len(v)
    if len(v) == 1:
        return f"{mean:.{digits}f} (n=1)"
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(v)})"


def _grid_table(rows, cols, row_order, col_order, cell) -> list[str]:
    lines = ["| loss | " + " | ".join(col_order) + " |", "|---|" + "---|" * len(col_order)]
    for rl in row_order:
        lines.append(f"| {rl} | " + " | ".join(cell((rows == rl) & (cols == cl)) for cl in col_order) + " |")
    return lines + [""]


def summary_markdown(df, spec: SweepSpec) -> str:
    """``summary.md`` text: how many runs learned per loss x noise setting, then for each metric a
    table of mean ± sample std over the seeds that learned (the clean-sample accuracy over every
    completed run); failed and errored trials listed with reasons. Row labels carry the loss's
    scale, margin and grad_mode."""
    import numpy as np

    counts = df["status"].value_counts().to_dict() if len(df) else {}
    done = df[df["status"] == "completed"].copy()
    thresholds = sorted(set(float(x) for x in done.get("learned_threshold", [])))
    lines = [f"# Sweep `{spec.name}`", "",
             f"{len(df)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "; "
             f"{int(done['learned'].sum()) if len(done) else 0} of {len(done)} completed trials learned.",
             "A trial *learned* when its last epoch's clean-sample accuracy on their labels (plain cosine "
             f"argmax) reaches health.learned_accuracy ({', '.join(f'{t:g}' for t in thresholds) or '-'}). "
             "Metric cells: mean ± sample std over the seeds that learned (n = learned trials); runs "
             "that did not learn are counted below and left out, never averaged in.", ""]
    if len(done):
        for c in ("theta_clean_median", "theta_noisy_median"):
            done[f"final_{c}_deg"] = np.degrees(done[f"final_{c}"].astype(float))
        rows, cols = _group_labels(done, spec)
        row_order, col_order = list(dict.fromkeys(rows)), list(dict.fromkeys(cols))
        learned = done["learned"].astype(bool)
        lines += ["## Trials that learned (learned / completed)", ""]
        lines += _grid_table(rows, cols, row_order, col_order,
                             lambda m: f"{int(learned[m].sum())}/{int(m.sum())}" if m.any() else "–")
        for metric, title, scale, digits, only_learned in SUMMARY_METRICS:
            if metric not in done.columns or done[metric].isna().all():
                continue
            lines += [f"## {title}", ""]
            lines += _grid_table(rows, cols, row_order, col_order, lambda m: _cell(
                list(done.loc[m & (learned | (not only_learned)), metric].astype(float)), scale, digits))
    bad = df[df["status"].isin(["failed", "error", "incomplete", "pending"])]
    if len(bad):
        lines += ["## Trials that did not complete", ""]
        for _, r in bad.iterrows():
            lines.append(f"- `{r['trial']}`: {r['status']}" + (f": {r['error']}" if r["error"] else ""))
        lines.append("")
    not_learned = done[~done["learned"].astype(bool)] if len(done) else done
    if len(not_learned):
        lines += ["## Completed trials that did not learn", ""]
        for _, r in not_learned.iterrows():
            lines.append(f"- `{r['trial']}` ({r['loss.label']}): clean-sample accuracy "
                         f"{float(r['final_clean_true_accuracy']):.3f} at the last epoch")
        lines.append("")
    return "\n".join(lines)


def write_results(df, sweep_dir: str | os.PathLike, spec: SweepSpec) -> None:
    """Write ``results.parquet``, ``results.csv`` and ``summary.md`` atomically."""
    from noisyfr.io import atomic_path, atomic_write

    sdir = Path(sweep_dir)
    with atomic_path(sdir / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(sdir / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_write(sdir / "summary.md", "w", encoding="utf-8") as fh:
        fh.write(summary_markdown(df, spec))
