"""The angle-log columns comparable across losses: ``unit_pull`` (the tangential pull on the unit
embedding) and ``feat_norm`` against independent per-sample autograd, ``theta_used`` at
BoundaryFace's corrected label, Partial FC's rows, older logs and ``analyze --weight``."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import boundaryface_batch, exit_status
from fabricate import make_synthetic_run

from noisyfr.analysis.load import _complete_angle_log
from noisyfr.losses import MarginHead, build_loss
from noisyfr.losses.partial_fc import PartialFCHead
from noisyfr.train.angles import _FLOATS, COLUMNS, REQUIRED_COLUMNS, WEIGHT_COLUMNS, batch_rows, sharded_batch_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COL = {name: i for i, name in enumerate(_FLOATS)}


def _head(name, mode="exact", C=5, d=8):
    torch.manual_seed(0)
    params = {} if name == "softmax" else {"s": 16.0}
    head = MarginHead(d, C, build_loss(name, grad_mode=mode, **params)).double().eval()
    if name == "curricularface":
        head.loss.t.fill_(0.3)
    if name == "adaface":  # running stats near the norms: the margin varies per sample
        head.loss.batch_mean.fill_(5.0)
        head.loss.batch_std.fill_(2.0)
    return head


def _rows(head, feats, labels):
    f = feats.detach().clone().requires_grad_(True)
    loss, _, cos = head(f, labels)
    cos.retain_grad()
    loss.backward()
    return batch_rows(cos, labels, head.last_labels, labels, grad_cos=cos.grad, grad_feat=f.grad,
                      feats=f).numpy()


def _unit_pull_reference(head, feats, labels):
    """Each sample alone (eval mode), its direction x = f/|f| a leaf and its norm held fixed:
    ||(I - x x^T) dL/dx||, the tangential gradient on the unit embedding."""
    out = []
    for i in range(len(labels)):
        n = feats[i:i + 1].norm(dim=1, keepdim=True).detach()
        x = (feats[i:i + 1] / n).detach().clone().requires_grad_(True)
        loss, _, _ = head(x * n, labels[i:i + 1])
        (g,) = torch.autograd.grad(loss, x)
        g, u = g[0], x.detach()[0]
        out.append(float((g - u * (u @ g)).norm()))
    return np.array(out)


def _batch():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(7, 8, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 3.0, 5.0, 7.0, 9.0, 4.0, 2.0], dtype=torch.float64).unsqueeze(1)
    return feats, torch.tensor([0, 1, 2, 3, 4, 0, 1])


@pytest.mark.parametrize("name", ["arcface", "expface", "curricularface", "magface", "adaface",
                                  "softmax", "subcenter_arcface"])
@pytest.mark.parametrize("mode", ["exact", "detached"])
def test_unit_pull_is_the_tangential_gradient_on_the_unit_embedding(name, mode):
    head = _head(name, mode)
    feats, labels = _batch()
    rows = _rows(head, feats, labels)
    ref = _unit_pull_reference(head, feats, labels)
    np.testing.assert_allclose(rows[:, COL["unit_pull"]], ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rows[:, COL["feat_norm"]], feats.norm(dim=1).numpy(), rtol=1e-6)
    assert (rows[:, COL["unit_pull"]] > 0).all()


def test_unit_pull_equals_grad_norm_times_feat_norm_only_without_norm_terms():
    feats, labels = _batch()
    arc = _rows(_head("arcface"), feats, labels)
    np.testing.assert_allclose(arc[:, COL["unit_pull"]],
                               arc[:, COL["grad_norm"]] * arc[:, COL["feat_norm"]], rtol=1e-5)
    inside = torch.nn.functional.normalize(feats, dim=1) * torch.linspace(
        20.0, 100.0, len(labels), dtype=torch.float64).unsqueeze(1)  # inside MagFace's [l_a, u_a]
    mag = _rows(_head("magface"), inside, labels)
    prod = mag[:, COL["grad_norm"]] * mag[:, COL["feat_norm"]]
    # the margin's and the regulariser's norm gradient is radial: in grad_norm, not in unit_pull
    pull = mag[:, COL["unit_pull"]]
    assert (pull <= prod * (1 + 1e-6)).all() and ((prod - pull) / prod).max() > 1e-2


def test_theta_used_is_the_angle_at_the_corrected_label():
    head, feats, labels = boundaryface_batch()
    rows = _rows(head, feats, labels)
    assert head.last_labels.tolist() == [2, 0, 1]
    x = torch.nn.functional.normalize(feats, dim=1)
    np.testing.assert_allclose(rows[0, COL["theta_used"]], math.acos(float(x[0, 2])), atol=1e-6)
    np.testing.assert_allclose(rows[0, COL["theta_y"]], math.acos(float(x[0, 0])), atol=1e-6)
    assert rows[0, COL["theta_used"]] < rows[0, COL["theta_y"]]
    np.testing.assert_array_equal(rows[1:, COL["theta_used"]], rows[1:, COL["theta_y"]])
    # the weight is read at label_used: weight_theta = weight * sin(theta_used)
    np.testing.assert_allclose(rows[:, COL["weight_theta"]],
                               rows[:, COL["weight"]] * np.sin(rows[:, COL["theta_used"]]), rtol=1e-5)


def test_rows_without_feats_or_gradients_have_nan_pull():
    head = _head("arcface")
    feats, labels = _batch()
    _, _, cos = head(feats, labels)
    rows = batch_rows(cos, labels, labels, labels).numpy()
    assert np.isnan(rows[:, COL["unit_pull"]]).all() and np.isnan(rows[:, COL["feat_norm"]]).all()
    rows = batch_rows(cos, labels, labels, labels, feats=feats).numpy()
    assert np.isnan(rows[:, COL["unit_pull"]]).all()
    np.testing.assert_allclose(rows[:, COL["feat_norm"]], feats.norm(dim=1).numpy(), rtol=1e-6)


def test_partial_fc_rows_carry_the_same_pull():
    torch.manual_seed(0)
    full = MarginHead(8, 40, build_loss("arcface", s=16.0)).double()
    part = PartialFCHead(8, 40, build_loss("arcface", s=16.0), 1.0).double()
    with torch.no_grad():
        part.weight.copy_(full.weight)
    feats, labels = _batch()
    want = _rows(full, feats, labels)
    f = feats.clone().requires_grad_(True)
    loss, _, cos = part(f, labels)
    cos.retain_grad()
    loss.backward()
    got = sharded_batch_rows(part, labels, cos.grad, f.grad, feats=f).numpy()
    for c in ("unit_pull", "feat_norm", "theta_used", "grad_norm"):
        np.testing.assert_allclose(got[:, COL[c]], want[:, COL[c]], rtol=1e-5, err_msg=c)


def test_contract_and_older_logs():
    assert set(_FLOATS) <= set(COLUMNS)
    for c in ("unit_pull", "feat_norm", "theta_used"):
        assert c in COLUMNS and c not in REQUIRED_COLUMNS
    assert "unit_pull" in WEIGHT_COLUMNS and "feat_norm" not in WEIGHT_COLUMNS
    old = pd.DataFrame({"sample_index": [0, 1], "epoch": [1, 1], "label": [0, 1],
                        "label_used": [0, 2], "theta_y": [0.5, 1.0], "theta_nearest": [1.0, 1.2],
                        "nearest_label": [1, 2], "theta_orig": [0.5, 1.0], "weight": [1.0, 2.0]})
    done = _complete_angle_log(old)
    assert list(done.columns) == list(COLUMNS)
    assert done["unit_pull"].isna().all() and done["feat_norm"].isna().all()
    assert done["theta_used"].iloc[0] == 0.5 and math.isnan(done["theta_used"].iloc[1])


def test_analyze_weight_unit_pull_and_unknown_weight(tmp_path, capsys):
    run = make_synthetic_run(tmp_path / "run", num_ids=6, per_id=10, epochs=2)
    out = tmp_path / "rep"
    assert exit_status(["analyze", str(run), "--out", str(out), "--weight", "unit_pull",
                        "--no-figures"]) == 0
    ep = pd.read_csv(out / "tables" / "epoch_stats.csv")
    assert set(ep["weight_column"]) == {"unit_pull"} and ep["noisy_weight_share"].notna().all()
    capsys.readouterr()
    bad = tmp_path / "rep2"
    code = exit_status(["analyze", str(run), "--out", str(bad), "--weight", "feat_norm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "weight 'feat_norm'" in err
    assert "unit_pull" in err and not bad.exists()


def test_weight_is_binned_by_the_angle_of_the_label_it_was_taken_at():
    """BoundaryFace: a corrected sample's weight is read at label_used, so it is binned by
    theta_used, not by theta_y (the angle to the given label)."""
    import numpy as np
    import pandas as pd

    from noisyfr.analysis import stats

    df = pd.DataFrame({"run": "r", "epoch": 1, "is_noisy": [False, True],
                       "theta_y": np.radians([30.0, 100.0]), "theta_used": np.radians([30.0, 40.0]),
                       "grad_norm": [1.0, 5.0]})
    out = stats.binned_weight(df, bins=18, weight="grad_norm")
    noisy = out[out["group"] == "noisy"]
    assert list(noisy["bin_left_deg"]) == [40.0] and list(noisy["weight_mean"]) == [5.0]
    older = stats.binned_weight(df.drop(columns="theta_used"), bins=18, weight="grad_norm")
    assert list(older[older["group"] == "noisy"]["bin_left_deg"]) == [100.0]
