"""The target logits written once for torch and numpy (noisyfr.targets): the numpy reference
losses of analysis against the torch losses that train, their forward-mode derivatives against
finite differences, and one rule for each parameter."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noisyfr import targets
from noisyfr.errors import NoisyFRError
from noisyfr.labels import BUILTIN_PARAMETERS
from noisyfr.losses import build_loss
from noisyfr.losses.curves import loss_curves, reference_loss

# angles at both ends (where cos is clamped), either side of 90 degrees (easy margins), of
# pi - m (the ArcFace fallback) and of SphereFace's k steps, and a spread between
THETA = np.concatenate([[0.0, 1e-4, 2e-3, math.pi - 2e-3, math.pi - 1e-4, math.pi],
                        np.linspace(0.01, math.pi - 0.01, 397)])
SETTINGS = [(name, mode, floor) for name in BUILTIN_PARAMETERS for mode in targets.GRAD_MODES
            for floor in ((None, 1.0) if mode == "exact" and name not in ("softmax", "normface") else (None,))]


def _ids(setting):
    name, mode, floor = setting
    return f"{name}-{mode}" + ("" if floor is None else f"-floor{floor:g}")


@pytest.mark.parametrize("setting", SETTINGS, ids=_ids)
def test_reference_value_and_slope_are_the_torch_loss_s_in_training(setting):
    """T and dT/dcos(theta_y) of the numpy reference equal those of the torch loss as it trains:
    the target column of its logits (divided by s) and that column's gradient by autograd."""
    name, mode, floor = setting
    params = {} if floor is None else {"grad_floor": floor}
    ref = targets.reference(name, mode, params)
    loss = reference_loss(name, mode, params)
    n = len(THETA)
    cos = torch.zeros(n, 2, dtype=torch.float64)
    cos[:, 0] = torch.as_tensor(np.cos(THETA))
    cos.requires_grad_(True)
    norms = torch.linspace(5.0, 130.0, n, dtype=torch.float64) if loss.needs_norms else None
    logits = loss.compute(cos, torch.zeros(n, dtype=torch.long), norms=norms).logits
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), cos)
    value, slope = ref.target_and_slope(THETA, None if norms is None else norms.numpy())
    np.testing.assert_allclose(value * ref.s, logits[:, 0].detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(slope * ref.s, grad[:, 0].numpy(), rtol=1e-10, atol=1e-10)
    assert ref.s == loss.s and ref.grad_mode == loss.grad_mode and ref.grad_floor == loss.grad_floor
    assert (ref.identity_target, ref.needs_norms, ref.linear_head) == (
        loss.identity_target, loss.needs_norms, loss.linear_head)


def test_the_reference_is_not_another_loss_s():
    """The control: the comparison above tells losses apart (ArcFace and ExpFace at the same s)."""
    arc, exp = targets.reference("arcface", "exact", {}), targets.reference("expface", "exact", {})
    assert np.abs(arc.target_and_slope(THETA)[1] - exp.target_and_slope(THETA)[1]).max() > 0.1


def test_dual_numbers_follow_the_chain_rule():
    """Forward-mode derivatives of every operation the targets use, against central finite
    differences (no torch)."""
    xp = targets.DUAL

    def f(x):
        y = xp.pow(x / 3.0, 0.7) * xp.cos(2.0 * x + 0.3) - xp.sin(x) / (1.5 + x)
        y = xp.where(x < 1.0, y, 4.0 / (x + 2.0) - (1.0 - x))
        return xp.clip(y, -0.9, 0.8) + 0.5 * xp.floor(x) + xp.remainder(x, 2.0) - (-x)

    x = np.linspace(0.05, 2.5, 200)
    out = f(targets.Dual(x, np.ones_like(x)))
    h = 1e-6
    fd = (f(x + h) - f(x - h)) / (2 * h)
    # finite differences see the jumps of floor and remainder (derivative 0 between them) and the
    # clip's corners: compare where f is smooth on [x - h, x + h]
    smooth = np.abs(fd - (f(x + 2 * h) - f(x - 2 * h)) / (4 * h)) < 1e-4
    assert smooth.sum() > 150
    np.testing.assert_allclose(out.der[smooth], fd[smooth], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.val, f(x), rtol=0, atol=0)
    # a clipped value has no derivative from y: the remainder's 1 and -(-x)'s 1 remain there
    clipped = (f(x) - 0.5 * np.floor(x) - np.remainder(x, 2.0) - x)
    clipped = (np.abs(clipped - 0.8) < 1e-12) | (np.abs(clipped + 0.9) < 1e-12)
    assert clipped.any() and (out.der[clipped] == 2.0).all()


@pytest.mark.parametrize("name, params", [
    ("arcface", {"m": 4.0}), ("arcface", {"easy_margin": 1}), ("cosface", {"m": -0.1}),
    ("expface", {"m": 0.0}), ("combined", {"m1": 0.0}), ("sphereface", {"m": 0.5}),
    ("adaface", {"h": 0.0}), ("magface", {"u_a": 5.0}), ("magface", {"l_m": 0.9}),
    ("subcenter_arcface", {"K": 2.5}), ("boundaryface", {"start_epoch": -1}),
    ("curricularface", {"alpha": 0.0}), ("expface", {"s": 0.0}), ("expface", {"grad_mode": "both"}),
    ("expface", {"grad_mode": "detached", "grad_floor": 1.0}), ("normface", {"grad_floor": 1.0}),
    ("expface", {"q": 1}), ("expface", {"m": "0.7"}), ("nosuchloss", {}),
])
def test_a_setting_is_refused_alike_with_and_without_torch(name, params):
    with pytest.raises(NoisyFRError) as torch_side:
        build_loss(name, **params)
    with pytest.raises(NoisyFRError) as numpy_side:
        targets.check(name, params)
    if name != "nosuchloss":  # the unknown name is said in each registry's words
        assert str(numpy_side.value) == str(torch_side.value)


def test_checked_settings_are_the_torch_loss_s():
    for name in BUILTIN_PARAMETERS:
        got, want = targets.check(name, {"grad_mode": "detached"}), build_loss(name, grad_mode="detached").hparams()
        assert {k: got[k] for k in want} == want and len(want) >= 1
        assert set(got) - set(want) <= {"s", "grad_floor"}


@pytest.mark.parametrize("name", list(BUILTIN_PARAMETERS))
def test_analytic_curves_equal_the_torch_curves(name):
    """The report's analytic curves (numpy) against ``noisyfr curves``' table (torch autograd
    through the loss and the cross-entropy). Torch's 1 - p loses digits where p is near 1, so
    the weights are compared where they exceed 1e-6."""
    from noisyfr.analysis.report import analytic_curves

    for mode in targets.GRAD_MODES:
        for classes in (2, 1000):
            got = analytic_curves({"x": {"name": name, "grad_mode": mode}}, num_classes=classes)
            want = loss_curves(name, points=181, num_classes=classes, params={"grad_mode": mode})
            want = want["weight_detached" if mode == "detached" else "weight_exact"].to_numpy()
            big = want > 1e-6
            assert big.sum() > 30
            np.testing.assert_allclose(got["gradient"].to_numpy()[big], want[big], rtol=2e-6)
            np.testing.assert_allclose(got["gradient"].to_numpy()[~big], want[~big], atol=2e-6)
