"""The angle logs and manifests of a sweep are plain Parquet: Ray Data reads them without conversion
and finds what DuckDB finds; pyarrow.dataset (the reader Spark-compatible tools share) sees only
plain Parquet types. docs/cluster_analysis.md shows the same reads on a cluster."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
from conftest import ray_session

from noisyfr.train.angles import ANGLE_SCHEMA


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    from fabricate import fabricate_sweep

    return fabricate_sweep(tmp_path_factory.mktemp("readers") / "sweep", trials=2, epochs=2,
                           samples=300, classes=20)


def _angle_files(sweep: Path) -> list[str]:
    files = sorted(glob.glob(str(sweep / "trials" / "*" / "angles" / "epoch_*.parquet")))
    assert len(files) == 4, files  # 2 trials x 2 epochs
    return files


def _manifest(sweep: Path) -> str:
    # fabricate_sweep: the trials of one seed share one manifest (here both trials, seed 0)
    (manifest,) = glob.glob(str(sweep / "manifests" / "*.parquet"))
    return manifest


def _metadata_rows(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _duckdb(sql: str) -> list[tuple]:
    import duckdb

    con = duckdb.connect()
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def _list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


#: fsspec's HTTP filesystem module, which needs aiohttp (not a dependency of ray[tune,train]).
HTTP_FS = "fsspec.implementations.http"


@pytest.fixture(scope="module")
def ray_local():
    """A local one-CPU Ray for this module (conftest.ray_session).

    Without aiohttp, every worker (and this driver, while the module runs) first puts None in
    ``sys.modules[HTTP_FS]``, so that importing it fails at once and always with
    ModuleNotFoundError. Ray Data's path resolution (ray/data/datasource/path_util.py,
    ``_is_http_filesystem``) tries that import for every path, from several threads at once, and
    catches ModuleNotFoundError only; concurrent imports of a module whose import fails make
    CPython raise a plain ImportError ("cannot import name 'HTTPFileSystem'") in some threads, so
    read_parquet of several files failed at random here (3 runs of 5) without it."""
    pytest.importorskip("ray")
    import sys

    def halt_http_fs_import():  # a local function: pickled by value (workers cannot import tests/)
        import importlib.util
        import sys
        name = "fsspec.implementations.http"
        if importlib.util.find_spec("aiohttp") is None and name not in sys.modules:
            sys.modules[name] = None

    had = HTTP_FS in sys.modules
    halt_http_fs_import()
    try:
        with ray_session(num_cpus=1, runtime_env={"worker_process_setup_hook": halt_http_fs_import}) as ray:
            import ray.data

            ray.data.DataContext.get_current().enable_progress_bars = False
            yield ray
    finally:
        if not had and HTTP_FS in sys.modules and sys.modules[HTTP_FS] is None:
            del sys.modules[HTTP_FS]


@pytest.mark.slow
def test_ray_data_reads_the_angle_logs_as_duckdb_does(sweep, ray_local):
    import pyarrow as pa
    import ray.data
    from ray.data.aggregate import Count, Mean

    files = _angle_files(sweep)
    ds = ray.data.read_parquet(files).materialize()  # read once: the count and the aggregate reuse it
    assert ds.count() == _metadata_rows(files) == 2 * 2 * 300
    schema = ds.schema().base_schema
    assert isinstance(schema, pa.Schema)
    assert {f.name: f.type for f in schema} == {k: pa.from_numpy_dtype(np.dtype(v))
                                                for k, v in ANGLE_SCHEMA.items()}
    assert schema.names == list(ANGLE_SCHEMA)

    # per epoch: count and mean theta_y, Ray Data's groupby against DuckDB over the same files
    got = ds.groupby("epoch", num_partitions=1).aggregate(Count(), Mean("theta_y")).to_pandas()
    got = got.sort_values("epoch").reset_index(drop=True)
    want = _duckdb(f"SELECT epoch, count(*), avg(theta_y) FROM read_parquet({_list(files)}) "
                   "GROUP BY epoch ORDER BY epoch")
    assert got["epoch"].tolist() == [e for e, _, _ in want] == [1, 2]
    assert got["count()"].tolist() == [n for _, n, _ in want] == [600, 600]
    assert got["mean(theta_y)"].to_numpy() == pytest.approx([m for _, _, m in want], abs=1e-6, rel=0)


@pytest.mark.slow
def test_ray_data_joins_the_manifest_per_run(sweep, ray_local):
    """The manifest is read by Ray Data too; the join on ``sample_index = index`` (per run, the run
    named by the file path) gives DuckDB's per run, epoch and noise type count and mean theta_y.
    The manifest is small: it is broadcast to the batches (Ray's own Dataset.join needs polars)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    import ray.data

    files, manifest = _angle_files(sweep), _manifest(sweep)
    mds = ray.data.read_parquet(manifest)
    assert mds.count() == _metadata_rows([manifest]) == 300
    mtypes = {f.name: f.type for f in mds.schema().base_schema}
    assert {k: mtypes[k] for k in ("index", "label", "orig_label", "noise")} == {
        "index": pa.int64(), "label": pa.int64(), "orig_label": pa.int64(), "noise": pa.string()}
    noise_ref = ray.put(pa.concat_tables(ray.get(mds.select_columns(["index", "noise", "label"])
                                                 .to_arrow_refs())))

    def joined(batch: pa.Table, noise_ref) -> pa.Table:
        noise = ray.get(noise_ref)  # one copy per node, from the object store
        run = pc.struct_field(pc.extract_regex(batch["path"], r"/trials/(?P<run>[^/]+)/angles/"), "run")
        t = batch.select(["sample_index", "epoch", "label", "theta_y"]).append_column("run", run)
        t = t.set_column(0, "sample_index", pc.cast(t["sample_index"], pa.int64()))
        t = t.join(noise.rename_columns(["sample_index", "noise", "m_label"]), "sample_index",
                   join_type="inner")
        return t

    ds = ray.data.read_parquet(files, include_paths=True)
    rows = pa.concat_tables(ray.get(ds.map_batches(joined, batch_format="pyarrow",
                                                   fn_args=(noise_ref,)).to_arrow_refs()))
    assert rows.num_rows == 1200  # every sample of every log found its manifest row
    assert pc.all(pc.equal(rows["label"], pc.cast(rows["m_label"], pa.int32()))).as_py()
    got = (rows.group_by(["run", "epoch", "noise"]).aggregate([("theta_y", "count"), ("theta_y", "mean")])
           .sort_by([("run", "ascending"), ("epoch", "ascending"), ("noise", "ascending")]).to_pylist())

    want = _duckdb(
        "SELECT regexp_extract(a.filename, '/trials/([^/]+)/angles/', 1) AS run, a.epoch, m.noise, "
        "count(*), avg(a.theta_y) "
        f"FROM read_parquet({_list(files)}, filename=true) a "
        f"JOIN read_parquet('{manifest}') m ON a.sample_index = m.index "
        "GROUP BY ALL ORDER BY run, epoch, noise")
    assert len(want) == 2 * 2 * 2  # runs x epochs x {clean, closed}
    assert [(g["run"], g["epoch"], g["noise"], g["theta_y_count"]) for g in got] == [w[:4] for w in want]
    assert [g["theta_y_mean"] for g in got] == pytest.approx([w[4] for w in want], abs=1e-6, rel=0)
    assert {g["run"] for g in got} == {p.name for p in (sweep / "trials").iterdir()}
    # 0.2 closed-set noise over 300 samples: 60 closed per run and epoch
    assert [g["theta_y_count"] for g in got if g["noise"] == "closed"] == [60] * 4


#: Arrow types a plain Parquet reader (Spark, Hive, Trino, pandas, polars) maps one to one.
def _plain(t) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_boolean(t))


def test_pyarrow_dataset_sees_plain_parquet_types_only(sweep):
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    files, manifest = _angle_files(sweep), _manifest(sweep)
    angles = pads.dataset(files, format="parquet")
    assert angles.count_rows() == _metadata_rows(files)
    assert {f.name: f.type for f in angles.schema} == {k: pa.from_numpy_dtype(np.dtype(v))
                                                       for k, v in ANGLE_SCHEMA.items()}
    for schema in (angles.schema, pads.dataset(manifest, format="parquet").schema):
        for field in schema:
            assert _plain(field.type), (field.name, field.type)
            assert not isinstance(field.type, pa.ExtensionType), field
            assert not (field.metadata or {}), (field.name, field.metadata)
    # what a non-Arrow reader sees: the Parquet physical and logical types themselves
    for path in files + [manifest]:
        for col in pq.ParquetFile(path).schema:
            assert (col.physical_type, col.logical_type.type) in {
                ("INT32", "NONE"), ("INT64", "NONE"), ("FLOAT", "NONE"), ("DOUBLE", "NONE"),
                ("BOOLEAN", "NONE"), ("BYTE_ARRAY", "STRING")}, (path, col.name, col.physical_type,
                                                                 col.logical_type)


def test_spark_benchmark_says_when_pyspark_is_missing():
    """benchmarks/spark_read_angles.py: pyspark is not a dependency; without it, one clear line and
    exit status 2 (docs/cluster_analysis.md records a run with it)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("pyspark") is not None:
        pytest.skip("pyspark is installed here")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "spark_read_angles.py"
    out = subprocess.run([sys.executable, str(script), "--sweep", "/nonexistent"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert out.stderr.startswith("spark_read_angles: pyspark is not installed"), out.stderr
    assert "pip install --target" in out.stderr
