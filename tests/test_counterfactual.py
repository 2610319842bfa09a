"""Counterfactual weights (noisyfr.analysis.counterfactual) and the ``lse_neg`` column they read,
against per-sample autograd through MarginHead: for the loss that trained, and for another loss
evaluated on the same features and centres."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from noisyfr.analysis import counterfactual as cf
from noisyfr.errors import NoisyFRError
from noisyfr.losses import MarginHead, build_loss
from noisyfr.losses.partial_fc import PartialFCHead
from noisyfr.train.angles import _FLOATS, batch_rows, sharded_batch_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COL = {name: i for i, name in enumerate(_FLOATS)}


def _features(n=24, d=8, C=6, seed=3):
    """Features spread from near their centre to far from it (angles of about 10 to 120 deg)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = MarginHead(d, C, build_loss("arcface", s=16.0)).double()
    labels = torch.arange(n) % C
    centres = F.normalize(head.weight.detach(), dim=1)[labels]
    noise = torch.randn(n, d, generator=g, dtype=torch.float64)
    mix = torch.linspace(0.05, 3.0, n, dtype=torch.float64).unsqueeze(1)
    feats = (centres + mix * F.normalize(noise, dim=1)) * torch.linspace(2.0, 9.0, n,
                                                                        dtype=torch.float64).unsqueeze(1)
    return head.weight.detach().clone(), feats, labels


def _head(section, weight):
    params = {k: v for k, v in section.items() if k != "name"}
    head = MarginHead(weight.shape[1], weight.shape[0], build_loss(section["name"], **params)).double().eval()
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def _per_sample_pull(head, feats, labels):
    """|dCE_i/dcos(theta_{i,y})| of each sample alone, by autograd through the head."""
    out = []
    for i in range(len(labels)):
        _, logits, cos = head(feats[i:i + 1], labels[i:i + 1])
        cos.retain_grad()
        F.cross_entropy(logits, labels[i:i + 1]).backward()
        out.append(float(cos.grad[0, labels[i]].abs()))
    return np.array(out)


def _logged(head, feats, labels):
    """The angle rows the trainer would log for this batch (theta_used, lse_neg, weight)."""
    f = feats.clone().requires_grad_(True)
    loss, logits, cos = head(f, labels)
    cos.retain_grad()
    loss.backward()
    return batch_rows(cos, labels, head.last_labels, labels, grad_cos=cos.grad, grad_feat=f.grad,
                      feats=f, logits=logits).numpy()


SECTIONS = [{"name": "arcface", "s": 16.0, "m": 0.5, "grad_mode": "exact"},
            {"name": "arcface", "s": 16.0, "m": 0.5, "grad_mode": "detached"},
            {"name": "expface", "s": 16.0, "m": 0.7, "grad_mode": "exact"},
            {"name": "expface", "s": 16.0, "m": 0.7, "grad_mode": "exact", "grad_floor": 1.0},
            {"name": "cosface", "s": 16.0, "m": 0.35, "grad_mode": "exact"},
            {"name": "arcface", "s": 16.0, "m": 0.5, "grad_mode": "exact", "easy_margin": True}]


def test_lse_neg_is_the_log_sum_exp_of_the_non_target_logits():
    weight, feats, labels = _features()
    head = _head({"name": "curricularface", "s": 16.0}, weight)
    head.loss.t.fill_(0.4)  # hard negatives modulated: lse_neg must carry the modulation
    rows = _logged(head, feats, labels)
    _, logits, _ = head(feats, labels)
    want = [torch.logsumexp(torch.cat([logits[i, :labels[i]], logits[i, labels[i] + 1:]]), 0).item()
            for i in range(len(labels))]
    np.testing.assert_allclose(rows[:, COL["lse_neg"]], want, rtol=1e-6)
    x = F.normalize(feats, dim=1) @ F.normalize(weight, dim=1).T
    plain = [torch.logsumexp(16.0 * torch.cat([x[i, :labels[i]], x[i, labels[i] + 1:]]), 0).item()
             for i in range(len(labels))]
    assert np.abs(rows[:, COL["lse_neg"]] - plain).max() > 1e-3  # the modulation is seen


def test_lse_neg_under_partial_fc_equals_the_full_head_without_sampling():
    weight, feats, labels = _features(C=40)
    full = _head({"name": "arcface", "s": 16.0}, weight)
    part = PartialFCHead(8, 40, build_loss("arcface", s=16.0), 1.0).double()
    with torch.no_grad():
        part.weight.copy_(weight)
    want = _logged(full, feats, labels)
    f = feats.clone().requires_grad_(True)
    loss, _, cos = part(f, labels)
    cos.retain_grad()
    loss.backward()
    got = sharded_batch_rows(part, labels, cos.grad, f.grad, feats=f).numpy()
    np.testing.assert_allclose(got[:, COL["lse_neg"]], want[:, COL["lse_neg"]], rtol=1e-6)
    # sampled: the log-sum-exp over fewer classes is smaller
    part = PartialFCHead(8, 40, build_loss("arcface", s=16.0), 0.3).double()
    with torch.no_grad():
        part.weight.copy_(weight)
    f = feats.clone().requires_grad_(True)
    loss, logits, cos = part(f, labels)
    loss.backward()
    got = sharded_batch_rows(part, labels, None, None).numpy()[:, COL["lse_neg"]]
    assert (got < want[:, COL["lse_neg"]] + 1e-9).all() and (got < want[:, COL["lse_neg"]] - 1e-3).any()
    z = logits.detach().clone()
    z.scatter_(1, part.last.col.unsqueeze(1), -math.inf)
    np.testing.assert_allclose(got, torch.logsumexp(z, 1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: cf.label(s))
def test_counterfactual_of_the_trained_loss_is_its_per_sample_gradient(section):
    weight, feats, labels = _features()
    head = _head(section, weight)
    rows = _logged(head, feats, labels)
    ws = cf.sample_weights(cf.build(section), rows[:, COL["theta_used"]], rows[:, COL["lse_neg"]])
    ref = _per_sample_pull(head, feats, labels)
    np.testing.assert_allclose(ws["pull"], ref, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(ws["pull"], rows[:, COL["weight"]], rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(ws["unit_pull"], rows[:, COL["weight_theta"]], rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(ws["pull"], ws["p_channel"] * ws["slope"], rtol=1e-12)


@pytest.mark.parametrize("trained, other", [(0, 2), (0, 4), (2, 3), (1, 5), (4, 0)])
def test_counterfactual_of_another_loss_on_the_same_features_and_centres(trained, other):
    weight, feats, labels = _features()
    rows = _logged(_head(SECTIONS[trained], weight), feats, labels)
    ws = cf.sample_weights(cf.build(SECTIONS[other]), rows[:, COL["theta_used"]], rows[:, COL["lse_neg"]])
    ref = _per_sample_pull(_head(SECTIONS[other], weight), feats, labels)
    np.testing.assert_allclose(ws["pull"], ref, rtol=2e-5, atol=1e-9)
    # and it is not the trained loss's: the comparison could fail
    assert np.abs(ws["pull"] - rows[:, COL["weight"]]).max() > 1e-3


def test_channels_against_closed_forms():
    theta = np.radians(np.linspace(5.0, 150.0, 30))
    lse = np.linspace(-2.0, 8.0, 30)
    arc = cf.sample_weights(cf.build({"name": "arcface", "s": 32.0, "m": 0.5}), theta, lse)
    t = np.where(theta <= math.pi - 0.5, np.cos(theta + 0.5), np.cos(theta) - 0.5 * math.sin(0.5))
    p = 1.0 / (1.0 + np.exp(-(32.0 * t - lse)))
    np.testing.assert_allclose(arc["p"], p, rtol=1e-10)
    slope = np.where(theta <= math.pi - 0.5, np.sin(theta + 0.5) / np.sin(theta), 1.0)
    np.testing.assert_allclose(arc["slope"], slope, rtol=1e-7)
    det = cf.sample_weights(cf.build({"name": "expface", "s": 32.0, "grad_mode": "detached"}), theta, lse)
    np.testing.assert_array_equal(det["slope"], np.ones_like(theta))
    u = theta / math.pi
    np.testing.assert_allclose(det["p"], 1 / (1 + np.exp(-(32.0 * np.cos(math.pi * u ** 0.7) - lse))),
                               rtol=1e-10)


def test_blockers():
    arc = {"name": "arcface", "s": 32.0}
    assert cf.blocker(arc, {"name": "expface", "s": 32.0}) is None
    assert "differs" in cf.blocker(arc, {"name": "expface", "s": 64.0})
    assert "softmax" in cf.blocker({"name": "softmax"}, arc)
    assert "not a registered loss" in cf.blocker({"name": "mystery", "s": 32.0}, arc)
    with pytest.raises(NoisyFRError, match="not s"):
        cf.sample_weights(build_loss("softmax"), [0.5], [0.0])


def test_shares_on_a_fabricated_sweep_and_older_logs(tmp_path):
    from fabricate import fabricate_sweep, make_synthetic_run

    from noisyfr.analysis.load import scan_runs

    sweep = fabricate_sweep(tmp_path / "sw", trials=3, epochs=2, samples=600, classes=20, noise=0.4)
    runs = scan_runs(sweep)
    got = cf.table(runs)
    assert got["available"].all() and len(got)
    same = got[got["same_loss"]]
    # the trained loss's counterfactual share is the logged weight's share (a control that could fail)
    np.testing.assert_allclose(same["noisy_share"], same["actual_weight_share"], rtol=1e-4)
    other = got[~got["same_loss"]]
    assert (np.abs(other["noisy_share"].to_numpy() - other["actual_weight_share"].to_numpy()) > 1e-4).any()
    for c in ("noisy_share", "p_channel_share", "slope_channel_share", "unit_pull_share"):
        assert got[c].between(0, 1).all()
    old = scan_runs(make_synthetic_run(tmp_path / "old", num_ids=5, per_id=8, epochs=1))
    t = cf.table(old)
    assert not t["available"].any() and t["note"].str.contains("not logged").all()
    assert t["noisy_share"].isna().all()


def test_report_section_and_demo_lines(tmp_path):
    from fabricate import fabricate_sweep

    from noisyfr.analysis.report import write_report
    from noisyfr.demo import conclusions

    sweep = fabricate_sweep(tmp_path / "sw", trials=6, epochs=2, samples=400, classes=20, noise=0.4)
    md = write_report(sweep, tmp_path / "rep", figures=False).read_text()
    assert "Counterfactual weights" in md and "by construction" not in md
    table = pd.read_csv(tmp_path / "rep" / "tables" / "counterfactual.csv")
    assert table["available"].all() and set(table["counterfactual"]) == set(table["loss"])
    s = cf.summary(table)
    assert len(s) == 9 and (s["runs"] == 2).all()
    np.testing.assert_allclose(s.loc[s["loss"] == s["counterfactual"], "vs_trained"], 0.0, atol=1e-12)
    text = "\n".join(conclusions(tmp_path / "rep" / "tables"))
    assert "counterfactual noisy share" in text and "by construction" not in text


def test_analyze_counterfactual_option(tmp_path, capsys):
    from conftest import exit_status
    from fabricate import fabricate_sweep

    sweep = fabricate_sweep(tmp_path / "sw", trials=3, epochs=1, samples=300, classes=20, noise=0.4)
    out = tmp_path / "rep"
    assert exit_status(["analyze", str(sweep), "--out", str(out), "--no-figures",
                        "--counterfactual", "arcface:m=0.405", "--counterfactual", "expface:s=32"]) == 0
    t = pd.read_csv(out / "tables" / "counterfactual.csv")
    matched = t[t["counterfactual"] == "arcface s=64 m=0.405 exact"]   # s taken from the runs
    assert len(matched) == 3 and matched["available"].all()
    other_s = t[t["counterfactual"] == "expface s=32 m=0.7 exact"]
    assert len(other_s) == 3 and not other_s["available"].any()
    assert other_s["note"].str.contains("differs from the run's s=64").all()
    capsys.readouterr()
    assert exit_status(["analyze", str(sweep), "--out", str(tmp_path / "r2"),
                        "--counterfactual", "arcface:q=1"]) == 2
    assert "--counterfactual 'arcface:q=1'" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
