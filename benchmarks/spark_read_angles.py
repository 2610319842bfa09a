"""Spark reads a sweep's angle logs and noise manifests as they are (no conversion), and finds what
DuckDB finds: per run, epoch and noise type, the count and mean theta_y.

The run is taken from each row's file path (``input_file_name()``: ``trials/<run>/angles/``), its
manifest from the run's ``config.yaml`` (``data.manifest``), and the join is ``sample_index =
index`` within a run's own manifest. The reference is :func:`noisyfr.analysis.views.open` (the
``angles`` view, DuckDB). Spark runs in local mode (``local[N]``); pyspark is not a dependency of
noisyfr: install it anywhere and put it on PYTHONPATH, e.g.

    pip install --target /tmp/pyspark_site pyspark
    PYTHONPATH=.:/tmp/pyspark_site .venv/bin/python benchmarks/spark_read_angles.py \\
        --size 3,5,100000 --dir /tmp/spark_sweep

``--sweep DIR`` reads an existing sweep (or run) directory instead of fabricating one
(`fabricate_sweep` of tests/fabricate.py, closed-set noise 0.2, 1000 classes, seed 0).
Prints the versions, the timings and the largest difference; exits 1 when Spark's numbers differ
from DuckDB's, 2 when pyspark or java is missing. docs/cluster_analysis.md records a run.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The run of a row, from its file's path.
RUN_RE = r"/trials/([^/]+)/angles/epoch_[0-9]+\.parquet$"


def _die(msg: str) -> None:
    print(f"spark_read_angles: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _java_version() -> str:
    java = shutil.which("java")
    if java is None:
        _die("java not found on PATH (Spark needs a JVM: Java 17 or 21 for Spark 4)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True)
    return (out.stderr or out.stdout).splitlines()[0].strip()


def _sweep(args) -> Path:
    if args.sweep:
        return Path(args.sweep).resolve()
    from tests.fabricate import fabricate_sweep

    trials, epochs, samples = (int(x) for x in args.size.split(","))
    out = Path(args.dir) / f"sweep_{trials}x{epochs}x{samples}"
    if not (out / "results.parquet").exists():
        t = time.perf_counter()
        fabricate_sweep(out, trials=trials, epochs=epochs, samples=samples, classes=1000)
        print(f"fabricated {out} in {time.perf_counter() - t:.1f} s")
    return out.resolve()


def _run_manifests(sweep: Path) -> list[tuple[str, str]]:
    """``(run, manifest path)`` of every run under ``sweep/trials/`` from its config.yaml."""
    import yaml

    from noisyfr.analysis.load import resolve_manifest

    pairs = []
    for cfg in sorted(glob.glob(str(sweep / "trials" / "*" / "config.yaml"))):
        run_dir = Path(cfg).parent
        value = ((yaml.safe_load(Path(cfg).read_text()) or {}).get("data") or {}).get("manifest")
        if value:
            pairs.append((run_dir.name, str(resolve_manifest(str(value), run_dir).resolve())))
    return pairs


def spark_counts(spark, sweep: Path):
    """Spark's ``(rows, schema, [(run, epoch, noise, count, mean theta_y)])`` of ``sweep``."""
    from pyspark.sql import functions as F

    angles = (spark.read.parquet(str(sweep / "trials" / "*" / "angles" / "epoch_*.parquet"))
              .withColumn("run", F.regexp_extract(F.input_file_name(), RUN_RE, 1)))
    pairs = _run_manifests(sweep)
    runs = spark.createDataFrame(pairs, "run string, manifest string")
    # input_file_name() is a URI (file:///...); keep the path, as config.yaml names it
    manifests = (spark.read.parquet(*sorted({m for _, m in pairs}))
                 .select("index", "noise", F.regexp_replace(F.input_file_name(), "^file:(//)?", "")
                         .alias("manifest")))
    joined = (angles.join(runs, "run")
              .join(manifests, (F.col("sample_index") == F.col("index"))
                    & (runs["manifest"] == manifests["manifest"])))
    rows = (joined.groupBy("run", "epoch", "noise")
            .agg(F.count(F.lit(1)).alias("n"), F.avg("theta_y").alias("mean_theta_y"))
            .orderBy("run", "epoch", "noise").collect())
    return (angles.count(), [(f.name, f.dataType.simpleString()) for f in angles.schema],
            [(r["run"], r["epoch"], r["noise"], r["n"], r["mean_theta_y"]) for r in rows])


def duckdb_counts(sweep: Path):
    from noisyfr.analysis import views

    con = views.open(sweep)
    try:
        # the view names a run by its path under the sweep (trials/<run>); Spark by <run>
        rows = con.sql("SELECT regexp_extract(run, '[^/]+$') AS run, epoch, noise, count(*), "
                       "avg(theta_y) FROM angles GROUP BY ALL ORDER BY run, epoch, noise").fetchall()
        total = con.sql("SELECT count(*) FROM angles").fetchall()[0][0]
    finally:
        con.close()
    return total, rows


def agreement(engine: str, schema, got, want, total: int, meta_rows: int, duck_total: int):
    """``(ok, largest mean difference, printed lines)``: another engine's per run x epoch x noise
    counts and mean theta_y (``got``) against DuckDB's (``want``), and the row counts."""
    keys_ok = [g[:4] for g in got] == [tuple(w[:4]) for w in want]
    diff = max((abs(g[4] - w[4]) for g, w in zip(got, want)), default=float("nan"))
    ok = keys_ok and total == meta_rows == duck_total and diff <= 1e-6
    return ok, diff, [
        f"{engine}'s schema of the angle logs: " + ", ".join(f"{n} {t}" for n, t in schema),
        f"rows: {engine} {total:,}, Parquet metadata {meta_rows:,}, DuckDB {duck_total:,}",
        f"groups (run x epoch x noise): {engine} {len(got)}, DuckDB {len(want)}; keys and counts "
        f"{'equal' if keys_ok else 'DIFFER'}; largest |mean theta_y difference| {diff:.2e}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", help="an existing sweep directory (default: fabricate one)")
    ap.add_argument("--size", default="3,5,100000", help="trials,epochs,samples to fabricate")
    ap.add_argument("--dir", default="/tmp/spark_read_angles", help="where to fabricate")
    ap.add_argument("--cores", type=int, default=2, help="Spark local[N]")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args(argv)
    try:
        import pyspark
        from pyspark.sql import SparkSession
    except ImportError as exc:
        _die(f"pyspark is not installed ({exc}); it is not a noisyfr dependency: "
             "pip install --target /tmp/pyspark_site pyspark, then "
             "PYTHONPATH=.:/tmp/pyspark_site python benchmarks/spark_read_angles.py")
    java = _java_version()
    sweep = _sweep(args)
    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(sweep / "trials" / "*" / "angles" / "epoch_*.parquet")))
    meta_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    size = sum(os.path.getsize(f) for f in files)
    print(f"sweep {sweep}: {len(files)} angle logs, {meta_rows:,} rows, {size / 1e6:.1f} MB")

    t0 = time.perf_counter()
    spark = (SparkSession.builder.master(f"local[{args.cores}]").appName("noisyfr-angles")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
             .config("spark.sql.shuffle.partitions", str(2 * args.cores)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    t_start = time.perf_counter() - t0
    try:
        jvm = spark.sparkContext._jvm.System.getProperty("java.version")
        t1 = time.perf_counter()
        total, schema, got = spark_counts(spark, sweep)
        t_spark = time.perf_counter() - t1
        t1 = time.perf_counter()
        spark_counts(spark, sweep)
        t_spark2 = time.perf_counter() - t1
    finally:
        spark.stop()
    t1 = time.perf_counter()
    duck_total, want = duckdb_counts(sweep)
    t_duck = time.perf_counter() - t1

    print(f"pyspark {pyspark.__version__}; Spark local[{args.cores}]; {java}; JVM java.version {jvm}")
    ok, diff, lines = agreement("Spark", schema, got, want, total, meta_rows, duck_total)
    print("\n".join(lines))
    for g in got[:6]:
        print("  ", g)
    print(f"wall s: Spark session start {t_start:.1f}; Spark read+join+aggregate {t_spark:.1f} "
          f"(again, warm JVM: {t_spark2:.1f}); DuckDB views.open + query {t_duck:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "sweep": str(sweep), "files": len(files), "rows": meta_rows, "bytes": size,
            "pyspark": pyspark.__version__, "java": java, "jvm": jvm, "cores": args.cores,
            "spark_start_s": t_start, "spark_query_s": t_spark, "spark_query_again_s": t_spark2,
            "duckdb_s": t_duck, "groups": len(got), "max_abs_diff": diff, "ok": ok,
            "schema": schema}, indent=1))
    print("OK: Spark and DuckDB agree" if ok else "MISMATCH between Spark and DuckDB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
