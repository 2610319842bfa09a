"""The write side of the angle logs at scale: the on-disk types (int32 indices and labels, float32
values) and row groups, ``track.angles_every`` (which epochs are written) and
``track.angles_fraction`` (a fixed seeded subset of the samples), with the health metrics still
computed over every sample, and older int64 logs still read by the analysis."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from noisyfr.errors import NoisyFRError
from noisyfr.train import load_config, train
from noisyfr.train.angles import (
    _FLOATS,
    ANGLE_SCHEMA,
    COLUMNS,
    DICTIONARY_COLUMNS,
    ROW_GROUP_ROWS,
    AngleTracker,
    is_logged_epoch,
    keep_samples,
    logged_epochs,
    logged_samples,
    rows_frame,
    write_angles,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "synthetic:ids=4,per_id=8,size=32,seed=0"   # 32 samples


def _cfg(out: Path, **over) -> dict:
    cfg = {"data": {"train": TINY, "image_size": 32, "noise": {"closed": 0.25, "seed": 0}},
           "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.5},
           "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
           "optim": {"epochs": 3, "batch_size": 8, "lr": 0.05},
           "seed": 4, "device": "cpu", "output_dir": str(out)}
    return load_config(cfg, list(over.items()))


SUBSET = {"track.angles_every": 2, "track.angles_fraction": 0.5}


def _fabricated(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Tracker arrays of ``n`` samples with realistic values (random angles and weights)."""
    rng = np.random.default_rng(seed)
    values = np.empty((n, len(_FLOATS)), np.float32)
    for i, name in enumerate(_FLOATS):
        values[:, i] = rng.uniform(0.2, 2.9, n) if name.startswith("theta") else rng.gamma(2.0, 3.0, n)
    values[:, _FLOATS.index("nearest_label")] = rng.integers(0, 10_000, n)
    return {"sample_index": rng.permutation(n), "label": rng.integers(0, 10_000, n),
            "label_used": rng.integers(0, 10_000, n), "values": values}


def _arrow_type(name: str):
    return pa.from_numpy_dtype(np.dtype(ANGLE_SCHEMA[name]))


# ----------------------------------------------------------------------------- types on disk
def test_the_schema_covers_every_column_int32_labels_float32_values():
    assert list(ANGLE_SCHEMA) == list(COLUMNS)
    ints = {"sample_index", "epoch", "label", "label_used", "nearest_label"}
    assert {c for c, t in ANGLE_SCHEMA.items() if t == "int32"} == ints
    assert {c for c, t in ANGLE_SCHEMA.items() if t != "int32"} == set(COLUMNS) - ints
    assert set(ANGLE_SCHEMA.values()) == {"int32", "float32"}


def test_written_log_has_the_schema_and_row_groups_of_at_most_131072_rows(tmp_path):
    n = 2 * ROW_GROUP_ROWS + 1000
    frame = rows_frame(_fabricated(n), epoch=7)
    assert {c: str(t) for c, t in frame.dtypes.items()} == ANGLE_SCHEMA
    path = write_angles(frame, tmp_path, 7)
    assert path == tmp_path / "angles" / "epoch_7.parquet"
    schema = pq.read_schema(path)
    assert schema.names == list(COLUMNS)
    for name in COLUMNS:
        assert schema.field(name).type == _arrow_type(name), name
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 1000]
    group = meta.row_group(0)
    for i, name in enumerate(COLUMNS):   # dictionaries only where values repeat
        dictionary = "RLE_DICTIONARY" in group.column(i).encodings
        assert dictionary == (name in DICTIONARY_COLUMNS), (name, group.column(i).encodings)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame)
    assert back["sample_index"].tolist() == list(range(n)) and (back["epoch"] == 7).all()


def test_tracker_arrays_and_rows_frame_are_int32_and_nearest_label_minus_one_without_another_class():
    tracker = AngleTracker()
    values = torch.tensor([[0.5, float("nan"), float("nan")] + [0.1] * (len(_FLOATS) - 3)] * 2)
    tracker.add(torch.tensor([3, 1]), torch.tensor([0, 0]), torch.tensor([0, 0]), values)
    tracker.add(torch.tensor([1]), torch.tensor([0]), torch.tensor([0]), values[:1] + 1)  # repeat
    arrays = tracker.arrays()
    assert [arrays[k].dtype for k in ("sample_index", "label", "label_used", "values")] == \
        [np.int32, np.int32, np.int32, np.float32]
    frame = rows_frame(arrays, epoch=2)
    assert {c: str(t) for c, t in frame.dtypes.items()} == ANGLE_SCHEMA
    assert frame["sample_index"].tolist() == [1, 3] and frame["nearest_label"].tolist() == [-1, -1]
    assert frame["theta_y"].tolist() == [0.5, 0.5]   # the first row of sample 1 kept
    empty = AngleTracker().arrays()
    assert {str(empty[k].dtype) for k in ("sample_index", "label", "label_used")} == {"int32"}
    assert {c: str(t) for c, t in rows_frame(empty, 1).dtypes.items()} == ANGLE_SCHEMA


def test_an_index_beyond_int32_is_refused_not_wrapped(tmp_path):
    arrays = _fabricated(3)
    arrays["sample_index"] = np.array([0, 1, 2**31], np.int64)
    with pytest.raises(NoisyFRError, match="sample_index: values outside int32"):
        rows_frame(arrays, 1)
    frame = rows_frame(_fabricated(3), 1).astype({"label": np.int64})
    frame.loc[0, "label"] = 2**31
    with pytest.raises(NoisyFRError, match="label: values outside int32"):
        write_angles(frame, tmp_path, 1)
    assert not (tmp_path / "angles" / "epoch_1.parquet").exists()


# ----------------------------------------------------------------------------- which epochs, which samples
@pytest.mark.parametrize("total, every, expected", [
    (7, 1, [1, 2, 3, 4, 5, 6, 7]),
    (7, 3, [3, 6, 7]),
    (6, 3, [3, 6]),
    (20, 5, [5, 10, 15, 20]),
    (4, 9, [4]),
    (1, 1, [1]),
])
def test_logged_epochs(total, every, expected):
    assert logged_epochs(total, every) == expected
    assert [e for e in range(1, total + 1) if is_logged_epoch(e, total, every)] == expected


@pytest.mark.parametrize("total, every", [(0, 1), (5, 0), (5, 1.5), (5, "x")])
def test_logged_epochs_refuses_bad_arguments(total, every):
    with pytest.raises(NoisyFRError):
        logged_epochs(total, every)


def test_logged_samples_a_fixed_seeded_subset_of_the_training_samples():
    rows = np.arange(5, 205, 2)                                        # 100 training samples
    pick = logged_samples(rows, 0.25, seed=3)
    assert pick.dtype == np.int64 and len(pick) == 25
    assert np.all(np.diff(pick) > 0) and np.isin(pick, rows).all()
    np.testing.assert_array_equal(pick, logged_samples(rows[::-1], 0.25, seed=3))   # order-free
    assert not np.array_equal(pick, logged_samples(rows, 0.25, seed=4))
    assert logged_samples(rows, 1.0, seed=3) is None
    assert len(logged_samples(rows, 1e-9, seed=3)) == 1                 # at least one sample
    assert len(logged_samples(np.arange(5), 0.5, seed=0)) == 3          # half up
    frame = rows_frame(_fabricated(300), 1)
    kept = keep_samples(frame, pick)
    assert kept["sample_index"].tolist() == [i for i in pick.tolist() if i < 300]
    assert keep_samples(frame, None) is frame


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three 3-epoch runs of one seed: every epoch and sample; every 2nd epoch and half the
    samples, twice (in two directories)."""
    root = tmp_path_factory.mktemp("logging")
    out = {"full": root / "full", "sub": root / "sub", "again": root / "again"}
    train(_cfg(out["full"]))
    train(_cfg(out["sub"], **SUBSET))
    train(_cfg(out["again"], **SUBSET))
    return out


def _logs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "angles").iterdir())


def test_every_nth_epoch_and_the_last_are_written_with_one_fixed_subset(runs):
    assert _logs(runs["full"]) == ["epoch_1.parquet", "epoch_2.parquet", "epoch_3.parquet"]
    assert _logs(runs["sub"]) == [f"epoch_{e}.parquet" for e in logged_epochs(3, 2)] == \
        ["epoch_2.parquet", "epoch_3.parquet"]
    expected = logged_samples(np.arange(32), 0.5, seed=4)
    assert len(expected) == 16
    for e in (2, 3):
        path = runs["sub"] / "angles" / f"epoch_{e}.parquet"
        for name in COLUMNS:
            assert pq.read_schema(path).field(name).type == _arrow_type(name)
        sub = pd.read_parquet(path)
        np.testing.assert_array_equal(sub["sample_index"], expected)   # the same samples each epoch
        full = pd.read_parquet(runs["full"] / "angles" / f"epoch_{e}.parquet")
        pd.testing.assert_frame_equal(sub, keep_samples(full, expected))  # the same training
    saved = yaml.safe_load((runs["sub"] / "config.yaml").read_text())["track"]
    assert saved["angles_every"] == 2 and saved["angles_fraction"] == 0.5
    assert yaml.safe_load((runs["full"] / "config.yaml").read_text())["track"]["angles_every"] == 1


def test_health_is_computed_over_every_sample_whatever_is_logged(runs):
    full, sub = (pd.read_csv(runs[k] / "metrics.csv") for k in ("full", "sub"))
    assert list(full["epoch"]) == list(sub["epoch"]) == [1, 2, 3]      # metrics every epoch
    same = [c for c in full.columns if c not in ("img_per_s", "epoch_time_s", "checkpoint")]
    assert {"clean_true_accuracy", "noisy_fit_given", "noisy_fit_true", "noisy_auc",
            "theta_clean_median", "theta_noisy_median", "theta_clean_mean"} <= set(same)
    pd.testing.assert_frame_equal(full[same], sub[same])


def test_same_seed_same_bytes_of_the_subset(runs):
    assert _logs(runs["again"]) == _logs(runs["sub"])
    for name in _logs(runs["sub"]):
        assert (runs["sub"] / "angles" / name).read_bytes() == (runs["again"] / "angles" / name).read_bytes()


def test_a_resumed_run_logs_the_same_subset_and_refuses_other_settings(runs, tmp_path):
    part = tmp_path / "part"

    class Crash(Exception):
        pass

    def crash_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Crash()

    with pytest.raises(Crash):
        train(_cfg(part, **SUBSET), report=crash_after_two)
    for key, value in (("track.angles_fraction", 0.25), ("track.angles_every", 1)):
        with pytest.raises(NoisyFRError, match=f"resume: checkpoint .* {key}="):
            train(_cfg(part, resume=True, **{**SUBSET, key: value}))
    train(_cfg(part, resume=True, **SUBSET))
    assert _logs(part) == _logs(runs["sub"])
    for name in _logs(part):
        assert (part / "angles" / name).read_bytes() == (runs["sub"] / "angles" / name).read_bytes()


def test_a_checkpoint_from_before_the_keys_resumes_with_their_defaults(runs, tmp_path):
    from noisyfr.io import load_checkpoint

    run = tmp_path / "old"
    train(_cfg(run, **{"optim.epochs": 1}))
    for ckpt in (run / "checkpoints").glob("*.pt"):
        state = load_checkpoint(ckpt)
        for key in ("angles_every", "angles_fraction"):
            del state["config"]["track"][key]
        torch.save(state, ckpt)
    train(_cfg(run, resume=True, **{"optim.epochs": 2}))
    assert _logs(run) == ["epoch_1.parquet", "epoch_2.parquet"]


def test_an_older_int64_log_is_read_as_the_int32_one(runs, tmp_path):
    from noisyfr.analysis.load import load_run

    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.yaml", "metrics.csv", "manifest.parquet", "manifest.parquet.json"):
        (old / name).write_bytes((runs["full"] / name).read_bytes())
    (old / "angles").mkdir()
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["data"]["manifest"] = str(old / "manifest.parquet")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    ints = [c for c, t in ANGLE_SCHEMA.items() if t == "int32"]
    for e in (1, 2, 3):   # as the writer before the int32 columns: pandas' default int64
        frame = pd.read_parquet(runs["full"] / "angles" / f"epoch_{e}.parquet")
        frame.astype({c: np.int64 for c in ints}).to_parquet(old / "angles" / f"epoch_{e}.parquet",
                                                             index=False)
    schema = pq.read_schema(old / "angles" / "epoch_1.parquet")
    assert all(schema.field(c).type == pa.int64() for c in ints)
    a, b = load_run(runs["full"]), load_run(old)
    assert str(a.angles["sample_index"].dtype) == "int32" and str(b.angles["sample_index"].dtype) == "int64"
    pd.testing.assert_frame_equal(a.angles, b.angles, check_dtype=False)
    pd.testing.assert_frame_equal(a.health, b.health, check_dtype=False)
    assert (a.condition, a.noise_rate) == (b.condition, b.noise_rate)
