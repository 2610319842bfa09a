"""Trainer: schedules, angle/weight formulas, end-to-end runs, resume equivalence, guard rails."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from noisyfr.errors import NoisyFRError
from noisyfr.io import load_checkpoint
from noisyfr.train import load_config, train
from noisyfr.train.angles import COLUMNS, batch_rows
from noisyfr.train.checkpoint import REQUIRED_KEYS
from noisyfr.train.data import check_labels as _check_labels
from noisyfr.train.schedule import lr_factor, make_batches

TINY = "synthetic:ids=4,per_id=8,size=32,seed=0"   # 32 samples


def tiny_config(out: Path, **over) -> dict:
    cfg = {"data": {"train": TINY, "image_size": 32},
           "model": {"backbone": "small_cnn", "embedding_dim": 32},
           "loss": {"name": "arcface", "s": 30.0, "m": 0.3},
           "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05, "warmup_epochs": 0.5},
           "seed": 3, "device": "cpu", "output_dir": str(out)}
    return load_config(cfg, list(over.items()))


# ----------------------------------------------------------------------------- pure pieces
def _scheduler_lrs(sched_factory, total: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = sched_factory(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule, factory", [
    ("cosine", lambda o, total: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0.01)),
    ("poly", lambda o, total: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=total, power=2.0)),
    ("step", lambda o, total: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2 * 7, 3 * 7], gamma=0.1)),
])
def test_lr_schedule_matches_torch_schedulers(schedule, factory):
    spe, epochs = 7, 4
    cfg = load_config({"data": {"train": TINY, "image_size": 32}, "model": {"backbone": "small_cnn"},
                       "optim": {"lr": 0.1, "epochs": epochs, "schedule": schedule, "lr_steps": [2, 3],
                                 "min_lr": 0.01 if schedule == "cosine" else 0.0}})
    ours = [0.1 * lr_factor(s, cfg, spe) for s in range(spe * epochs)]
    ref = _scheduler_lrs(lambda o: factory(o, spe * epochs), spe * epochs)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_warmup_is_linear_then_schedule_starts_at_full_lr():
    cfg = load_config({"data": {"train": TINY, "image_size": 32}, "model": {"backbone": "small_cnn"},
                       "optim": {"epochs": 5, "warmup_epochs": 1, "schedule": "cosine"}})
    spe = 10
    f = [lr_factor(s, cfg, spe) for s in range(50)]
    np.testing.assert_allclose(f[:10], np.arange(1, 11) / 10)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))       # cosine decays monotonically


@pytest.mark.parametrize("n, b", [(48, 16), (49, 16), (50, 16), (1, 4), (7, 3)])
def test_make_batches_covers_every_index_without_singletons(n, b):
    batches = make_batches(list(range(n)), b)
    assert sorted(i for batch in batches for i in batch) == list(range(n))
    assert n == 1 or all(len(batch) >= 2 for batch in batches)
    assert all(len(batch) <= b + 1 for batch in batches)


def test_batch_angles_against_bruteforce():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(9, 5, generator=g), dim=1)
    centres = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    cos = feats @ centres.T
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2])
    orig = torch.tensor([0, 3, 2, -1, 4, 0, 0, 1, 5])
    got = batch_rows(cos, labels, labels, orig).numpy()
    f, c = feats.double().numpy(), centres.double().numpy()
    for i in range(9):
        ang = [math.acos(max(-1.0, min(1.0, float(f[i] @ c[k])))) for k in range(6)]
        y = int(labels[i])
        others = [k for k in range(6) if k != y]
        k_near = min(others, key=lambda k: ang[k])
        assert got[i, 0] == pytest.approx(ang[y], abs=1e-5)
        assert got[i, 1] == pytest.approx(ang[k_near], abs=1e-5)
        assert int(got[i, 2]) == k_near
        if int(orig[i]) < 0:
            assert math.isnan(got[i, 3])
        else:
            assert got[i, 3] == pytest.approx(ang[int(orig[i])], abs=1e-5)
    clean = (orig == labels).numpy()
    np.testing.assert_array_equal(got[clean, 3], got[clean, 0])
    np.testing.assert_array_equal(got[:, 4], got[:, 0])          # one centre: theta_dominant = theta_y
    assert np.isnan(got[:, 5:10]).all()   # no gradients or features given: no weights, no norms
    np.testing.assert_array_equal(got[:, 10], got[:, 0])         # no correction: theta_used = theta_y


def test_weight_is_per_sample_dL_dcos_y_arcface():
    from noisyfr.losses import MarginHead, build_loss

    torch.manual_seed(0)
    s, m = 16.0, 0.4
    head = MarginHead(8, 5, build_loss("arcface", s=s, m=m))
    feats = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    feats.requires_grad_(True)
    loss, logits, cos = head(feats, labels)
    cos.retain_grad()
    loss.backward()
    rows = batch_rows(cos, labels, labels, labels, grad_cos=cos.grad, grad_feat=feats.grad).numpy()
    w, w_theta, g_norm = rows[:, 5], rows[:, 6], rows[:, 7]
    # Reference 1: each sample alone through the head, its own gradients.
    for i in range(6):
        fi = feats.detach()[i:i + 1].clone().requires_grad_(True)
        li, _, ci = head(fi, labels[i:i + 1])
        ci.retain_grad()
        li.backward()
        assert w[i] == pytest.approx(abs(float(ci.grad[0, labels[i]])), rel=1e-4)
        assert g_norm[i] == pytest.approx(float(fi.grad.norm()), rel=1e-4)
    theta_y = rows[:, 0]
    np.testing.assert_allclose(w_theta, w * np.sin(theta_y), rtol=1e-5)
    # Reference 2: closed form |s (p_y - 1) sin(theta + m) / sin(theta)| (theta + m < pi here).
    with torch.no_grad():
        p = torch.softmax(logits, 1)[torch.arange(6), labels].double()
        theta = torch.arccos(cos[torch.arange(6), labels].double())
        assert float((theta + m).max()) < math.pi
        ref = (s * (1 - p) * torch.sin(theta + m) / torch.sin(theta)).numpy()
    np.testing.assert_allclose(w, ref, rtol=1e-4)


def test_weight_for_softmax_closed_form():
    """Softmax logits are |x||W_j|cos_j + b_j, so |dL_i/dcos_y| = (1 - p_y)|x_i||W_y|."""
    from noisyfr.losses import MarginHead, build_loss

    torch.manual_seed(1)
    head = MarginHead(8, 4, build_loss("softmax"))
    feats, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    loss, logits, cos = head(feats, labels)
    cos.retain_grad()
    loss.backward()
    w = batch_rows(cos, labels, labels, labels, grad_cos=cos.grad).numpy()[:, 5]
    p = torch.softmax(logits.detach(), 1)[torch.arange(5), labels]
    ref = (1 - p) * feats.norm(dim=1) * head.weight.detach().norm(dim=1)[labels]
    np.testing.assert_allclose(w, ref.numpy(), rtol=1e-5)


def test_label_outside_head_is_an_error():
    class Fake:
        labels = np.array([0, 1, 5, 2])

    with pytest.raises(NoisyFRError, match="sample 2 has label 5 outside the head's 5 classes"):
        _check_labels(Fake(), 5)
    _check_labels(Fake(), 6)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 2-epoch run, shared by the end-to-end and resume tests."""
    out = tmp_path_factory.mktemp("full") / "run"
    reports = []
    result = train(tiny_config(out), report=reports.append)
    return out, reports, result


def test_train_synthetic_end_to_end(full_run):
    out, reports, result = full_run
    assert [r["epoch"] for r in reports] == [1, 2]
    required = {"epoch", "step", "loss", "lr", "img_per_s", "val_accuracy", "noisy_auc",
                "theta_clean_mean", "theta_noisy_mean", "checkpoint"}
    assert required <= set(reports[-1])
    assert reports[-1]["step"] == 2 * 2                      # 32 samples / batch 16
    assert math.isnan(reports[-1]["val_accuracy"]) and math.isnan(reports[-1]["noisy_auc"])
    assert result["epoch"] == 2 and "best_val_accuracy" in result
    assert yaml.safe_load((out / "config.yaml").read_text())["output_dir"] == str(out)
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2] and np.isfinite(metrics["loss"]).all()
    for epoch in (1, 2):
        frame = pd.read_parquet(out / "angles" / f"epoch_{epoch}.parquet")
        assert list(frame.columns) == list(COLUMNS)
        assert list(frame["sample_index"]) == list(range(32))
        assert (frame["epoch"] == epoch).all()
        np.testing.assert_array_equal(frame["label"], np.repeat(np.arange(4), 8))
        assert frame[["theta_y", "theta_nearest", "weight", "lse_neg"]].notna().all().all()
        # lse_neg is the geometry the weight came from: the trained loss's pull recomputed from it
        from noisyfr.analysis.counterfactual import build, sample_weights

        section = yaml.safe_load((out / "config.yaml").read_text())["loss"]
        pull = sample_weights(build(section), frame["theta_used"], frame["lse_neg"])["pull"]
        np.testing.assert_allclose(pull, frame["weight"], rtol=2e-3, atol=1e-5)
        assert ((frame["theta_y"] >= 0) & (frame["theta_y"] <= math.pi)).all()
        assert (frame["nearest_label"] != frame["label"]).all()
        np.testing.assert_array_equal(frame["theta_orig"], frame["theta_y"])   # all clean
        assert reports[epoch - 1]["theta_clean_mean"] == pytest.approx(frame["theta_y"].mean(), rel=1e-5)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4 and (out / "checkpoints" / "epoch_1.pt").is_file()
    assert reports[0]["checkpoint"] == str(out / "checkpoints" / "epoch_1.pt")
    # The eval part rebuilds the backbone from the checkpoint.
    from noisyfr.eval import load_backbone

    model, _ = load_backbone(out / "checkpoints" / "last.pt")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


class _Crash(Exception):
    pass


def test_resume_equals_uninterrupted_run(full_run, tmp_path):
    full = full_run[0]

    def crash_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise _Crash()

    part = tmp_path / "part"
    with pytest.raises(_Crash):
        train(tiny_config(part), report=crash_after_first_epoch)
    assert not (part / "checkpoints" / "epoch_2.pt").exists()
    # Same seed: epoch 1 is reproduced byte for byte.
    assert (full / "angles" / "epoch_1.parquet").read_bytes() == \
        (part / "angles" / "epoch_1.parquet").read_bytes()
    with pytest.raises(NoisyFRError, match="resume: checkpoint .* loss"):
        train(tiny_config(part, resume=True, **{"loss.m": 0.2}))
    reports = []
    train(tiny_config(part, resume=True), report=reports.append)
    assert [r["epoch"] for r in reports] == [2]
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(part / "checkpoints" / "last.pt")
    for key in ("model", "head"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    pd.testing.assert_frame_equal(pd.read_parquet(full / "angles" / "epoch_2.parquet"),
                                  pd.read_parquet(part / "angles" / "epoch_2.parquet"))
    ma, mb = pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    np.testing.assert_array_equal(ma["lr"], mb["lr"])


def test_nonfinite_loss_stops_with_loss_epoch_and_step(tmp_path):
    out = tmp_path / "nan"
    cfg = tiny_config(out, **{"loss": {"name": "sphereface", "lambda_base": 0.0, "lambda_min": 0.0},
                              "optim.lr": 1e30, "optim.weight_decay": 0.0, "optim.warmup_epochs": 0})
    with pytest.raises(NoisyFRError, match=r"loss sphereface: non-finite loss \((nan|inf)\) at epoch 1 step \d+"):
        train(cfg)
    assert not (out / "checkpoints").exists() and not (out / "metrics.csv").exists()


def test_unsupported_image_size_fails_before_training(tmp_path):
    cfg = tiny_config(tmp_path / "x")
    cfg["data"]["image_size"] = 40
    with pytest.raises(NoisyFRError, match="data.image_size"):
        train(cfg)
    assert not (tmp_path / "x").exists()


def test_checkpoint_loading_refuses_bad_files(tmp_path):
    from noisyfr.train.checkpoint import prune_checkpoints, save_checkpoint

    with pytest.raises(NoisyFRError, match="no such file"):
        load_checkpoint(tmp_path / "none.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(NoisyFRError, match=f"checkpoint {corrupt}: not a readable checkpoint"):
        load_checkpoint(corrupt)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"config": {}, "obj": _Crash()}, unsafe)          # arbitrary object: refused
    with pytest.raises(NoisyFRError, match="not a readable checkpoint"):
        load_checkpoint(unsafe)
    partial = tmp_path / "partial.pt"
    torch.save({"config": {}, "model": {}}, partial)
    with pytest.raises(NoisyFRError, match="missing head"):
        load_checkpoint(partial, required=REQUIRED_KEYS)
    state = {"config": {}, "model": {"w": torch.ones(2)}, "head": {}, "optimizer": {},
             "scheduler": {}, "rng": {"torch": torch.get_rng_state()}, "step": 0}
    for epoch in (1, 2, 3):
        save_checkpoint({**state, "epoch": epoch}, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 3
    prune_checkpoints(tmp_path / "run", keep=2)
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert left == ["epoch_2.pt", "epoch_3.pt", "last.pt"]


def test_fresh_run_in_a_used_directory_leaves_no_stale_epoch_files(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, **{"optim.epochs": 2}))
    assert (out / "angles" / "epoch_2.parquet").is_file()
    with pytest.raises(NoisyFRError, match=r"already holds a run \(2 epochs done, loss arcface\)"):
        train(tiny_config(out, **{"optim.epochs": 1}))   # the Python API follows the CLI's rule
    train(tiny_config(out, overwrite=True, **{"optim.epochs": 1}))
    assert sorted(p.name for p in (out / "angles").iterdir()) == ["epoch_1.parquet"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_1.pt", "last.pt"]
    assert len(pd.read_csv(out / "metrics.csv")) == 1
