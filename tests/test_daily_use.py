"""A researcher's daily use: live monitoring (TensorBoard event files, train.log, progress lines
with an ETA), arcface_torch habits (AdamW, batch size per device, set names beside the training
set) and their bad input."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from noisyfr.cli import main
from noisyfr.errors import NoisyFRError
from noisyfr.train import load_config, train

TINY = "synthetic:ids=4,per_id=8,size=32,seed=0"


def _cfg(out: Path, **over) -> dict:
    cfg = {"data": {"train": TINY, "image_size": 32, "noise": {"closed": 0.25, "seed": 0}},
           "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.5},
           "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
           "optim": {"epochs": 2, "batch_size": 8, "lr": 0.05},
           "track": {"log_every": 1}, "seed": 0, "device": "cpu", "output_dir": str(out)}
    return load_config(cfg, list(over.items()))


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_run_writes_tensorboard_curves_histograms_and_train_log(tmp_path, capsys):
    run = tmp_path / "run"
    result = train(_cfg(run))
    acc = _events(run)
    tags = acc.Tags()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, result["step"] + 1))  # every step (log_every 1)
    assert {"train/lr", "train/img_per_s", "epoch/loss", "health/clean_true_accuracy",
            "health/noisy_fit_given", "health/noisy_auc"} <= set(tags["scalars"])
    losses = [e.value for e in acc.Scalars("epoch/loss")]
    metrics = __import__("pandas").read_csv(run / "metrics.csv")
    assert losses == pytest.approx(metrics["loss"].tolist(), rel=1e-6)
    for name in ("clean", "noisy"):  # one theta_y histogram per epoch for each group
        hist = acc.Histograms(f"theta_y/{name}")
        assert len(hist) == 2 and all(0 <= h.histogram_value.min <= h.histogram_value.max <= 180 for h in hist)
    counts = [h.histogram_value.num for h in acc.Histograms("theta_y/noisy")]
    assert counts == [8.0, 8.0]  # 25 % of 32 samples are noisy
    log = (run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "ETA" in log and "elapsed" in log
    assert "ETA" in capsys.readouterr().out


def test_resumed_run_appends_to_the_event_files_without_duplicate_steps(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, **{"optim.epochs": 1}))
    train(_cfg(run, **{"optim.epochs": 2, "resume": True}))
    steps = [e.step for e in _events(run).Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_adamw_and_batch_size_per_device(tmp_path):
    cfg = _cfg(tmp_path / "a", **{"optim.name": "adamw", "optim.lr": 1e-3, "optim.batch_size": None,
                                   "optim.batch_size_per_device": 16})
    assert cfg["optim"]["batch_size"] is None and cfg["optim"]["batch_size_per_device"] == 16
    result = train(cfg)
    assert result["step"] == 2 * 2  # 32 samples / 16 per device (one process) x 2 epochs
    import torch

    state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    assert "exp_avg_sq" in next(iter(state["optimizer"]["state"].values()))  # Adam moments: AdamW ran
    assert math.isfinite(result["loss"])
    assert load_config({"data": {"train": TINY}})["optim"]["batch_size"] == 128  # neither given


def test_val_set_names_resolve_beside_the_training_set(tmp_path):
    from noisyfr.data import load_pairs
    from noisyfr.data.pairs import write_bin

    rec_dir = tmp_path / "faces"
    rec_dir.mkdir()
    write_bin(load_pairs("synthetic-pairs:ids=6,per_id=2,pairs=10,size=32,seed=0"), rec_dir / "lfw.bin")
    (rec_dir / "train.rec").write_bytes(b"")
    cfg = load_config({"data": {"train": str(rec_dir), "val": ["lfw", "synthetic-pairs:ids=4"]}})
    assert cfg["data"]["val"] == [str(rec_dir / "lfw.bin"), "synthetic-pairs:ids=4"]
    with pytest.raises(NoisyFRError, match=r"data\.val\[0\].*no agedb_30\.bin beside data\.train"):
        load_config({"data": {"train": str(rec_dir), "val": ["agedb_30"]}})


@pytest.mark.parametrize("overrides, needle", [
    (["optim.batch_size=64", "optim.batch_size_per_device=32"], "optim.batch_size.*optim.batch_size_per_device"),
    (["optim.name=adam"], "optim.name.*sgd, adamw"),
    (["data.val=[cplfw]"], r"data\.val\[0\].*cplfw"),
])
def test_bad_habits_exit_2_one_line_no_run_directory(tmp_path, capsys, overrides, needle):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{train: '{TINY}', image_size: 32}}\nmodel: {{backbone: small_cnn, embedding_dim: 8}}\n")
    out = tmp_path / "run"
    assert main(["train", str(config), *overrides, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(needle, err)
    assert not out.exists()


def test_resume_flag_needs_a_checkpoint(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{train: '{TINY}', image_size: 32}}\nmodel: {{backbone: small_cnn, embedding_dim: 8}}\n"
                      "optim: {epochs: 1, batch_size: 8}\ndevice: cpu\n")
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "no checkpoint" in err
    assert not out.exists()
    assert main(["train", str(config), "--out", str(out), "--device", "cpu"]) == 0
    assert main(["train", str(config), "--out", str(out), "--resume", "optim.epochs=2"]) == 0
    assert np.array_equal(__import__("pandas").read_csv(out / "metrics.csv")["epoch"], [1, 2])
