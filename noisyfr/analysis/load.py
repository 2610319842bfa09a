"""Find and load training run directories (angle logs + noise manifest + metrics) and sweep results.

A *run directory* holds ``config.yaml``, ``metrics.csv`` and ``angles/epoch_<E>.parquet``; its config's
``data.manifest`` names the noise manifest (columns ``index, path, identity, orig_label, label, noise``)
with its sidecar ``<manifest>.json``. A *sweep directory* holds ``results.parquet`` / ``results.csv``
and run directories under ``trials/<trial>/``. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# the angle-log files' checks and readers live in noisyfr.analysis.logs; re-exported here
from noisyfr.analysis.logs import (  # noqa: F401 (re-exported)
    _EPOCH_FILE,
    _angle_files,
    _complete_angle_log,
    angle_files,
    expected_epochs,
    load_angles,
    read_table,
)
from noisyfr.angle_log import DEFAULT_LEARNED_ACCURACY, health_metrics
from noisyfr.dotted import get_dotted
from noisyfr.errors import NoisyFRError
from noisyfr.io import read_yaml
from noisyfr.noise.spec import NOISE_TYPES
from noisyfr.safefs import check_folder, check_regular

MANIFEST_COLUMNS = ("index", "label", "noise")


@dataclass
class Run:
    """One training run: its identity (loss, noise condition, seed) and its per-sample angle log.

    ``loss`` is the loss *label* (name, s, margins, grad_mode: ``arcface s=32 m=0.5 detached``,
    see :func:`noisyfr.losses.loss_label`), ``loss_name`` the registered name and
    ``loss_settings`` every loss setting. ``angles`` has the angle-log columns plus ``noise``
    (clean/closed/open/split/merge from the manifest), ``orig_label`` (the true label; the given
    one without a manifest) and ``is_noisy`` (noise != clean), one row per (epoch, sample).
    ``health`` has one row per epoch of :func:`noisyfr.train.angles.health_metrics`.
    """

    path: Path
    name: str
    config: dict
    loss: str
    loss_name: str
    loss_settings: dict
    seed: int | None
    condition: str
    noise_rate: float
    rates: dict[str, float]
    angles: pd.DataFrame | None
    metrics: pd.DataFrame
    manifest_path: Path | None = None
    manifest_meta: dict = field(default_factory=dict)
    health: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the angle-log files by epoch and the columns any of them has (:func:`scan_run`)
    files: dict[int, Path] = field(default_factory=dict)
    columns: set[str] = field(default_factory=set)
    #: angle rows of each epoch's file, from its footer (:func:`scan_run`)
    rows: dict[int, int] = field(default_factory=dict)
    #: samples per epoch and largest label seen (set by the analysis pass)
    n_samples: int = 0
    max_label: int = -1

    @property
    def epochs(self) -> list[int]:
        """Sorted epochs of the angle log."""
        if self.angles is None:
            return sorted(self.files)
        return sorted(int(e) for e in self.angles["epoch"].unique())

    @property
    def num_classes(self) -> int:
        """The manifest's number of classes, else one more than the largest label."""
        n = self.manifest_meta.get("num_classes") if isinstance(self.manifest_meta, dict) else None
        if isinstance(n, int) and n > 1:
            return n
        if self.angles is not None:
            return int(self.angles["label"].max()) + 1
        return self.max_label + 1

    @property
    def final_clean_accuracy(self) -> float:
        """``clean_true_accuracy`` of the last epoch (NaN without angle rows)."""
        if self.health.empty:
            return float("nan")
        return float(self.health.sort_values("epoch")["clean_true_accuracy"].iloc[-1])

    def learned_evidence(self, threshold: float = DEFAULT_LEARNED_ACCURACY) -> tuple[bool, str]:
        """``(learned, evidence)`` by the trainer's rule (:mod:`noisyfr.train.heldout`): the last
        epoch's ``heldout_accuracy`` (metrics.csv) against the run's
        ``health.learned_heldout_accuracy``, or without held-out images its ``clean_true_accuracy``
        against ``threshold``; evidence ``heldout`` or ``train``."""
        from noisyfr.angle_log import DEFAULT_LEARNED_HELDOUT, learned_from

        last = {"clean_true_accuracy": self.final_clean_accuracy}
        if "heldout_accuracy" in self.metrics.columns and len(self.metrics):
            last["heldout_accuracy"] = float(pd.to_numeric(self.metrics["heldout_accuracy"],
                                                           errors="coerce").iloc[-1])
        held = get_dotted(self.config, "health.learned_heldout_accuracy")
        return learned_from(last, {"learned_accuracy": threshold,
                                   "learned_heldout_accuracy": DEFAULT_LEARNED_HELDOUT if held is None
                                   else float(held)})

    def learned(self, threshold: float = DEFAULT_LEARNED_ACCURACY) -> bool:
        """True when the run learned (:meth:`learned_evidence`)."""
        return self.learned_evidence(threshold)[0]


def epoch_health(angles: pd.DataFrame) -> pd.DataFrame:
    """:func:`noisyfr.train.angles.health_metrics` per epoch of one run's angle table."""
    rows = [{"epoch": int(e), **health_metrics(g)} for e, g in angles.groupby("epoch", sort=True)]
    return pd.DataFrame(rows)


def is_run_dir(path: Path) -> bool:
    """True when ``path`` looks like a training run directory (config.yaml and an angles/ folder)."""
    return (path / "config.yaml").is_file() and (path / "angles").is_dir()


def discover_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root``: ``root`` itself, ``root/trials/*``, or any nested run dir (depth <= 3)."""
    root = Path(root)
    if not root.exists():
        raise NoisyFRError(f"{root}: no such run or sweep directory")
    if not root.is_dir():
        raise NoisyFRError(f"{root}: not a directory (expected a run or sweep directory)")
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    frontier = [root]
    for _ in range(3):
        nxt = []
        for d in frontier:
            for child in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if child.is_symlink():  # a link would open its target to every reader (query's sandbox)
                    check_folder(child, "run or sweep entry")
                (found if is_run_dir(child) else nxt).append(child)
        frontier = nxt
    if not found:
        raise NoisyFRError(f"{root}: no run directories (config.yaml + angles/) found")
    return sorted(found)


def find_results(root: str | Path) -> Path | None:
    """The sweep results table of ``root`` (results.parquet preferred over results.csv), or None."""
    root = Path(root)
    for name in ("results.parquet", "results.csv"):
        if (root / name).is_file():
            return root / name
    return None


def load_results(path: Path) -> pd.DataFrame:
    """Load a sweep results table (one row per trial)."""
    df = read_table(path)
    if df.empty:
        raise NoisyFRError(f"{path}: results table is empty")
    return df


def _loss_section(cfg: dict) -> dict:
    loss = cfg.get("loss")
    if isinstance(loss, str):
        return {"name": loss}
    if isinstance(loss, dict) and loss.get("name"):
        return dict(loss)
    return {"name": "unknown"}


def _seed(cfg: dict) -> int | None:
    val = cfg.get("seed")
    try:
        return None if val is None else int(val)
    except (TypeError, ValueError):
        return None


def resolve_manifest(value: str, run_dir: Path) -> Path:
    """Path of a config's ``data.manifest``: absolute, or relative to the run dir, the cwd or a parent of
    the run dir."""
    cand = Path(value)
    if cand.is_absolute():
        if cand.is_file():
            return cand
    else:
        for base in (run_dir, Path.cwd(), *run_dir.parents):
            if (base / cand).is_file():
                return base / cand
    raise NoisyFRError(f"{run_dir / 'config.yaml'}: data.manifest {value!r} does not exist")


def read_manifest_any(path: Path) -> tuple[pd.DataFrame, dict]:
    """Read a noise manifest and its JSON sidecar with :func:`noisyfr.noise.manifest.read_manifest`;
    any reader failure becomes a one-line NoisyFRError naming the file."""
    from noisyfr.noise.manifest import read_manifest

    try:
        df, meta = read_manifest(path)
    except NoisyFRError:
        raise
    except Exception as exc:  # pyarrow and pandas raise their own types on corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NoisyFRError(f"{path}: cannot read manifest ({msg})") from None
    return df, dict(meta or {})


def _rates_from_meta(meta: dict) -> dict[str, float] | None:
    """Noise rates of the condition: the sidecar's ``requested`` rates (stable across seeds), else ``rates``."""
    for key in ("requested", "rates"):
        rates = meta.get(key)
        if not isinstance(rates, dict):
            continue
        out = {}
        for name, val in rates.items():
            name = str(name).replace("_rate", "")
            if name in NOISE_TYPES and name != "clean" and isinstance(val, (int, float)) \
                    and not isinstance(val, bool) and val > 0:
                out[name] = float(val)
        if out or key == "requested":
            return out
    return None


def condition_from_meta(meta: dict) -> tuple[str, dict[str, float]] | None:
    """``(condition label, rates)`` from a manifest sidecar, or None when it holds no rates.

    A non-symmetric closed-set mode is part of the label, e.g. ``closed_pairwise=0.4``.
    """
    rates = _rates_from_meta(meta)
    if rates is None:
        return None
    req = meta.get("requested") if isinstance(meta.get("requested"), dict) else {}
    mode = req.get("closed_mode")
    labelled = dict(rates)
    if "closed" in labelled and isinstance(mode, str) and mode != "symmetric":
        labelled[f"closed_{mode}"] = labelled.pop("closed")
    return condition_label(labelled), rates


def condition_label(rates: dict[str, float]) -> str:
    """Short name of a noise condition, e.g. ``closed=0.2,open=0.1``; ``clean`` when no noise."""
    parts = [f"{k}={v:g}" for k, v in sorted(rates.items()) if v > 0]
    return ",".join(parts) if parts else "clean"


def _manifest_noise(path: Path) -> pd.Series:
    """The ``noise`` column of a manifest (read alone), one-line error naming the file."""
    try:
        if str(path).endswith(".csv"):
            col = pd.read_csv(path, usecols=["noise"])["noise"]
        else:
            import pyarrow.parquet as pq

            col = pq.read_table(path, columns=["noise"]).column("noise").to_pandas()
    except Exception as exc:  # pyarrow / pandas raise their own types
        from noisyfr.analysis.engine import first_sentence

        raise NoisyFRError(f"{path}: cannot read manifest ({first_sentence(exc)})") from None
    return col.astype(str)


def scan_run(run_dir: str | Path, root: str | Path | None = None) -> Run:
    """A run directory's config, metrics, manifest sidecar and noise condition, with its angle
    logs' files checked (:func:`angle_files`) but not read: ``angles`` is None. The analysis
    streams the logs (:mod:`noisyfr.analysis.engine`)."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise NoisyFRError(f"{run_dir}: not a run directory (needs config.yaml and angles/)")
    cfg_path = check_regular(run_dir / "config.yaml", "run config")
    cfg = read_yaml(cfg_path, "run config") or {}
    if not isinstance(cfg, dict):
        raise NoisyFRError(f"{cfg_path}: expected a mapping at the top level")
    metrics = pd.DataFrame()
    if (run_dir / "metrics.csv").is_file():
        metrics = read_table(check_regular(run_dir / "metrics.csv", "run metrics"))
    files, columns, rows = _angle_files(run_dir, cfg, metrics)

    manifest_value = get_dotted(cfg, "data.manifest")
    manifest_path = None
    meta: dict = {}
    rates: dict[str, float] = {}
    condition, true_rate = "clean", 0.0
    if manifest_value:
        from noisyfr.noise.manifest import sidecar_path

        manifest_path = resolve_manifest(str(manifest_value), run_dir)
        check_regular(Path(manifest_path).resolve(), "manifest")
        side = sidecar_path(manifest_path)
        if side.is_file():
            from noisyfr.io import read_json

            meta = read_json(side, "manifest sidecar")
            meta = meta if isinstance(meta, dict) else {}
        fractions = _manifest_noise(manifest_path).value_counts(normalize=True)
        bad = sorted(set(fractions.index) - set(NOISE_TYPES))
        if bad:
            raise NoisyFRError(f"{manifest_path}: unknown noise type(s) {', '.join(bad)}")
        true_rate = float(1.0 - fractions.get("clean", 0.0))
        found = condition_from_meta(meta)
        if found is None:
            rates = {k: round(float(v), 3) for k, v in fractions.items() if k != "clean"}
            condition = condition_label(rates)
        else:
            condition, rates = found
    from noisyfr.labels import head_label

    head = head_label(cfg.get("model"))  # runs over features: the trained head is part of the condition
    condition = condition if head is None else f"{condition} {head}"
    name = str(run_dir.relative_to(root)) if root is not None and run_dir != Path(root) else run_dir.name
    if name in ("", "."):
        name = run_dir.resolve().name
    from noisyfr.labels import loss_label, loss_settings

    section = _loss_section(cfg)
    return Run(path=run_dir, name=name, config=cfg, loss=loss_label(section),
               loss_name=str(section["name"]), loss_settings=loss_settings(section), seed=_seed(cfg),
               condition=condition, noise_rate=true_rate, rates=rates, angles=None,
               metrics=metrics, manifest_path=manifest_path, manifest_meta=meta,
               files=files, columns=columns, rows=rows)


def run_inputs(runs: list[Run]) -> list[Path]:
    """Every path the analysis of ``runs`` reads, wherever it lies: each run's ``angles/``,
    ``config.yaml`` and ``metrics.csv`` and its manifest (a manifest's sidecar is added by
    :func:`noisyfr.outputs.input_paths`). An output is checked against these
    (:func:`noisyfr.outputs.check_output`): a report may go beside a run, never into what it reads."""
    out: list[Path] = []
    for r in runs:
        out += [Path(r.path) / "angles", Path(r.path) / "config.yaml", Path(r.path) / "metrics.csv"]
        if r.manifest_path is not None:
            out.append(Path(r.manifest_path))
    return out


def load_run(run_dir: str | Path, root: str | Path | None = None) -> Run:
    """Load one run directory in memory (:func:`scan_run` plus its angle logs joined with the
    manifest's noise types, and the health per epoch): for small runs, notebooks and tests."""
    run = scan_run(run_dir, root)
    run_dir = run.path
    angles = load_angles(run_dir)
    manifest_path = run.manifest_path
    if manifest_path is not None:
        man, meta = read_manifest_any(manifest_path)
        missing = [c for c in MANIFEST_COLUMNS if c not in man.columns]
        if missing:
            raise NoisyFRError(f"{manifest_path}: manifest lacks column(s) {', '.join(missing)}")
        if "orig_label" not in man.columns:
            man = man.assign(orig_label=man["label"])
        man = man[["index", "label", "noise", "orig_label"]].rename(
            columns={"index": "sample_index", "label": "manifest_label"})
        if man["sample_index"].duplicated().any():
            raise NoisyFRError(f"{manifest_path}: duplicate index values")
        merged = angles.merge(man, on="sample_index", how="left", validate="many_to_one")
        unknown = merged["noise"].isna()
        if unknown.any():
            idx = int(merged.loc[unknown, "sample_index"].iloc[0])
            raise NoisyFRError(f"{run_dir / 'angles'}: sample_index {idx} is not in manifest {manifest_path}")
        mismatch = merged["label"].to_numpy() != merged["manifest_label"].to_numpy()
        if mismatch.any():
            idx = int(merged.loc[mismatch, "sample_index"].iloc[0])
            raise NoisyFRError(f"{run_dir / 'angles'}: label of sample_index {idx} differs from manifest "
                               f"{manifest_path} (wrong manifest?)")
        angles = merged.drop(columns="manifest_label")
    else:
        angles = angles.assign(noise="clean", orig_label=angles["label"])
    angles["noise"] = angles["noise"].astype(str)
    angles["is_noisy"] = angles["noise"] != "clean"
    run.angles = angles
    run.health = epoch_health(angles)
    run.n_samples = int(angles["sample_index"].nunique())
    run.max_label = int(angles["label"].max())
    return run


def scan_runs(root: str | Path) -> list[Run]:
    """:func:`scan_run` every run directory found under ``root`` (a run or a sweep directory)."""
    from tqdm.auto import tqdm

    root = Path(root)
    paths = discover_runs(root)
    return [scan_run(p, root=root) for p in tqdm(paths, desc="scan runs", disable=None)]


def load_runs(root: str | Path) -> list[Run]:
    """Load every run directory found under ``root`` (a run or a sweep directory)."""
    from tqdm.auto import tqdm

    root = Path(root)
    paths = discover_runs(root)
    return [load_run(p, root=root) for p in tqdm(paths, desc="load runs", disable=None)]


def long_angles(runs: list[Run]) -> pd.DataFrame:
    """All runs' angle logs in one long table with ``run, loss`` (the loss label), ``loss_name``,
    ``grad_mode``, ``condition, seed, noise_rate`` columns."""
    frames = []
    for r in runs:
        frames.append(r.angles.assign(run=r.name, loss=r.loss, loss_name=r.loss_name,
                                      grad_mode=str(r.loss_settings.get("grad_mode")),
                                      condition=r.condition,
                                      seed=r.seed if r.seed is not None else -1,
                                      noise_rate=r.noise_rate))
    return pd.concat(frames, ignore_index=True)
