"""The out-of-core analysis engine: DuckDB over the runs' Parquet angle logs.

A run's angle logs (``angles/epoch_<E>.parquet``) and its noise manifest are read as one
relation, :func:`run_source`: the trainer's columns (filled in for older logs, see
:data:`FILL`) plus ``noise`` and ``orig_label`` from the manifest and ``is_noisy``. Nothing is
materialised: every statistic of the report is a streaming aggregate of that relation,
:func:`aggregate`, which groups it into small tables whose size does not depend on the number of
samples (per epoch and noise type: sums and counts; a fine histogram of theta_y; a coarse one of
the angle at the label trained on). :mod:`noisyfr.analysis.stats` turns those into the report's
tables. The report aggregates one run at a time, so peak memory is bounded by the size of one
run's aggregates and DuckDB's ``memory_limit`` (:data:`DEFAULT_MEMORY_LIMIT`), whatever the
number of runs, epochs and samples (docs/analysis.md, "Scale").

A DataFrame with the long-table columns goes through the same SQL (:func:`frame_source`), so
small in-memory tables and paper-scale sweeps share one definition of every statistic.

Exactness: counts, sums, means, shares and the fixed and 2-D regions are exact. Medians and the
quantile region's threshold come from a histogram of :data:`FINE_BINS` bins over [0, 180]
degrees, interpolated inside a bin, so they are within one bin (:data:`FINE_DEG`, 0.011 degrees)
of the exact order statistic. The detection AUC counts pairs in one bin as ties; its error is at
most ``auc_bound``, computed with it.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# split out of this module and re-exported: the input checks and the order statistics
from noisyfr.analysis.checks import (  # noqa: F401 (re-exported)
    _check_join,
    check_parts,
    check_source,
    check_theta,
    first_sentence,
    locate_scan_error,
    quote,
)
from noisyfr.analysis.order import ORDER_GROUPS, SAMPLE_ROWS, group_counts, order_bins, rank_bins  # noqa: F401
from noisyfr.angle_log import WEIGHT_COLUMNS
from noisyfr.errors import NoisyFRError
from noisyfr.noise.spec import NOISE_TYPES

#: theta bins over [0, pi] of the fine histogram (medians, quantile thresholds, AUC).
FINE_BINS = 16384
#: Width of a fine bin in degrees: the accuracy of medians and quantile thresholds.
FINE_DEG = 180.0 / FINE_BINS
#: DuckDB's memory limit for the analysis: past it DuckDB spills to a temporary directory.
DEFAULT_MEMORY_LIMIT = os.environ.get("NOISYFR_ANALYSIS_MEMORY", "1GB")

#: Columns of the trainer's angle log that older logs may lack, and how they are filled:
#: SQL over the columns that are present (see :func:`noisyfr.analysis.load.load_angles`).
FILL = {
    "label_used": "label",
    "theta_dominant": "theta_y",
    "weight_theta": "weight * sin(theta_y)",
    "grad_norm": "NULL::FLOAT", "unit_pull": "NULL::FLOAT", "feat_norm": "NULL::FLOAT",
    "lse_neg": "NULL::FLOAT",
}
#: Float columns whose NaN means "not logged": read as NULL, so sums and means skip them.
NAN_AS_NULL = ("theta_orig", "weight", "weight_theta", "grad_norm", "unit_pull", "feat_norm",
               "theta_used", "lse_neg")


def connect(memory_limit: str | None = None, threads: int | None = None):
    """An in-memory DuckDB connection set up for the analysis (all cores, a memory limit,
    spilling to a private temporary directory). The directory is removed with its contents
    when the connection is closed and dropped, or at the latest when the process exits: no
    ``noisyfr-duckdb-*`` folder is left behind."""
    import shutil
    import weakref

    import duckdb

    tmp = tempfile.mkdtemp(prefix="noisyfr-duckdb-")
    try:
        con = duckdb.connect(":memory:", config={
            "threads": int(threads or os.cpu_count() or 1),
            "memory_limit": memory_limit or DEFAULT_MEMORY_LIMIT,
            "preserve_insertion_order": False, "temp_directory": tmp})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(con, shutil.rmtree, tmp, True)
    return con


def _scan_list(files: list[Path]) -> str:
    return "[" + ", ".join(quote(f) for f in files) + "]"


def _angle_select(present: set[str]) -> list[str]:
    """The trainer's columns as SQL expressions over a log with the columns ``present``."""
    from noisyfr.angle_log import COLUMNS

    cols = []
    for c in COLUMNS:
        if c in present:
            expr = f"a.{c}"
        elif c == "theta_used":
            label_used = "a.label_used" if "label_used" in present else "a.label"
            expr = f"CASE WHEN {label_used} = a.label THEN a.theta_y END"
        else:
            expr = re.sub(r"\b(label|theta_y|weight)\b", r"a.\1", FILL[c])
        if c in NAN_AS_NULL:
            expr = f"nullif({expr}, 'NaN'::FLOAT)"
        cols.append(f"{expr} AS {c}")
    return cols


#: Noise type codes of the relations (``noise_code``): the index in NOISE_TYPES.
NOISE_CODE = {name: i for i, name in enumerate(NOISE_TYPES)}
_NOISE_CASE = "CASE noise_code " + " ".join(f"WHEN {i} THEN {quote(n)}" for n, i in NOISE_CODE.items()) + " END"


def _reader(path: Path) -> str:
    if str(path).endswith(".csv"):
        return f"read_csv({quote(path)}, header=true)"
    return f"read_parquet({quote(path)})"


def run_manifest(con, run, loaded: dict, prefix: str = "manifest") -> str | None:
    """The temporary table holding ``run``'s manifest (None without one), loaded by
    :func:`manifest_table` once per manifest file: ``loaded`` maps file -> table name and is
    filled as runs come."""
    if run.manifest_path is None:
        return None
    if run.manifest_path not in loaded:
        loaded[run.manifest_path] = f"{prefix}_{len(loaded)}"
        manifest_table(con, run.manifest_path, loaded[run.manifest_path])
    return loaded[run.manifest_path]


def manifest_table(con, path: Path, name: str) -> pd.DataFrame:
    """Load a noise manifest's join columns into the temporary table ``name`` (``manifest_index``,
    ``manifest_label``, ``noise_code``, ``orig_label``; a few bytes per sample) and return its
    count per noise type (columns ``noise, n``). One-line NoisyFRError naming the file when it
    cannot be read, lacks a column, repeats an index or has an unknown noise type."""
    import duckdb

    try:
        cols = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {_reader(path)}").fetchall()]
    except duckdb.Error as exc:
        raise NoisyFRError(f"{path}: cannot read manifest ({first_sentence(exc)})") from None
    missing = [c for c in ("index", "label", "noise") if c not in cols]
    if missing:
        raise NoisyFRError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    orig = "orig_label" if "orig_label" in cols else "label"
    try:
        counts = con.sql(f"SELECT CAST(noise AS VARCHAR) AS noise, count(*) AS n, "
                         f"count(DISTINCT \"index\") AS n_index FROM {_reader(path)} GROUP BY ALL").df()
        bad = sorted(set(counts["noise"].astype(str)) - set(NOISE_TYPES))
        if bad:
            raise NoisyFRError(f"{path}: unknown noise type(s) {', '.join(bad)}")
        codes = " ".join(f"WHEN {quote(n)} THEN {i}" for n, i in NOISE_CODE.items())
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT CAST(\"index\" AS BIGINT) AS manifest_index, "
                    f"CAST(label AS BIGINT) AS manifest_label, "
                    f"CAST(CASE CAST(noise AS VARCHAR) {codes} END AS TINYINT) AS noise_code, "
                    f"CAST({orig} AS BIGINT) AS orig_label FROM {_reader(path)}")
        dup = con.sql(f"SELECT count(*) - count(DISTINCT manifest_index) FROM {name}").fetchall()[0][0]
    except duckdb.Error as exc:
        raise NoisyFRError(f"{path}: cannot read manifest ({first_sentence(exc)})") from None
    if dup:
        raise NoisyFRError(f"{path}: duplicate index values")
    return counts[["noise", "n"]]


def run_source(files: list[Path], present: set[str], manifest: str | None = None) -> str:
    """SQL of one run's angle relation: its logs ``files`` (union by name; ``present`` = the
    columns any of them has) left-joined on ``sample_index`` with the manifest table ``manifest``
    (made by :func:`manifest_table`; None: every sample clean).

    Columns: the trainer's :data:`~noisyfr.train.angles.COLUMNS`, ``noise`` (the manifest's type)
    and ``noise_code`` (its index in NOISE_TYPES), ``orig_label`` (the true label; the given one
    without a manifest), ``is_noisy``, and ``manifest_index`` / ``manifest_label`` (NULL where
    the sample is not in the manifest: :func:`aggregate` checks them)."""
    cols = ", ".join(_angle_select(present))
    scan = f"read_parquet({_scan_list(files)}, union_by_name=true)"
    if manifest is None:
        inner = (f"SELECT {cols}, CAST(0 AS TINYINT) AS noise_code, a.label AS orig_label, "
                 f"a.sample_index AS manifest_index, a.label AS manifest_label FROM {scan} a")
    else:
        inner = (f"SELECT {cols}, coalesce(m.noise_code, 0) AS noise_code, "
                 f"coalesce(m.orig_label, a.label) AS orig_label, m.manifest_index, m.manifest_label "
                 f"FROM {scan} a LEFT JOIN {manifest} m ON a.sample_index = m.manifest_index")
    return f"SELECT *, {_NOISE_CASE} AS noise, noise_code <> 0 AS is_noisy FROM ({inner})"


def frame_source(con, df: pd.DataFrame, name: str = "long_angles") -> str:
    """Register a long angle table (:func:`noisyfr.analysis.load.long_angles` columns) and return
    SQL that reads it like :func:`run_source` does a run."""
    df = df.copy()
    defaults = {"sample_index": lambda: np.arange(len(df)), "epoch": lambda: 1, "label": lambda: 0,
                "theta_nearest": lambda: np.nan, "nearest_label": lambda: -1, "theta_orig": lambda: np.nan,
                "weight": lambda: np.nan}
    for c, make in defaults.items():
        if c not in df.columns:
            df[c] = make()
    if "noise" not in df.columns:
        df["noise"] = np.where(df["is_noisy"], "closed", "clean") if "is_noisy" in df.columns else "clean"
    df["noise"] = df["noise"].astype(str)
    df["noise_code"] = df["noise"].map(NOISE_CODE).astype("int8")
    if "orig_label" not in df.columns:
        df["orig_label"] = df["label"]
    for c in FILL:
        if c not in df.columns:
            df[c] = {"label_used": df["label"], "theta_dominant": df["theta_y"],
                     "weight_theta": df["weight"] * np.sin(df["theta_y"].astype(float))}.get(c, np.nan)
    if "theta_used" not in df.columns:
        df["theta_used"] = np.where(df["label_used"] == df["label"], df["theta_y"], np.nan)
    for c in WEIGHT_COLUMNS:
        w = df[c].to_numpy(dtype=float)
        if np.isinf(w).any():
            raise NoisyFRError(f"{name}: column {c} has infinite values")
        if (w < 0).any():
            raise NoisyFRError(f"{name}: negative {c} (expected a gradient magnitude)")
    con.register(name, df)
    floats = {c: f"nullif(CAST({c} AS DOUBLE), 'NaN'::DOUBLE) AS {c}" for c in NAN_AS_NULL}
    keep = [floats.get(c, c) for c in df.columns if c not in ("is_noisy", "manifest_index", "manifest_label")]
    return (f"SELECT {', '.join(keep)}, noise <> 'clean' AS is_noisy, sample_index AS manifest_index, "
            f"label AS manifest_label FROM {name}")


@dataclass
class Parts:
    """One pass's aggregates (keys = the grouping keys before ``epoch``).

    ``cells``: per keys, epoch, noise, ``own`` (theta_y <= the fixed threshold) and ``other``
    (theta_nearest > it): counts and sums (see :func:`aggregate`). ``hist``: per keys, epoch,
    noise and fine theta_y bin ``yb``: ``n`` and ``wsum`` (the chosen weight). ``wbins``: per
    keys, epoch, noise and coarse bin ``ub`` of the angle at the label trained on: ``n``,
    ``wsum``, ``wcount``. ``dominant``: the fine histogram of theta_dominant (None when it equals
    theta_y everywhere: use ``hist``)."""

    keys: list[str]
    cells: pd.DataFrame
    hist: pd.DataFrame
    wbins: pd.DataFrame
    dominant: pd.DataFrame | None
    weight: str
    region_deg: float
    bins: int
    first_unknown: int | None = None
    first_mislabelled: int | None = None
    #: every row of the fine bins that hold a needed order statistic (keys, epoch, yb, theta_y,
    #: noise, w): what makes medians and quantile thresholds exact
    rows: pd.DataFrame | None = None
    #: theta_y of at most :data:`SAMPLE_ROWS` samples per epoch, by sample_index (keys, epoch,
    #: theta_y): what the Gaussian-mixture reference is fitted to
    sample: pd.DataFrame | None = None
    quantile: float = 0.9

    def with_keys(self, values: dict) -> Parts:
        """The same aggregates with constant key columns (e.g. a run's name, loss, condition)
        put first, before the existing keys."""
        def put(df):
            if df is None:
                return None
            # scalars broadcast over the index: the dtypes a list of len(df) values infers, faster
            const = pd.DataFrame(values if len(df) else {k: [] for k in values}, index=df.index)
            return pd.concat([const, df], axis=1)
        return Parts(list(values) + self.keys, put(self.cells), put(self.hist), put(self.wbins),
                     put(self.dominant), self.weight, self.region_deg, self.bins,
                     self.first_unknown, self.first_mislabelled, put(self.rows), put(self.sample),
                     self.quantile)


def _bin(expr: str, scale: str, nbins: int, finite: bool = False) -> str:
    """SQL of the bin of ``expr``: ``floor(expr * scale)`` clipped to the bins, -1 for a
    non-finite value. With ``finite`` (the values were checked finite and in range) it is left
    unclipped, one bin beyond either end at most, for speed: :func:`clip_bins` clips it."""
    if finite:  # TRY_CAST: a NaN that slipped through is NULL here, and check_theta names it
        return f"TRY_CAST(floor({expr} * {scale}) AS INTEGER)"
    clipped = f"least(greatest(floor({expr} * {scale}), 0), {nbins - 1})"
    return f"CASE WHEN isfinite({expr}) THEN {clipped} ELSE -1 END::INTEGER"


def clip_bins(values: pd.Series, nbins: int) -> np.ndarray:
    """Bins of an unclipped :func:`_bin` clipped to ``0 .. nbins - 1``."""
    return np.clip(values.to_numpy(dtype=np.int64), 0, nbins - 1)


def aggregate(con, source: str, keys: list[str] | None = None, weight: str = "grad_norm",
              region_deg: float = 60.0, bins: int = 36, quantile: float = 0.9,
              raw: str | None = None, manifest: str | None = None, where: str = "angle log",
              sample_by_key: bool = False) -> Parts:
    """Stream ``source`` (SQL of an angle relation) into :class:`Parts`: one scan for the cells,
    one for both histograms, then one narrow scan for the rows of the few fine bins that hold the
    medians and the ``quantile`` threshold (:func:`order_bins`) and a fixed sample of theta_y
    per epoch for the mixture (:data:`SAMPLE_ROWS`). Another, for theta_dominant, runs only where
    it differs from theta_y.

    ``keys`` are grouping columns of ``source`` before ``epoch`` (``[]`` for one run). ``raw``,
    where given, is the same rows without the manifest and ``manifest`` the manifest's table
    (:func:`manifest_table`): the narrow scan then reads the logs alone and joins only the rows
    it keeps. ``where`` names the input in errors. The cells carry the input checks: the range of
    theta_y, the rows whose sample is missing from the manifest and those it labels differently
    (:func:`check_parts`; the weights' ranges are checked from the files' statistics,
    :func:`noisyfr.analysis.load.angle_files`). With ``sample_by_key`` the mixture's sample
    takes every k-th sample index with k from each key's own largest epoch (as a pass over that
    key's rows alone would: :mod:`noisyfr.analysis.scan`), else from the largest of all."""
    keys = list(keys or [])
    k = "".join(f"{c}, " for c in keys)
    t = math.radians(region_deg)
    used = "coalesce(theta_used, theta_y)"
    fine = repr(FINE_BINS / math.pi)
    sel = (f"SELECT {k}epoch, sample_index, noise_code, theta_y, theta_nearest, nearest_label, label, "
           f"label_used, orig_label, {weight} AS w, unit_pull AS up, theta_dominant, manifest_index, "
           f"manifest_label, theta_y <= {t!r} AS own, theta_nearest > {t!r} AS other, "
           f"{_bin('theta_y', fine, FINE_BINS, finite=True)} AS yb, "
           f"{_bin(f'degrees({used})', repr(bins / 180.0), bins, finite=True)} AS ub FROM ({source})")
    pred_given = "(NOT theta_y > theta_nearest OR nearest_label = label)"
    pred_orig = ("((NOT theta_y > theta_nearest AND label = orig_label) OR "
                 "(theta_y > theta_nearest AND nearest_label = orig_label))")
    pair = "(isfinite(theta_nearest) AND isfinite(theta_y))"
    cells_sql = f"""
        SELECT {k}epoch, noise_code, own, other, count(*) AS n,
          sum({pred_given}::INTEGER) AS pred_given, sum({pred_orig}::INTEGER) AS pred_orig,
          sum(theta_y) AS theta_y_sum,
          sum(CASE WHEN isfinite(theta_nearest) THEN theta_nearest END) AS theta_nearest_sum,
          sum(isfinite(theta_nearest)::INTEGER) AS n_nearest,
          sum(w) AS wsum, count(w) AS wcount, sum(up) AS upsum,
          sum((label_used <> label)::INTEGER) AS n_corrected,
          sum(({pair} AND theta_nearest < theta_y)::INTEGER) AS n_disagree,
          sum({pair}::INTEGER) AS n_pair,
          sum((theta_dominant IS DISTINCT FROM theta_y)::INTEGER) AS n_dominant_differs,
          max(label) AS max_label, min(theta_y) AS min_theta, max(theta_y) AS max_theta,
          sum((theta_y IS NULL)::INTEGER) AS n_null_theta,
          count(manifest_index) AS n_in_manifest,
          sum((manifest_label <> label)::INTEGER) AS n_mislabelled
        FROM sel GROUP BY ALL"""
    # ub is theta_y's bin but for corrected labels: grouping by both costs about one grouping
    hist_sql = (f"SELECT {k}epoch, noise_code, yb, ub, count(*) AS n, sum(w) AS wsum, count(w) AS wcount "
                f"FROM sel GROUP BY ALL")
    names = np.array(NOISE_TYPES, dtype=object)
    con.execute(f"CREATE OR REPLACE TEMP VIEW sel AS {sel}")
    try:
        cells = con.sql(cells_sql).df()
        check_theta(cells, where)  # the bins below assume finite angles
        both = con.sql(hist_sql).df()
        both["noise"] = names[both.pop("noise_code").to_numpy(dtype=np.int64)]
        both["yb"], both["ub"] = clip_bins(both["yb"], FINE_BINS), clip_bins(both["ub"], bins)
        dominant = None
        if len(cells) and int(cells["n_dominant_differs"].sum()) > 0:
            dominant = con.sql(f"SELECT {k}epoch, noise_code, {_bin('theta_dominant', fine, FINE_BINS)} AS yb, "
                               f"count(*) AS n FROM sel GROUP BY ALL").df()
        hist = both.groupby(keys + ["epoch", "noise", "yb"], sort=True, dropna=False)[
            ["n", "wsum", "wcount"]].sum(min_count=1).reset_index()
        hist["n"] = hist["n"].astype(np.int64)
        n_epoch = cells.groupby(keys + ["epoch"], dropna=False)["n"].sum()
        take = int(n_epoch.max()) if len(n_epoch) else 0
        if sample_by_key and keys and len(n_epoch):
            take = n_epoch.groupby(level=keys, dropna=False).max().rename("take").reset_index()
        rows, sample = _narrow(con, k, keys, order_bins(hist, keys, quantile), take, weight, raw, manifest)
        first = {}
        if len(cells) and (cells["n_in_manifest"].sum() < cells["n"].sum() or cells["n_mislabelled"].sum()):
            first = con.sql("SELECT min(sample_index) FILTER (WHERE manifest_index IS NULL) AS unknown, "
                            "min(sample_index) FILTER (WHERE manifest_label <> label) AS mislabelled "
                            "FROM sel").df().iloc[0].to_dict()
    finally:
        con.execute("DROP VIEW IF EXISTS sel")
    wbins = both.groupby(keys + ["epoch", "noise", "ub"], sort=True, dropna=False)[
        ["n", "wsum", "wcount"]].sum(min_count=1).reset_index()
    wbins["ub"] = wbins["ub"].astype(np.int64)
    wbins["n"] = wbins["n"].astype(np.int64)
    for df in [cells] + ([dominant] if dominant is not None else []):
        df.insert(len(keys) + 1, "noise", names[df.pop("noise_code").to_numpy(dtype=np.int64)])
    return Parts(keys, cells, hist, wbins, dominant, weight, region_deg, bins,
                 first.get("unknown"), first.get("mislabelled"), rows, sample, quantile)


def _narrow(con, k: str, keys: list[str], targets: pd.DataFrame, take, weight: str,
            raw: str | None, manifest: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One scan for the order-statistic rows (every row of the ``targets`` bins, with its noise
    type and weight) and the mixture's sample (theta_y of up to :data:`SAMPLE_ROWS` rows an
    epoch, by sample_index). ``take``: the largest epoch's samples, or a table of it per key
    (keys + ``take``)."""
    names = np.array(NOISE_TYPES, dtype=object)
    fine = repr(FINE_BINS / math.pi)
    steps = None
    if isinstance(take, pd.DataFrame):  # a step per key: joined to the targets below
        steps = take.assign(step=np.maximum(1, -(-take["take"].to_numpy(dtype=np.int64) // SAMPLE_ROWS)))
        sampled = "(s.sample_index % st.step = 0)"
    else:
        step = max(1, math.ceil(take / SAMPLE_ROWS))
        sampled = "true" if step == 1 else f"sample_index % {step} = 0"
    if raw is not None and not keys:  # one run: the targets as a plain predicate on the logs
        yb = _bin("theta_y", fine, FINE_BINS, finite=True)
        # the unclipped bins: 0 takes the values just below 0, the last bin those at pi
        per_epoch = targets.groupby("epoch")["yb"].apply(lambda b: sorted(
            set(int(x) for x in b) | ({-1} if 0 in set(b) else set())
            | ({FINE_BINS} if FINE_BINS - 1 in set(b) else set())))
        target = " OR ".join(f"(epoch = {int(e)} AND {yb} IN ({', '.join(map(str, bs))}))"
                             for e, bs in per_epoch.items()) or "false"
        kept = (f"SELECT epoch, sample_index, theta_y, {weight} AS w, {yb} AS yb, ({target}) AS target, "
                f"{sampled} AS sampled FROM ({raw}) WHERE ({target}) OR {sampled}")
        if manifest is None:
            got = con.sql(f"SELECT *, 0 AS code FROM ({kept})").df()
        else:  # join the manifest to the kept rows only
            got = con.sql(f"SELECT f.*, coalesce(m.noise_code, 0) AS code FROM ({kept}) f "
                          f"LEFT JOIN {manifest} m ON f.sample_index = m.manifest_index").df()
    else:
        src = (f"SELECT {k}epoch, sample_index, theta_y, w, yb, noise_code AS code FROM sel" if raw is None else
               f"SELECT {k}epoch, sample_index, theta_y, {weight} AS w, "
               f"{_bin('theta_y', fine, FINE_BINS, finite=True)} AS yb, 0 AS code FROM ({raw})")
        con.register("order_targets", targets.assign(target=True))
        on = " AND ".join(f"s.{c} IS NOT DISTINCT FROM t.{c}" for c in keys + ["epoch", "yb"])
        join = ""
        if steps is not None:
            con.register("sample_steps", steps[keys + ["step"]])
            join = " JOIN sample_steps st ON " + " AND ".join(f"s.{c} IS NOT DISTINCT FROM st.{c}" for c in keys)
        try:
            got = con.sql(f"SELECT s.*, coalesce(t.target, false) AS target, {sampled} AS sampled "
                          f"FROM ({src}) s{join} LEFT JOIN order_targets t ON {on} "
                          f"WHERE t.target OR {sampled}").df()
        finally:
            con.unregister("order_targets")
            if steps is not None:
                con.unregister("sample_steps")
    rows = got[got["target"].astype(bool)]
    rows = pd.DataFrame({**{c: rows[c].to_numpy() for c in keys}, "epoch": rows["epoch"].to_numpy(),
                         "yb": clip_bins(rows["yb"], FINE_BINS),
                         "noise": names[rows["code"].to_numpy(dtype=np.int64)],
                         "theta_y": rows["theta_y"].to_numpy(), "w": rows["w"].to_numpy(dtype=float)})
    sample = got[got["sampled"].astype(bool)].sort_values(keys + ["epoch", "sample_index"], kind="stable")
    return rows, sample[keys + ["epoch", "theta_y"]].reset_index(drop=True)


def noise_order(names) -> list[str]:
    """Noise type names in the library's order."""
    names = set(names)
    return [n for n in NOISE_TYPES if n in names] + sorted(names - set(NOISE_TYPES))


def theta_histogram(parts: Parts, width_deg: float = 0.5) -> pd.DataFrame:
    """theta_y counts per keys, epoch, noise type and ``width_deg`` bin (``bin_left_deg``, ``n``)
    from the fine histogram: what the distribution figures draw."""
    h = parts.hist
    centre = (h["yb"].to_numpy(dtype=float) + 0.5) * FINE_DEG
    b = np.floor(centre / width_deg) * width_deg
    keys = parts.keys + ["epoch", "noise"]
    return (h.assign(bin_left_deg=b).groupby(keys + ["bin_left_deg"], sort=True, dropna=False)["n"]
            .sum().reset_index())


def angle_plane(con, source: str, width_deg: float = 1.0) -> pd.DataFrame:
    """Counts of (theta_y, theta_nearest) in ``width_deg`` x ``width_deg`` cells per epoch and
    noise type (columns ``epoch, noise, x_left_deg, y_left_deg, n``) of an angle relation: the
    2-D histogram the own-vs-nearest figure draws."""
    k = repr(1.0 / width_deg)
    df = con.sql(f"SELECT epoch, noise_code, {_bin('degrees(theta_y)', k, int(round(180 / width_deg)))} AS xb, "
                 f"{_bin('degrees(theta_nearest)', k, int(round(180 / width_deg)))} AS yb, count(*) AS n "
                 f"FROM ({source}) GROUP BY ALL").df()
    df = df[(df["xb"] >= 0) & (df["yb"] >= 0)]
    names = np.array(NOISE_TYPES, dtype=object)
    return pd.DataFrame({"epoch": df["epoch"].to_numpy(), "noise": names[df["noise_code"].to_numpy(dtype=int)],
                         "x_left_deg": df["xb"].to_numpy(dtype=float) * width_deg,
                         "y_left_deg": df["yb"].to_numpy(dtype=float) * width_deg, "n": df["n"].to_numpy()})


def rule_counts(con, source: str, rules: dict[str, str]) -> pd.DataFrame:
    """Per noise type: ``n`` and, per rule (name -> SQL condition on the angle columns), how many
    samples it flags (columns = rule names) in an angle relation: the counts a rule's precision
    and recall come from."""
    flags = ", ".join(f"sum(({cond})::INTEGER) AS {quote(name).replace(chr(39), chr(34))}"
                      for name, cond in rules.items())
    df = con.sql(f"SELECT noise_code, count(*) AS n, {flags} FROM ({source}) GROUP BY noise_code").df()
    df.insert(0, "noise", np.array(NOISE_TYPES, dtype=object)[df.pop("noise_code").to_numpy(dtype=np.int64)])
    return df
