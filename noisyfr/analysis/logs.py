"""A run's angle logs (``angles/epoch_<E>.parquet``) as files: found, their footers checked
against the trainer's schema, their rows counted, and (for small runs and tests) read in memory.

:func:`angle_files` is what every command runs before it reads a log (the report streams them,
:mod:`noisyfr.analysis.engine`); :func:`load_angles` reads them whole. Split out of
:mod:`noisyfr.analysis.load`, which re-exports these names.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from noisyfr.angle_log import ANGLE_SCHEMA, WEIGHT_COLUMNS
from noisyfr.angle_log import COLUMNS as ANGLE_COLUMNS
from noisyfr.angle_log import REQUIRED_COLUMNS as REQUIRED_ANGLE_COLUMNS
from noisyfr.dotted import get_dotted
from noisyfr.errors import NoisyFRError
from noisyfr.safefs import check_folder, check_regular

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.parquet$")


def read_table(path: Path) -> pd.DataFrame:
    """Read a Parquet or CSV table, turning any reader failure into a one-line NoisyFRError."""
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NoisyFRError(f"{path}: cannot read table ({msg})") from None
    except Exception as exc:  # pyarrow raises its own error types on corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NoisyFRError(f"{path}: cannot read table ({msg})") from None


def _schema(path: Path):
    """The Parquet schema and row-group statistics of an angle log, or a one-line error naming it."""
    import pyarrow.parquet as pq

    check_regular(path, "angle log")  # no link, no FIFO (opening one would block)
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own types on truncated or corrupt files
        from noisyfr.analysis.engine import first_sentence

        raise NoisyFRError(f"{path}: cannot read angle log ({first_sentence(exc)})") from None


def _check_log_schema(path: Path, pf) -> set[str]:
    """The columns of one angle log after checking them against the trainer's
    (:data:`~noisyfr.train.angles.COLUMNS`): the required ones present, every known one numeric,
    the epoch column (by its statistics) the file's own."""
    import pyarrow as pa

    schema = pf.schema_arrow
    names = set(schema.names)
    missing = [c for c in REQUIRED_ANGLE_COLUMNS if c not in names]
    if missing:
        raise NoisyFRError(f"{path}: angle log lacks column(s) {', '.join(missing)}")
    for c in ANGLE_COLUMNS:
        if c not in names:
            continue
        typ = schema.field(c).type
        ok = pa.types.is_integer(typ) if c in _INT_COLUMNS else (
            pa.types.is_floating(typ) or pa.types.is_integer(typ))
        if not ok:
            want = "an integer" if c in _INT_COLUMNS else "a number"
            raise NoisyFRError(f"{path}: column {c} has type {typ}, expected {want} (not a noisyfr angle log?)")
    epoch = int(_EPOCH_FILE.match(path.name).group(1))
    meta = pf.metadata
    if meta.num_rows != sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups)):
        raise NoisyFRError(f"{path}: its footer declares {meta.num_rows} rows but its row groups hold "
                           "another number (a corrupt or forged angle log)")
    if meta.num_rows == 0:
        raise NoisyFRError(f"{path}: holds no rows (an empty angle log: epoch {epoch}'s angles and "
                           "health are unknown)")
    for c in ("epoch", "sample_index", "label", "theta_y"):  # a null where every row needs a value
        j = pf.schema_arrow.get_field_index(c)
        if any((st := meta.row_group(i).column(j).statistics) is not None and st.has_null_count
               and st.null_count > 0 for i in range(meta.num_row_groups)):
            raise NoisyFRError(f"{path}: column {c} has missing (null) values")
    lo, hi = _column_range(pf, "epoch")
    if lo is not None and (lo != epoch or hi != epoch):
        raise NoisyFRError(f"{path}: holds rows of epoch {lo}-{hi}, expected only {epoch}")
    # the weights' range, from the row groups' statistics (which leave NaN out: not logged)
    for col in WEIGHT_COLUMNS:
        if col in names:
            lo, hi = _column_range(pf, col)
            if hi is not None and math.isinf(hi):
                raise NoisyFRError(f"{path}: column {col} has infinite values")
            if lo is not None and lo < 0:
                raise NoisyFRError(f"{path}: negative {col} (expected a gradient magnitude)")
    return names


def _column_range(pf, column: str):
    """``(min, max)`` of a column over a Parquet file's row-group statistics (None, None when a
    row group has none)."""
    meta = pf.metadata
    j = pf.schema_arrow.get_field_index(column)
    lo = hi = None
    for i in range(meta.num_row_groups):
        st = meta.row_group(i).column(j).statistics
        if st is None or not st.has_min_max:
            if meta.row_group(i).num_rows:
                return None, None
            continue
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    return lo, hi


#: Angle-log columns that hold indices and labels.
_INT_COLUMNS = tuple(c for c, t in ANGLE_SCHEMA.items() if t.startswith("int"))


def expected_epochs(cfg: dict, metrics: pd.DataFrame, found: list[int]) -> list[int]:
    """The epochs whose angle log must exist: every epoch the run trained (metrics.csv, else
    1 to the last log found) that :func:`noisyfr.train.angles.logged_epochs` logs at the
    config's ``track.angles_every`` (1 when absent)."""
    every = get_dotted(cfg, "track.angles_every")
    every = int(every) if isinstance(every, int) and not isinstance(every, bool) and every >= 1 else 1
    trained: list[int] = []
    if "epoch" in metrics.columns and len(metrics):
        trained = sorted({int(e) for e in pd.to_numeric(metrics["epoch"], errors="coerce").dropna()})
    if not trained:
        trained = list(range(1, max(found) + 1)) if found else []
    total = get_dotted(cfg, "optim.epochs")
    total = int(total) if isinstance(total, int) and not isinstance(total, bool) else max(trained, default=0)
    from noisyfr.angle_log import logged_epochs

    logged = set(logged_epochs(max(total, max(trained, default=1), 1), every))
    return [e for e in trained if e in logged]


def angle_files(run_dir: Path, cfg: dict | None = None, metrics: pd.DataFrame | None = None
                ) -> tuple[dict[int, Path], set[str]]:
    """The run's angle logs ``{epoch: path}`` and the union of their columns, each file's schema
    checked (:func:`_check_log_schema`) and every expected epoch (:func:`expected_epochs`)
    present; one-line NoisyFRError naming the file otherwise. Reads only the files' footers."""
    files, columns, _ = _angle_files(run_dir, cfg, metrics)
    return files, columns


def _angle_files(run_dir: Path, cfg: dict | None, metrics: pd.DataFrame | None
                 ) -> tuple[dict[int, Path], set[str], dict[int, int]]:
    """:func:`angle_files` and the rows of each file (its footer's)."""
    adir = check_folder(run_dir / "angles", "angle logs")
    files = {int(_EPOCH_FILE.match(p.name).group(1)): p for p in adir.iterdir() if _EPOCH_FILE.match(p.name)}
    if not files:
        raise NoisyFRError(f"{adir}: no angle logs (angles/epoch_<E>.parquet)")
    columns: set[str] = set()
    rows: dict[int, int] = {}
    for e in sorted(files):
        pf = _schema(files[e])
        columns |= _check_log_schema(files[e], pf)
        rows[e] = int(pf.metadata.num_rows)
    if cfg is not None:
        gone = [e for e in expected_epochs(cfg, metrics if metrics is not None else pd.DataFrame(), sorted(files))
                if e not in files]
        if gone:
            raise NoisyFRError(f"{adir / f'epoch_{gone[0]}.parquet'}: missing (the run trained epoch {gone[0]}"
                               f"{' and ' + str(len(gone) - 1) + ' more' if len(gone) > 1 else ''}; "
                               "its angle log was deleted or never written)")
    return dict(sorted(files.items())), columns, rows


def load_angles(run_dir: Path) -> pd.DataFrame:
    """All ``angles/epoch_<E>.parquet`` files of a run, concatenated and checked (in memory:
    for small runs and tests; the report streams them, :mod:`noisyfr.analysis.engine`)."""
    adir = run_dir / "angles"
    files, _ = angle_files(run_dir)
    frames = []
    for f in files.values():
        df = read_table(f)
        frames.append(_complete_angle_log(df))
    angles = pd.concat(frames, ignore_index=True)
    if not np.isfinite(angles["theta_y"].to_numpy(dtype=float)).all():
        raise NoisyFRError(f"{adir}: column theta_y has NaN or infinite values")
    if (angles["theta_y"] < -1e-6).any() or (angles["theta_y"] > math.pi + 1e-6).any():
        raise NoisyFRError(f"{adir}: theta_y outside [0, pi] (angles must be in radians)")
    # weights may be NaN where the trainer could not log them: their statistics then come out NaN
    for col in WEIGHT_COLUMNS:
        if np.isinf(angles[col].to_numpy(dtype=float)).any():
            raise NoisyFRError(f"{adir}: column {col} has infinite values")
        if (angles[col] < 0).any():
            raise NoisyFRError(f"{adir}: negative {col} (expected a gradient magnitude)")
    return angles


def _complete_angle_log(df: pd.DataFrame) -> pd.DataFrame:
    """The log's :data:`~noisyfr.train.angles.COLUMNS` in order; columns older logs lack are filled:
    ``label_used`` = ``label``, ``theta_dominant`` = ``theta_y``, ``weight_theta`` = ``weight *
    sin(theta_y)``, ``grad_norm``, ``unit_pull``, ``feat_norm``, ``lse_neg`` = NaN (not logged),
    ``theta_used`` = ``theta_y`` where ``label_used`` = ``label``, NaN elsewhere (the angle at a
    corrected label was not logged)."""
    def nan(d):
        return np.full(len(d), np.nan)

    fill = {"label_used": lambda d: d["label"],
            "theta_dominant": lambda d: d["theta_y"],
            "weight_theta": lambda d: d["weight"] * np.sin(d["theta_y"].astype(float)),
            "grad_norm": nan, "unit_pull": nan, "feat_norm": nan, "lse_neg": nan}
    missing = {c: f(df) for c, f in fill.items() if c not in df.columns}
    df = df.assign(**missing)
    if "theta_used" not in df.columns:
        same = df["label_used"].to_numpy() == df["label"].to_numpy()
        df = df.assign(theta_used=np.where(same, df["theta_y"].astype(float), np.nan))
    return df[list(ANGLE_COLUMNS)]


