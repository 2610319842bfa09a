"""The fabricated benchmark sweeps of ``fabricate.fabricate_sweep`` (the trainer's
files and dtypes, realistic values, determinism, a report that sees every run learned) and
``benchmarks/bench_analysis.py`` end to end at a tiny size."""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fabricate import FABRICATED_LOSSES, fabricate_sweep

from noisyfr.analysis import write_report
from noisyfr.errors import NoisyFRError
from noisyfr.noise.manifest import read_manifest
from noisyfr.train import angles as angles_mod
from noisyfr.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS, SAMPLES, CLASSES = 2, 2, 500, 50


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return fabricate_sweep(tmp_path_factory.mktemp("fab") / "sweep", TRIALS, EPOCHS, SAMPLES, CLASSES,
                           noise=0.2, seed=3)


def test_layout_and_the_trainers_files(sweep):
    results = pd.read_parquet(sweep / "results.parquet")
    assert len(pd.read_csv(sweep / "results.csv")) == TRIALS
    assert list(results["loss.name"]) == list(FABRICATED_LOSSES[:TRIALS])
    assert (results["status"] == "completed").all() and results["learned"].all()
    # the trainer's dtypes: an angle log built by rows_frame from tracker-shaped arrays
    ref = angles_mod.rows_frame({"sample_index": np.arange(3, dtype=np.int64),
                                 "label": np.zeros(3, np.int64), "label_used": np.zeros(3, np.int64),
                                 "values": np.zeros((3, len(angles_mod._FLOATS)), np.float32)}, 1)
    for _, row in results.iterrows():
        run = Path(row["output_dir"])
        assert run.parent == sweep / "trials" and run.name == row["trial"]
        cfg = load_config(str(run / "config.yaml"))  # the resolved config reads back as a config
        assert cfg["loss"]["name"] == row["loss.name"] and cfg["optim"]["epochs"] == EPOCHS
        assert cfg["seed"] == row["seed"] and Path(cfg["data"]["manifest"]) == Path(row["manifest"])
        man, meta = read_manifest(row["manifest"])
        assert meta["num_classes"] == CLASSES and meta["samples"] == SAMPLES
        assert meta["requested"]["closed"] == 0.2 and meta["counts"]["closed"] == round(0.2 * SAMPLES)
        assert list(man.columns[:6]) == ["index", "path", "identity", "orig_label", "label", "noise"]
        assert sorted(p.name for p in (run / "angles").iterdir()) == [f"epoch_{e}.parquet"
                                                                      for e in range(1, EPOCHS + 1)]
        metrics = pd.read_csv(run / "metrics.csv")
        assert list(metrics["epoch"]) == list(range(1, EPOCHS + 1))
        for col in ("heldout_accuracy", "heldout_given_accuracy", "val_accuracy", "learned",
                    *angles_mod.HEALTH_COLUMNS):
            assert col in metrics.columns
        assert metrics["learned"].all() and (metrics["learned_on"] == "heldout").all()
        for e in range(1, EPOCHS + 1):
            a = pd.read_parquet(run / "angles" / f"epoch_{e}.parquet")
            assert list(a.columns) == list(angles_mod.COLUMNS)
            assert a.dtypes.to_dict() == ref.dtypes.to_dict()
            assert (a["epoch"] == e).all() and np.array_equal(a["sample_index"], np.arange(SAMPLES))
            assert np.array_equal(a["label"], man["label"]) and np.array_equal(a["label_used"], a["label"])


def test_values_are_realistic(sweep):
    man, _ = read_manifest(sweep / "manifests" / "closed0.2_seed3.parquet")
    closed = (man["noise"] == "closed").to_numpy()
    for run in sorted((sweep / "trials").iterdir()):
        last = pd.read_parquet(run / "angles" / f"epoch_{EPOCHS}.parquet")
        for col in ("theta_y", "theta_nearest", "theta_orig", "theta_dominant", "theta_used"):
            v = last[col].to_numpy(np.float64)
            assert np.isfinite(v).all() and v.min() >= 0 and v.max() <= math.pi, col
        for col in (*angles_mod.WEIGHT_COLUMNS, "feat_norm"):
            v = last[col].to_numpy(np.float64)
            assert np.isfinite(v).all() and v.min() >= 0, col
        deg = np.degrees(last["theta_y"].to_numpy(np.float64))
        assert 28 < np.median(deg[~closed]) < 42 and 80 < np.median(deg[closed]) < 90
        # closed-set noisy samples: nearest to their true identity, theta_orig is that angle
        assert np.array_equal(last["nearest_label"].to_numpy()[closed], man["orig_label"].to_numpy()[closed])
        assert np.array_equal(last["theta_orig"].to_numpy()[closed], last["theta_nearest"].to_numpy()[closed])
        assert (last["nearest_label"].to_numpy()[~closed] != last["label"].to_numpy()[~closed]).all()
        assert last["weight"][closed].median() > 100 * last["weight"][~closed].median()


def test_same_seed_same_bytes(sweep, tmp_path):
    again = tmp_path / "again"
    fabricate_sweep(again, TRIALS, EPOCHS, SAMPLES, CLASSES, noise=0.2, seed=3)
    first = _files(again)
    shutil.rmtree(again)
    fabricate_sweep(again, TRIALS, EPOCHS, SAMPLES, CLASSES, noise=0.2, seed=3)
    assert _files(again) == first
    # elsewhere: the same bytes up to the absolute paths that config.yaml and results.* record
    # (results.parquet's bytes also change with the paths' lengths)
    elsewhere = {k: v.replace(str(sweep).encode(), str(again).encode()) for k, v in _files(sweep).items()}
    assert elsewhere.keys() == first.keys()
    assert {k for k in first if elsewhere[k] != first[k]} <= {"results.parquet"}
    pd.testing.assert_frame_equal(
        pd.read_parquet(sweep / "results.parquet").replace(str(sweep), str(again), regex=True),
        pd.read_parquet(again / "results.parquet"))
    other = fabricate_sweep(tmp_path / "other", TRIALS, EPOCHS, SAMPLES, CLASSES, noise=0.2, seed=4)
    log = "trials/arcface_closed0.2_seed3/angles/epoch_1.parquet"
    assert (other / log.replace("seed3", "seed4")).read_bytes() != first[log]


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(NoisyFRError, match="trials"):
        fabricate_sweep(tmp_path / "x", 0, 1, 10, 2)
    with pytest.raises(NoisyFRError, match="samples"):
        fabricate_sweep(tmp_path / "x", 1, 1, 10, 20)  # fewer samples than classes
    with pytest.raises(NoisyFRError, match="noise"):
        fabricate_sweep(tmp_path / "x", 1, 1, 10, 2, noise=1.0)
    assert not (tmp_path / "x").exists()


def test_report_sees_every_run_learned(sweep, tmp_path):
    report = write_report(sweep, tmp_path / "report", figures=False)
    assert report.is_file() and f"**{TRIALS} of {TRIALS} runs learned**" in report.read_text()
    runs = pd.read_csv(tmp_path / "report" / "tables" / "runs.csv")
    assert len(runs) == TRIALS and runs["learned"].all() and (runs["learned_on"] == "heldout").all()
    assert (runs["condition"] == "closed=0.2").all() and (runs["n_samples"] == SAMPLES).all()


def test_benchmark_runs_end_to_end(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_analysis
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "bench.json"
    assert bench_analysis.main(["--small", "1,1,300", "--large", "2,1,300,30", "--classes", "30",
                                "--many", "3,2,200,20", "--no-figures", "--dir", str(tmp_path / "work"),
                                "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("size "))
    rows = lines[head + 1:head + 3]
    assert [r.split()[0] for r in rows] == ["small", "large"]
    assert "1 x 1 x 300" in rows[0] and "2 x 1 x 300" in rows[1]
    assert lines[head + 3].startswith("ratio large/small:")
    for key in ("wall", "rows/s", "peak RSS"):
        assert key in lines[head + 3]
    import json

    # the many-small-runs shape against one run of one epoch of the same samples
    second = [i for i, line in enumerate(lines) if line.startswith("size ")][1]
    many = lines[second:second + 4]
    assert [r.split()[0] for r in many[1:3]] == ["one", "many"]
    assert "1 x 1 x 200" in many[1] and "3 x 2 x 200" in many[2]
    assert many[3].startswith("per (run, epoch), many minus one:") and "over 5 extra (run, epoch)" in many[3]
    data = json.loads(out.read_text())
    assert [s["angle_rows"] for s in data["sizes"]] == [300, 600, 200, 1200]
    per = data["per_run_epoch"]
    one, big = data["sizes"][2], data["sizes"][3]
    assert per["pairs"] == 5
    assert per["wall_ms"] == pytest.approx(1e3 * (big["wall_s"] - one["wall_s"]) / 5)
    assert all(s["wall_s"] > 0 and s["peak_rss_bytes"] > 0 for s in data["sizes"])
    assert (tmp_path / "work" / "2x1x300_c30_report" / "report.md").is_file()


def test_benchmark_times_the_pieces(sweep, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_analysis
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    rows = bench_analysis.pieces(sweep)
    assert [r["piece"] for r in rows] == ["find and check runs", "DuckDB passes", "per-run tables",
                                          "mixture reference", "counterfactual weights"]
    assert all(r["pairs"] == TRIALS * EPOCHS and r["wall_s"] > 0 for r in rows)
    assert all(r["cpu_ms_per_pair"] == pytest.approx(1e3 * r["cpu_s"] / (TRIALS * EPOCHS)) for r in rows)
