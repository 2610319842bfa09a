"""Ray Data reads a sweep's angle logs and noise manifests as they are, and finds what DuckDB finds:
per run, epoch and noise type, the count and mean theta_y (the check of
benchmarks/spark_read_angles.py, with Ray Data instead of Spark).

Each run's manifest (from its ``config.yaml``) is read with Ray Data and broadcast through the
object store; the join ``sample_index = index`` happens in ``map_batches`` (pyarrow), then a partial
aggregate per batch is summed on the driver (Ray's own Dataset.join needs polars, not installed
here). The reference is :func:`noisyfr.analysis.views.open` (the ``angles`` view, DuckDB).

    PYTHONPATH=. .venv/bin/python benchmarks/ray_read_angles.py --size 3,5,100000 --dir /tmp/spark_sweep
    PYTHONPATH=. .venv/bin/python benchmarks/ray_read_angles.py --sweep SWEEP --address auto   # a cluster

Without ``--address`` a local Ray with ``--cpus`` CPUs is started (``address="local"``).
Exits 1 when Ray's numbers differ from DuckDB's. docs/cluster_analysis.md records a run.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

HTTP_FS = "fsspec.implementations.http"


def halt_http_fs_import():
    """Without aiohttp, ``import fsspec.implementations.http`` fails at once with
    ModuleNotFoundError (see tests/test_parquet_readers.py: Ray Data's threaded path resolution
    otherwise fails at random with a plain ImportError)."""
    import importlib.util
    import sys
    name = "fsspec.implementations.http"
    if importlib.util.find_spec("aiohttp") is None and name not in sys.modules:
        sys.modules[name] = None


def ray_counts(sweep: Path):
    """Ray Data's ``(rows, schema, [(run, epoch, noise, count, mean theta_y)])`` of ``sweep``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    import ray.data
    from spark_read_angles import _run_manifests

    pairs = _run_manifests(sweep)
    tables = {}
    for m in sorted({m for _, m in pairs}):
        t = pa.concat_tables(ray.get(ray.data.read_parquet(m).select_columns(["index", "noise"])
                                     .to_arrow_refs()))
        tables[m] = t.rename_columns(["sample_index", "noise"])
    noise_ref = ray.put({run: tables[m] for run, m in pairs})

    def partial(batch: pa.Table, ref) -> pa.Table:
        by_run = ray.get(ref)
        run = pc.struct_field(pc.extract_regex(batch["path"], r"/trials/(?P<run>[^/]+)/angles/"), "run")
        t = batch.select(["sample_index", "epoch", "theta_y"]).append_column("run", run)
        t = t.set_column(0, "sample_index", pc.cast(t["sample_index"], pa.int64()))
        out = []
        for name in pc.unique(t["run"]).to_pylist():
            part = t.filter(pc.equal(t["run"], name)).join(by_run[name], "sample_index", join_type="inner")
            part = part.append_column("theta64", pc.cast(part["theta_y"], pa.float64()))
            out.append(part.group_by(["run", "epoch", "noise"])
                       .aggregate([("theta64", "count"), ("theta64", "sum")]))
        return pa.concat_tables(out)

    files = sorted(glob.glob(str(sweep / "trials" / "*" / "angles" / "epoch_*.parquet")))
    ds = ray.data.read_parquet(files, include_paths=True)
    schema = [(f.name, str(f.type)) for f in ds.schema().base_schema]
    parts = pa.concat_tables(ray.get(ds.map_batches(partial, batch_format="pyarrow", fn_args=(noise_ref,))
                                     .to_arrow_refs()))
    agg = (parts.group_by(["run", "epoch", "noise"]).aggregate([("theta64_count", "sum"), ("theta64_sum", "sum")])
           .sort_by([("run", "ascending"), ("epoch", "ascending"), ("noise", "ascending")]))
    rows = [(r["run"], r["epoch"], r["noise"], r["theta64_count_sum"],
             r["theta64_sum_sum"] / r["theta64_count_sum"]) for r in agg.to_pylist()]
    return int(np.sum([r[3] for r in rows])), schema, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", help="an existing sweep directory (default: fabricate one)")
    ap.add_argument("--size", default="3,5,100000", help="trials,epochs,samples to fabricate")
    ap.add_argument("--dir", default="/tmp/spark_read_angles", help="where to fabricate")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args(argv)
    from noisyfr.tune.run import RAY_INIT, quiet_ray_env
    quiet_ray_env()
    import pyarrow.parquet as pq
    import ray
    import ray.data
    from spark_read_angles import _sweep, agreement, duckdb_counts

    sweep = _sweep(args)
    files = sorted(glob.glob(str(sweep / "trials" / "*" / "angles" / "epoch_*.parquet")))
    meta_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    size = sum(os.path.getsize(f) for f in files)
    print(f"sweep {sweep}: {len(files)} angle logs, {meta_rows:,} rows, {size / 1e6:.1f} MB")
    halt_http_fs_import()
    t0 = time.perf_counter()
    kw = {"address": args.address} if args.address else {"address": "local", "num_cpus": args.cpus}
    ray.init(**RAY_INIT, runtime_env={"worker_process_setup_hook": halt_http_fs_import}, **kw)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        total, schema, got = ray_counts(sweep)
        t_ray = time.perf_counter() - t1
        t1 = time.perf_counter()
        ray_counts(sweep)
        t_ray2 = time.perf_counter() - t1
    finally:
        ray.shutdown()
    t1 = time.perf_counter()
    duck_total, want = duckdb_counts(sweep)
    t_duck = time.perf_counter() - t1

    print(f"ray {ray.__version__}; {kw}; aiohttp {'present' if importlib.util.find_spec('aiohttp') else 'absent'}")
    ok, diff, lines = agreement("Ray", schema, got, want, total, meta_rows, duck_total)
    print("\n".join(lines))
    print(f"wall s: Ray start {t_start:.1f}; Ray read+join+aggregate {t_ray:.1f} (again: {t_ray2:.1f}); "
          f"DuckDB views.open + query {t_duck:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "sweep": str(sweep), "files": len(files), "rows": meta_rows, "bytes": size,
            "ray": ray.__version__, "init": {k: str(v) for k, v in kw.items()}, "ray_start_s": t_start,
            "ray_query_s": t_ray, "ray_query_again_s": t_ray2, "duckdb_s": t_duck, "groups": len(got),
            "max_abs_diff": diff, "ok": ok}, indent=1))
    print("OK: Ray Data and DuckDB agree" if ok else "MISMATCH between Ray Data and DuckDB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
