"""Training under injected label noise: angle logs vs the manifest, real ORL/LFW data, the CLI."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from noisyfr.cli import main as cli_main
from noisyfr.data import open_index
from noisyfr.noise import read_manifest
from noisyfr.train import load_config, train


def _config(out: Path, train_spec: str, **over) -> dict:
    cfg = {"data": {"train": train_spec, "image_size": 32},
           "model": {"backbone": "small_cnn", "embedding_dim": 32},
           "loss": {"name": "cosface", "s": 30.0, "m": 0.2},
           "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05},
           "seed": 0, "device": "cpu", "output_dir": str(out)}
    return load_config(cfg, list(over.items()))


def _joined(out: Path, epoch: int) -> pd.DataFrame:
    frame = pd.read_parquet(out / "angles" / f"epoch_{epoch}.parquet")
    manifest, _ = read_manifest(yaml.safe_load((out / "config.yaml").read_text())["data"]["manifest"])
    return frame.merge(manifest, left_on="sample_index", right_on="index", how="left",
                       suffixes=("", "_manifest"), validate="one_to_one")


def test_angle_logs_cover_every_sample_with_noise_flags(tmp_path):
    """Synthetic ids with 20 % closed + 10 % open-set noise (one held-out identity), injected by
    the trainer itself from ``data.noise``."""
    out = tmp_path / "noisy"
    reports = []
    cfg = _config(out, "synthetic:ids=5,per_id=8,size=32,seed=1",
                  **{"data.noise": {"closed": 0.2, "open": 0.1, "holdout_ids": 1, "seed": 0}})
    train(cfg, report=reports.append)
    manifest, meta = read_manifest(out / "manifest.parquet")
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["manifest"] == str(out / "manifest.parquet")
    counts = manifest["noise"].value_counts()
    assert counts.get("closed", 0) > 0 and counts.get("open", 0) > 0
    for epoch in (1, 2):
        j = _joined(out, epoch)
        assert len(j) == len(manifest) and j["sample_index"].tolist() == sorted(manifest["index"])
        np.testing.assert_array_equal(j["label"], j["label_manifest"])
        clean, closed, open_ = (j["noise"] == "clean"), (j["noise"] == "closed"), (j["noise"] == "open")
        np.testing.assert_array_equal(j.loc[clean, "theta_orig"], j.loc[clean, "theta_y"])
        assert j.loc[open_, "theta_orig"].isna().all()
        assert j.loc[closed, "theta_orig"].notna().all()
        assert (j.loc[closed, "theta_orig"] != j.loc[closed, "theta_y"]).all()
        assert (j["weight"] > 0).all() and (j["nearest_label"] != j["label"]).all()
        r = reports[epoch - 1]
        noisy = j["noise"] != "clean"
        assert r["theta_noisy_mean"] == pytest.approx(j.loc[noisy, "theta_y"].mean(), rel=1e-5)
        assert r["theta_clean_mean"] == pytest.approx(j.loc[~noisy, "theta_y"].mean(), rel=1e-5)
        from sklearn.metrics import roc_auc_score

        assert r["noisy_auc"] == pytest.approx(roc_auc_score(noisy, j["theta_y"]), abs=1e-9)


def test_orl_with_30_percent_manifest(orl_dir, tmp_path):
    from conftest import inject_file

    manifest_path = tmp_path / "orl_closed30.parquet"
    manifest, _ = inject_file(open_index(str(orl_dir)), manifest_path, closed=0.3, seed=0)
    assert (manifest["noise"] == "closed").mean() == pytest.approx(0.3)
    out = tmp_path / "orl"
    cfg = _config(out, str(orl_dir), **{"data.manifest": str(manifest_path), "data.max_samples": 48})
    result = train(cfg)
    assert result["epoch"] == 2 and math.isfinite(result["loss"])
    for epoch in (1, 2):
        j = _joined(out, epoch)
        assert len(j) == 48 and j["index"].notna().all()
        np.testing.assert_array_equal(j["label"], j["label_manifest"])
        clean = j["noise"] == "clean"
        np.testing.assert_array_equal(j.loc[clean, "theta_orig"], j.loc[clean, "theta_y"])
    assert (out / "checkpoints" / "last.pt").is_file()


def _small_pairs(lfw_pairs_file: Path, folder: Path, per_kind: int = 10) -> Path:
    """A 20-pair pairs.txt with the real LFW fold-1 images (linked, not copied)."""
    lines = lfw_pairs_file.read_text().splitlines()[1:]
    same = [ln for ln in lines if len(ln.split()) == 3][:per_kind]
    diff = [ln for ln in lines if len(ln.split()) == 4][:per_kind]
    folder.mkdir(parents=True)
    (folder / "images").symlink_to(lfw_pairs_file.parent / "images")
    (folder / "pairs.txt").write_text("\n".join([f"1\t{per_kind}", *same, *diff]) + "\n")
    return folder / "pairs.txt"


def test_cli_lfw_with_noise_and_val(lfw_train_dir, lfw_pairs_file, tmp_path, capsys):
    pairs = _small_pairs(lfw_pairs_file, tmp_path / "lfw_small")
    out = tmp_path / "lfw"
    config = tmp_path / "lfw.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(lfw_train_dir), "image_size": 32, "center_crop": 0.6,
                 "noise": {"closed": 0.3, "seed": 0}, "max_samples": 32, "val": [str(pairs)]},
        "model": {"backbone": "small_cnn", "embedding_dim": 32},
        "loss": {"name": "arcface", "s": 30.0, "m": 0.3},
        "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "eval": {"epochs": [2]}, "device": "cpu", "output_dir": str(out)}))
    assert cli_main(["train", str(config), "optim.lr=0.02"]) == 0
    assert "run directory" in capsys.readouterr().out
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    # lr of the last step of epoch 1 (step 1 of 4, cosine from the overridden 0.02)
    assert metrics["lr"].iloc[0] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert math.isnan(metrics["val_accuracy"].iloc[0])              # eval.epochs: [2]
    acc = metrics["val/lfw_small/accuracy"].iloc[1]
    assert 0.0 <= acc <= 1.0 and acc == metrics["val_accuracy"].iloc[1]
    assert metrics["best_val_accuracy"].iloc[1] == acc
    manifest, _ = read_manifest(out / "manifest.parquet")
    assert (manifest["noise"] == "closed").mean() == pytest.approx(0.3)
    assert len(pd.read_parquet(out / "angles" / "epoch_2.parquet")) == 32
    assert (out / "checkpoints" / "epoch_2.pt").is_file()
    # bad input through the CLI: exit status 2 and no run directory
    assert cli_main(["train", str(config), "data.noise.closd=0.3",
                     f"output_dir={tmp_path / 'never'}"]) == 2
    assert "config key 'data.noise.closd': unknown noise key (did you mean config key " \
        "'data.noise.closed'?)" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
