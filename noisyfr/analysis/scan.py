"""Many runs' angle logs in one pass: the cost of the analysis grows with its rows, not its runs.

:func:`noisyfr.analysis.engine.aggregate` over one run's logs costs a few DuckDB queries whatever
the run's size: nothing for a paper-scale run of 500,000-row epochs, most of the time for a grid
of hundreds of runs of a few thousand samples each. Here the runs are cut into batches of whole
runs (:func:`batches`, in their order, at most :data:`BATCH_ROWS` angle rows and
:data:`BATCH_RUNS` runs each, one set of logged columns each) and a batch is one relation
(:func:`batch_source`): one ``read_parquet`` over every file of its runs, each row tagged with its
run (``run_id``) by its file name, joined on ``(manifest, sample_index)`` with one table holding
every manifest the batch needs (:func:`BatchManifests`). :func:`aggregate_batch` groups it by run
and epoch in the same SQL as one run's pass and splits the result into each run's
:class:`~noisyfr.analysis.engine.Parts`: the same numbers as reading the runs one at a time
(tests/test_scan.py). A run too large for a batch, a batch whose input has a problem (so that the
error names the run, as before) and a batch of one run go through the one-run path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from noisyfr.analysis import engine
from noisyfr.errors import NoisyFRError

#: Angle rows of a batch at most: its aggregates and the rows its narrow scan keeps stay small.
BATCH_ROWS = 4_000_000
#: Runs of a batch at most (the number of files one scan opens).
BATCH_RUNS = 64


def run_rows(run) -> int:
    """Angle rows of a run (:attr:`noisyfr.analysis.load.Run.rows`, from its files' footers)."""
    return int(sum(run.rows.values())) if run.rows else 0


def batches(runs, max_rows: int | None = None, max_runs: int | None = None) -> list[list]:
    """``runs`` cut, in order, into lists of consecutive runs with the same logged columns, at most
    ``max_rows`` angle rows and ``max_runs`` runs each (None: :data:`BATCH_ROWS`,
    :data:`BATCH_RUNS`); a run larger than ``max_rows`` (or whose row count is unknown) is a
    batch of its own."""
    max_rows = BATCH_ROWS if max_rows is None else max_rows
    max_runs = BATCH_RUNS if max_runs is None else max_runs
    out: list[list] = []
    rows = 0
    for r in runs:
        n = run_rows(r)
        big = n <= 0 or n > max_rows
        if (out and not big and len(out[-1]) < max_runs and rows + n <= max_rows
                and run_rows(out[-1][0]) > 0 and out[-1][0].columns == r.columns
                and run_rows(out[-1][0]) <= max_rows):
            out[-1].append(r)
            rows += n
        else:
            out.append([r])
            rows = n
    return out


class BatchManifests:
    """Every manifest the batches read, in one temporary table ``name`` (``mid`` = the manifest's
    number, then :func:`~noisyfr.analysis.engine.manifest_table`'s columns), each loaded and
    checked once."""

    def __init__(self, con, name: str = "batch_manifests"):
        self.con, self.name, self.ids, self.tables = con, name, {}, set()
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} (mid INTEGER, manifest_index BIGINT, "
                    "manifest_label BIGINT, noise_code TINYINT, orig_label BIGINT)")

    def id(self, path: Path | None) -> int | None:
        """The number of the manifest at ``path`` (loaded on first use); None for no manifest."""
        if path is None:
            return None
        if path not in self.ids:
            mid = len(self.ids)
            tmp = f"{self.name}_load"
            engine.manifest_table(self.con, path, tmp)
            self.con.execute(f"INSERT INTO {self.name} SELECT {mid}, manifest_index, manifest_label, "
                             f"noise_code, orig_label FROM {tmp}")
            self.con.execute(f"DROP TABLE {tmp}")
            self.ids[path] = mid
        return self.ids[path]

    def table(self, path: Path | None) -> str | None:
        """A table of the manifest at ``path`` alone, with the columns of
        :func:`~noisyfr.analysis.engine.manifest_table` (for
        :func:`~noisyfr.analysis.engine.run_source`: the one-run path joins it as before),
        copied once; None for no manifest."""
        mid = self.id(path)
        if mid is None:
            return None
        one = f"{self.name}_{mid}"
        if one not in self.tables:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {one} AS SELECT * EXCLUDE (mid) FROM {self.name} "
                             f"WHERE mid = {mid}")
            self.tables.add(one)
        return one


def batch_source(con, runs, files: list[list[Path]], manifests: BatchManifests,
                 name: str = "batch_files") -> str:
    """SQL of the angle relation of ``runs`` (``files[i]``: the logs read of ``runs[i]``, every
    run with the same logged columns) with the columns of
    :func:`~noisyfr.analysis.engine.run_source` and ``run_id`` (the run's position in ``runs``).
    Registers the table ``name`` (file -> run, manifest) on ``con``."""
    present = runs[0].columns
    if any(r.columns != present for r in runs):
        raise ValueError("batch_source: every run of a batch must log the same columns")
    table = pd.DataFrame([{"filename": str(f), "run_id": i, "mid": manifests.id(r.manifest_path)}
                          for i, (r, fs) in enumerate(zip(runs, files)) for f in fs])
    table["mid"] = table["mid"].astype("Int64")
    con.register(name, table)
    cols = ", ".join(engine._angle_select(present))
    scan = f"read_parquet({engine._scan_list([f for fs in files for f in fs])}, union_by_name=true, filename=true)"
    no_manifest = "f.mid IS NULL"
    inner = (f"SELECT f.run_id, {cols}, "
             f"CASE WHEN {no_manifest} THEN CAST(0 AS TINYINT) ELSE coalesce(m.noise_code, 0) END AS noise_code, "
             f"coalesce(m.orig_label, a.label) AS orig_label, "
             f"CASE WHEN {no_manifest} THEN a.sample_index ELSE m.manifest_index END AS manifest_index, "
             f"CASE WHEN {no_manifest} THEN a.label ELSE m.manifest_label END AS manifest_label "
             f"FROM {scan} a JOIN {name} f ON a.filename = f.filename "
             f"LEFT JOIN {manifests.name} m ON f.mid = m.mid AND a.sample_index = m.manifest_index")
    return f"SELECT *, {engine._NOISE_CASE} AS noise, noise_code <> 0 AS is_noisy FROM ({inner})"


def split_parts(parts: engine.Parts, n_runs: int, key: str = "run_id") -> list[engine.Parts]:
    """One :class:`~noisyfr.analysis.engine.Parts` per run of a batch's (grouped by ``key``, the
    first key), without ``key``: what the run's own pass gives."""
    keys = [k for k in parts.keys if k != key]

    def pieces(df):
        if df is None:
            return [None] * n_runs
        ids = df[key].to_numpy()
        order = np.argsort(ids, kind="stable")
        bounds = np.searchsorted(ids[order], np.arange(n_runs + 1))
        body = df.drop(columns=key)
        return [body.iloc[order[bounds[i]:bounds[i + 1]]].reset_index(drop=True) for i in range(n_runs)]

    split = {f: pieces(getattr(parts, f)) for f in ("cells", "hist", "wbins", "dominant", "rows", "sample")}
    out = []
    for i in range(n_runs):
        dominant = split["dominant"][i]
        if dominant is not None and parts.dominant is not None and not len(dominant):
            dominant = None  # this run's theta_dominant equals its theta_y everywhere
        if dominant is not None and len(split["cells"][i]) and \
                int(split["cells"][i]["n_dominant_differs"].sum()) == 0:
            dominant = None
        out.append(engine.Parts(keys, split["cells"][i], split["hist"][i], split["wbins"][i], dominant,
                                parts.weight, parts.region_deg, parts.bins, None, None,
                                split["rows"][i], split["sample"][i], parts.quantile))
    return out


def _problems(cells: pd.DataFrame) -> bool:
    """True when a batch's cells show a sample missing from its manifest or labelled otherwise."""
    return bool(len(cells)) and bool(cells["n_in_manifest"].sum() < cells["n"].sum()
                                     or cells["n_mislabelled"].sum())


def aggregate_batch(con, runs, manifests: BatchManifests, weight: str = "grad_norm",
                    region_deg: float = 60.0, bins: int = 36, quantile: float = 0.9) -> list | None:
    """Every run's :class:`~noisyfr.analysis.engine.Parts` over all its logs, from one pass over
    the batch (:func:`batch_source`), in the order of ``runs``; None when the batch's input has a
    problem (an unreadable file, an angle out of range, a sample not in its manifest): the caller
    then reads the runs one at a time, whose errors name the run."""
    import duckdb

    files = [[r.files[e] for e in sorted(r.files)] for r in runs]
    try:
        src = batch_source(con, runs, files, manifests)
        parts = engine.aggregate(con, src, ["run_id"], weight, region_deg, bins, quantile,
                                 where="angle logs", sample_by_key=True)
    except (duckdb.Error, NoisyFRError):
        return None
    finally:
        con.unregister("batch_files")
    if _problems(parts.cells):
        return None
    return split_parts(parts, len(runs))
