"""Held-out health: the seeded stratified split, the per-identity cap, held-out identification,
the learned rule, and their bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import exit_status

from noisyfr.errors import NoisyFRError
from noisyfr.losses import MarginHead
from noisyfr.train import load_config, train
from noisyfr.train.data import split_identities
from noisyfr.train.heldout import learned_from, nearest_centre

TINY = "synthetic:ids=4,per_id=8,size=32,seed=0"   # 32 samples


def _cfg(out: Path, **over) -> dict:
    cfg = {"data": {"train": TINY, "image_size": 32, "holdout": 0.25},
           "model": {"backbone": "small_cnn", "embedding_dim": 32},
           "loss": {"name": "arcface", "s": 30.0, "m": 0.3},
           "optim": {"epochs": 2, "batch_size": 8, "lr": 0.05},
           "seed": 3, "device": "cpu", "output_dir": str(out)}
    return load_config(cfg, list(over.items()))


# ----------------------------------------------------------------------------- the split
def test_split_is_stratified_disjoint_complete_and_seeded():
    labels = np.repeat(np.arange(5), [4, 8, 10, 3, 20])
    train_rows, held = split_identities(labels, None, 0.25, seed=7)
    assert not set(train_rows) & set(held)
    assert sorted([*train_rows, *held]) == list(range(len(labels)))
    for ident, n in enumerate([4, 8, 10, 3, 20]):
        k = int(np.floor(0.25 * n + 0.5))
        assert (labels[held] == ident).sum() == k
    again = split_identities(labels, None, 0.25, seed=7)
    other = split_identities(labels, None, 0.25, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip((train_rows, held), again))
    assert not np.array_equal(held, other[1])


def test_cap_keeps_at_most_max_per_id_and_open_set_rows_train():
    labels = np.concatenate([np.repeat(np.arange(3), [5, 50, 12]), [-1, -1]])
    train_rows, held = split_identities(labels, 10, 0.2, seed=0)
    kept = np.concatenate([train_rows, held])
    counts = pd.Series(labels[kept]).value_counts()
    assert counts[0] == 5 and counts[1] == 10 and counts[2] == 10
    assert {len(labels) - 2, len(labels) - 1} <= set(train_rows)   # open set: always trained on
    assert -1 not in set(labels[held])


def test_split_that_leaves_an_identity_without_training_images_is_refused():
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(NoisyFRError, match=r"data.holdout.*'bob'.*no training image"):
        split_identities(labels, None, 0.75, seed=0, names=["ann", "bob"])


@pytest.mark.parametrize("key, value, match", [
    ("data.holdout", 1.0, "data.holdout"), ("data.holdout", -0.1, "data.holdout"),
    ("data.max_per_id", 0, "data.max_per_id"), ("health.learned_heldout_accuracy", 1.5,
                                                 "health.learned_heldout_accuracy")])
def test_bad_split_settings_name_their_key(tmp_path, key, value, match):
    with pytest.raises(NoisyFRError, match=match):
        _cfg(tmp_path / "run", **{key: value})


def test_cli_refuses_a_bad_holdout_with_one_line_and_writes_nothing(tmp_path, capsys):
    """``noisyfr train`` in this process (the command's own entry point, without a fresh
    interpreter's imports for each refusal)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"train": "synthetic:ids=2,per_id=2,size=32,seed=0",
                                            "image_size": 32},
                                   "model": {"backbone": "small_cnn", "embedding_dim": 8},
                                   "optim": {"epochs": 1, "batch_size": 2}, "device": "cpu"}))
    out = tmp_path / "run"
    for over in ("data.holdout=1", "data.holdout=0.75", "data.max_per_id=0"):
        capsys.readouterr()
        code = exit_status(["train", str(cfg), over, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "data." in lines[0] and over.split("=")[0] in lines[0], err
        assert not out.exists()


# ----------------------------------------------------------------------------- identification
def test_nearest_centre_uses_every_subcentre():
    torch.manual_seed(0)
    head = MarginHead(4, 3, loss="subcenter_arcface")
    K = head.K
    with torch.no_grad():
        head.weight.zero_()
        # class 2's *last* sub-centre points along e0; every other centre is far from it
        head.weight.view(3, K, 4)[:, :, 1] = 1.0
        head.weight.view(3, K, 4)[2, K - 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert int(nearest_centre(head, x)[0]) == 2


def test_learned_rule_prefers_held_out_evidence():
    health = {"learned_accuracy": 0.8, "learned_heldout_accuracy": 0.5}
    # memorised: the training pass looks fine, the unseen images do not
    assert learned_from({"clean_true_accuracy": 0.92, "heldout_accuracy": 0.36}, health) == (False, "heldout")
    assert learned_from({"clean_true_accuracy": 0.70, "heldout_accuracy": 0.62}, health) == (True, "heldout")
    assert learned_from({"clean_true_accuracy": 0.85, "heldout_accuracy": float("nan")}, health) == (True, "train")
    assert learned_from({"clean_true_accuracy": 0.60}, health) == (False, "train")


# ----------------------------------------------------------------------------- in training
def test_training_never_sees_held_out_images_and_records_their_accuracy(tmp_path):
    res = train(_cfg(tmp_path / "a"))
    m = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert m["heldout_accuracy"].between(0, 1).all() and len(m) == 2
    assert set(m["learned_on"]) == {"heldout"}
    assert res["learned"] == (m["heldout_accuracy"].iloc[-1] >= 0.5)
    labels = np.repeat(np.arange(4), 8)
    train_rows, held = split_identities(labels, None, 0.25, seed=3)
    logged = pd.read_parquet(tmp_path / "a" / "angles" / "epoch_2.parquet")["sample_index"]
    assert set(logged) == set(train_rows) and not set(logged) & set(held)
    # another loss with the same seed trains on the same images (paired runs)
    train(_cfg(tmp_path / "b", **{"loss.name": "cosface", "loss.m": 0.2}))
    other = pd.read_parquet(tmp_path / "b" / "angles" / "epoch_2.parquet")["sample_index"]
    assert set(other) == set(logged)


def test_held_out_accuracy_is_identification_of_unseen_images(tmp_path):
    """An independent recomputation from the checkpoint: embed the held-out images, nearest
    normalised centre, compare with the true identity."""
    from noisyfr.data import open_index
    from noisyfr.data.transforms import face_transform
    from noisyfr.io import load_checkpoint
    from noisyfr.models import create_backbone

    train(_cfg(tmp_path / "a", **{"optim.epochs": 1}))
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt", map_location="cpu")
    model = create_backbone("small_cnn", embedding_dim=32, image_size=32, dropout=0.0, width=1.0)
    model.load_state_dict(state["model"])
    model.eval()
    index = open_index(TINY)
    _, held = split_identities(np.asarray(index.labels), None, 0.25, seed=3)
    tf = face_transform(32, 1.0, train=False)
    x = torch.stack([tf(index.load_image(int(i))) for i in held])
    with torch.no_grad():
        f = model(x) + model(torch.flip(x, dims=[3]))
    f = torch.nn.functional.normalize(f, dim=1)
    w = torch.nn.functional.normalize(state["head"]["weight"], dim=1)
    acc = float((((f @ w.t()).argmax(1)).numpy() == np.asarray(index.labels)[held]).mean())
    got = pd.read_csv(tmp_path / "a" / "metrics.csv")["heldout_accuracy"].iloc[-1]
    assert got == pytest.approx(acc, abs=1e-9)


# ----------------------------------------------------------------------------- noise-rate estimate
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
def test_heldout_noise_rate_recovers_a_known_rate(rate):
    """A model of accuracy a on unseen images, labels flipped symmetrically at ``rate``: the
    estimate from (a, agreement with the given labels) is within sampling error of the rate."""
    from noisyfr.train.heldout import heldout_noise_rate

    rng = np.random.default_rng(1)
    n, C, a = 20000, 40, 0.66
    true = rng.integers(0, C, n)
    pred = np.where(rng.random(n) < a, true, (true + rng.integers(1, C, n)) % C)
    flip = rng.random(n) < rate
    given = np.where(flip, (true + rng.integers(1, C, n)) % C, true)
    est = heldout_noise_rate(np.mean(pred == true), np.mean(pred == given), C)
    assert abs(est - flip.mean()) < 0.02
    if rate == 0.0:
        assert est == 0.0


def test_heldout_noise_rate_is_undefined_without_held_out_evidence():
    from noisyfr.train.heldout import heldout_noise_rate

    assert np.isnan(heldout_noise_rate(float("nan"), 0.5, 10))
    assert np.isnan(heldout_noise_rate(0.1, 0.1, 10))      # at chance: nothing to read
    assert heldout_noise_rate(0.9, 0.0, 10) == 1.0         # clipped


def test_clean_training_agrees_with_given_labels_on_held_out_images(tmp_path):
    train(_cfg(tmp_path / "a", **{"optim.epochs": 1}))
    m = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert m["heldout_given_accuracy"].notna().all()
    assert (m["heldout_given_accuracy"] == m["heldout_accuracy"]).all()   # no noise: given = true
