"""Partial FC in one process: the same loss and gradients as MarginHead at sample_rate 1 for every
loss it supports, the sampling rule, the seeded sharded initialisation, exact angle rows under
sampling, the losses and rates it refuses, and a short training run."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from noisyfr.errors import NoisyFRError
from noisyfr.losses import LOSSES, MarginHead, build_loss
from noisyfr.losses.partial_fc import PartialFCHead, init_centres, partial_fc_blocker
from noisyfr.train import load_config, train
from noisyfr.train.angles import batch_rows, sharded_batch_rows
from noisyfr.train.step import Stepper, clip_grad_norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BLOCKED = {"softmax", "boundaryface"}


def _pair(name: str, classes: int = 10, dim: int = 8, rate: float = 1.0):
    kw = {"K": 3} if name == "subcenter_arcface" else {}
    torch.manual_seed(0)
    full = MarginHead(dim, classes, build_loss(name, **kw)).double()
    part = PartialFCHead(dim, classes, build_loss(name, **kw), rate).double()
    with torch.no_grad():
        part.weight.copy_(full.weight)
    return full, part


@pytest.mark.parametrize("name", sorted(set(LOSSES) - BLOCKED))
def test_rate_one_equals_the_full_head(name):
    full, part = _pair(name)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # the second step sees the running state the first one left
        feats = (torch.randn(12, 8, generator=g, dtype=torch.float64) * 5).requires_grad_()
        feats2 = feats.detach().clone().requires_grad_()
        labels = torch.randint(0, 10, (12,), generator=g)
        l1, lg1, _ = full(feats, labels)
        l2, lg2, _ = part(feats2, labels)
        l1.backward()
        l2.backward()
        assert float(l2.detach()) == pytest.approx(float(l1.detach()), rel=1e-12)
        torch.testing.assert_close(feats2.grad, feats.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(part.weight.grad, full.weight.grad, rtol=1e-10, atol=1e-12)
        assert part.correct_count(lg2, labels) == full.correct_count(lg1, labels)
        full.weight.grad = part.weight.grad = None
    for key, value in full.loss.state_dict().items():  # running state (t, norm statistics...)
        torch.testing.assert_close(part.loss.state_dict()[key], value)
    if name == "subcenter_arcface":
        assert torch.equal(part.subcentre_counts, full.subcentre_counts)


def test_sampling_keeps_every_positive_and_draws_the_rest_per_epoch():
    head = PartialFCHead(4, 100, build_loss("arcface"), 0.1, seed=5)
    assert head.num_sample == 10
    labels = torch.tensor([3, 3, 17, 42, 99])
    own = torch.ones(5, dtype=torch.bool)
    draws = []
    for epoch in (1, 1, 2):
        head.set_epoch(epoch)
        index = head.sample(labels, own)
        assert index.tolist() == sorted(set(index.tolist())) and len(index) == 10
        assert {3, 17, 42, 99} <= set(index.tolist())
        draws.append(index.tolist())
    assert draws[0] == draws[1] and draws[0] != draws[2]   # seeded from (seed, epoch, rank)
    many = torch.arange(20)                                # more positives than num_sample
    assert head.sample(many, torch.ones(20, dtype=torch.bool)).tolist() == list(range(20))
    assert PartialFCHead(4, 100, build_loss("arcface"), 1.0).sample(labels, own) is None


def test_centre_init_does_not_depend_on_the_sharding():
    whole = init_centres(0, 5000, 2, 4, seed=3)            # spans two init blocks
    parts = [init_centres(s, n, 2, 4, seed=3) for s, n in ((0, 1667), (1667, 1667), (3334, 1666))]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(init_centres(0, 5000, 2, 4, seed=4), whole)
    assert float(whole.std()) == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("name, scan_classes", [("arcface", None), ("subcenter_arcface", None),
                                                ("subcenter_arcface", 3)])
def test_angle_rows_under_sampling_are_those_of_the_full_head(name, scan_classes, monkeypatch):
    """theta_y, theta_nearest, nearest_label, theta_orig, theta_dominant come from every class,
    not only the sampled ones (also when the nearest-class pass runs in blocks of 3 classes);
    weights are the sampled softmax's."""
    from noisyfr.losses import partial_fc

    full, part = _pair(name, classes=40, rate=0.25)
    if scan_classes:
        monkeypatch.setattr(partial_fc, "SCAN_BYTES", 4 * 6 * part.K * scan_classes)
        assert partial_fc.scan_block(6, part.K) == scan_classes
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(6, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    orig = torch.tensor([0, 7, -1, 30, 4, 39])
    _, _, cos_full = full(feats, labels)
    feats2 = feats.clone().requires_grad_()
    loss, _, cos = part(feats2, labels)
    cos.retain_grad()
    loss.backward()
    assert cos.shape[1] == 10 < 40                              # sampled
    got = sharded_batch_rows(part, orig, cos.grad, feats2.grad).numpy()
    stepper = Stepper(torch.nn.Linear(8, 8), full, torch.optim.SGD(full.parameters(), lr=0.0))
    theta_dom = stepper._theta_dominant(feats, labels)
    want = batch_rows(cos_full, labels, labels, orig, theta_dominant=theta_dom).numpy()
    np.testing.assert_allclose(got[:, :5], want[:, :5], rtol=1e-5, atol=1e-6)
    # weight: |dL/dcos_y| of the sampled loss times the batch, grad_norm: ||dL/df|| times it
    w = cos.grad[torch.arange(6), part.last.col].abs().numpy() * 6
    np.testing.assert_allclose(got[:, 5], w, rtol=1e-5)
    np.testing.assert_allclose(got[:, 7], feats2.grad.norm(dim=1).numpy() * 6, rtol=1e-5)


def test_losses_and_rates_partial_fc_refuses(tmp_path):
    for name in BLOCKED:
        assert partial_fc_blocker(build_loss(name))
        with pytest.raises(NoisyFRError, match=f"loss {name} cannot run under Partial FC"):
            PartialFCHead(4, 10, build_loss(name))
    base = {"data": {"train": "synthetic:ids=4,per_id=2,size=32", "image_size": 32},
            "model": {"backbone": "small_cnn"}, "device": "cpu"}
    for rate in (0, -0.1, 1.5, "half"):
        with pytest.raises(NoisyFRError, match="config key 'loss.sample_rate'"):
            load_config(base, [("loss.sample_rate", rate)])
    with pytest.raises(NoisyFRError, match="config key 'loss.sample_rate': Partial FC cannot "
                                           "train loss boundaryface: its label correction"):
        load_config(base, ["loss.name=boundaryface", "loss.sample_rate=0.5"])
    with pytest.raises(NoisyFRError, match="cannot be sharded over 4 ranks"):
        PartialFCHead(4, 3, build_loss("arcface"), world=4, rank=0)
    head = PartialFCHead(4, 10, build_loss("arcface"))
    with pytest.raises(NoisyFRError, match=r"labels out of range \[0, 10\): min 0, max 10"):
        head(torch.randn(2, 4), torch.tensor([0, 10]))
    with pytest.raises(NoisyFRError, match="labels must be an int64 tensor"):
        head(torch.randn(2, 4), torch.tensor([0.0, 1.0]))


def test_clip_grad_norm_matches_torch():
    g = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 4, generator=g)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn(3, 4, generator=g)
        q.grad = p.grad.clone()
    want = torch.nn.utils.clip_grad_norm_(b, 0.5)
    got = clip_grad_norm(a, 0.5, sharded=(a[0],))           # one process: the same norm
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)


def test_partial_fc_training_run_writes_complete_angle_logs(tmp_path):
    cfg = load_config({"data": {"train": "synthetic:ids=12,per_id=2,size=32,seed=0",
                                "image_size": 32, "noise": {"closed": 0.25, "seed": 0}},
                       "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.25},
                       "loss": {"name": "cosface", "s": 16.0, "sample_rate": 0.5},
                       "optim": {"epochs": 1, "batch_size": 8, "lr": 0.05},
                       "device": "cpu", "output_dir": str(tmp_path / "run")})
    result = train(cfg)
    assert math.isfinite(result["loss"])
    frame = pd.read_parquet(tmp_path / "run" / "angles" / "epoch_1.parquet")
    assert frame["sample_index"].tolist() == list(range(24))
    assert frame[["theta_y", "theta_nearest", "theta_orig", "weight", "grad_norm"]].notna().all().all()
    assert (frame["nearest_label"] != frame["label"]).all()
    assert (frame["label_used"] == frame["label"]).all()   # Partial FC never corrects labels
