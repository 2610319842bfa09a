"""Margin losses against hand-derived closed forms, finite differences and pytorch-metric-learning."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noisyfr.errors import NoisyFRError
from noisyfr.losses import LOSSES, MarginHead, MarginLoss, build_loss, register_loss

MARGIN_LOSSES = ["sphereface", "cosface", "arcface", "combined", "expface", "curricularface",
                 "adaface", "magface", "subcenter_arcface", "boundaryface"]
ALL = ["softmax", "normface"] + MARGIN_LOSSES


def _cos_batch(B=6, C=5, lo=-0.75, hi=0.9, seed=0):
    g = torch.Generator().manual_seed(seed)
    cos = lo + (hi - lo) * torch.rand(B, C, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    return cos, labels


def _norms(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 15.0 + 80.0 * torch.rand(B, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- registry and validation
def test_registry_lists_every_loss():
    assert set(ALL) <= set(LOSSES)
    for name in ALL:
        loss = build_loss(name)
        assert loss.name == name
        loss.set_epoch(3)
        assert loss.epoch == 3


@pytest.mark.parametrize("name,kwargs,word", [
    ("expface", {"m": 0.0}, "m="), ("expface", {"m": -0.5}, "m="), ("arcface", {"s": 0}, "s="),
    ("cosface", {"m": -0.1}, "m="), ("arcface", {"grad_mode": "fast"}, "grad_mode"),
    ("combined", {"m1": 0}, "m1"), ("combined", {"m2": -1}, "m2"), ("combined", {"m3": -1}, "m3"),
    ("sphereface", {"m": 0.5}, "m="), ("magface", {"u_a": 5.0}, "u_a"),
    ("subcenter_arcface", {"K": 0}, "K="), ("adaface", {"h": 0}, "h="),
    ("arcface", {"m": "0.5"}, "m="), ("arcface", {"m": float("nan")}, "m="),
    ("boundaryface", {"start_epoch": 1.5}, "start_epoch"),
    ("arcface", {"margin": 0.5}, "margin"), ("softmax", {"s": 30}, "'s'"),
])
def test_invalid_parameter_names_it(name, kwargs, word):
    with pytest.raises(ValueError, match=word) as exc:
        build_loss(name, **kwargs)
    assert isinstance(exc.value, NoisyFRError)
    assert name in str(exc.value) and "\n" not in str(exc.value)


@pytest.fixture
def linear_margin():
    """A user loss registered for one test, T(theta) = cos(theta) - m theta / pi, removed after."""

    @register_loss("test_linear_margin")
    class LinearMargin(MarginLoss):
        def __init__(self, s: float = 16.0, m: float = 0.2, grad_mode: str = "exact"):
            super().__init__(s, grad_mode)
            self.m = m

        def target_logit(self, theta, norms=None):
            return torch.cos(theta) - self.m * theta / math.pi

    yield LinearMargin
    LOSSES.pop("test_linear_margin", None)


def test_registered_user_loss_builds_and_trains_in_the_head(linear_margin):
    loss = build_loss("test_linear_margin", m=0.3, s=8.0)
    assert type(loss) is linear_margin and loss.name == "test_linear_margin"
    assert loss.hparams() == {"s": 8.0, "m": 0.3, "grad_mode": "exact"}
    torch.manual_seed(0)
    head = MarginHead(8, 5, "test_linear_margin")
    x = torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    value, logits, cos = head(x, labels)
    cos.retain_grad()
    value.backward()
    cos_y = cos.detach().gather(1, labels.unsqueeze(1)).squeeze(1)
    theta = torch.acos(cos_y.clamp(-1 + 1e-6, 1 - 1e-6))
    expected = 16.0 * (torch.cos(theta) - 0.2 * theta / math.pi)
    torch.testing.assert_close(logits.detach().gather(1, labels.unsqueeze(1)).squeeze(1), expected)
    # dL/dcos_y = (p_y - 1) * s * dT/dcos / B, dT/dcos = 1 + m / (pi sin theta)
    p_y = torch.softmax(logits.detach(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    slope = 1 + 0.2 / (math.pi * torch.sin(theta))
    torch.testing.assert_close(cos.grad.gather(1, labels.unsqueeze(1)).squeeze(1),
                               (p_y - 1) * 16.0 * slope / 6, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_unknown_loss_name():
    with pytest.raises(NoisyFRError, match="'nosuchface'"):
        build_loss("nosuchface")
    with pytest.raises(NoisyFRError, match="nosuchface"):
        MarginHead(8, 4, "nosuchface")


def test_bad_inputs_rejected():
    loss = build_loss("arcface")
    cos = torch.zeros(3, 4)
    with pytest.raises(NoisyFRError, match="labels out of range"):
        loss(cos, torch.tensor([0, 1, 4]))
    with pytest.raises(NoisyFRError, match="int64"):
        loss(cos, torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(NoisyFRError, match="cos"):
        loss(torch.zeros(3), torch.tensor([0, 1, 2]))
    with pytest.raises(NoisyFRError, match="norms"):
        build_loss("magface")(cos, torch.tensor([0, 1, 2]))
    with pytest.raises(NoisyFRError, match="epoch"):
        loss.set_epoch(0)
    with pytest.raises(NoisyFRError, match="features"):
        MarginHead(8, 4, "arcface")(torch.zeros(2, 7), torch.tensor([0, 1]))


# ---------------------------------------------------------------- closed forms
def _target_closed_form(name, c, loss, norms=None):
    """Hand-derived target logits from cos values c (float64 numpy), independent of the code."""
    s1 = np.sqrt(1 - c ** 2)
    if name == "cosface":
        return c - 0.35
    if name in ("arcface", "subcenter_arcface", "boundaryface", "curricularface"):
        m = 0.5
        return np.where(c > math.cos(math.pi - m), c * math.cos(m) - s1 * math.sin(m),
                        c - m * math.sin(m))
    if name == "combined":  # m1=1, m2=0.3, m3=0.2 ; main branch for theta <= pi - 0.3
        return c * math.cos(0.3) - s1 * math.sin(0.3) - 0.2
    if name == "expface":
        return np.cos(math.pi * (np.arccos(c) / math.pi) ** 0.7)
    if name == "sphereface":  # m=4: cos(4t) = 8c^4 - 8c^2 + 1 (Chebyshev), k from the angle
        k = np.floor(4 * np.arccos(c) / math.pi)
        psi = (-1.0) ** k * (8 * c ** 4 - 8 * c ** 2 + 1) - 2 * k
        lam = loss.lambda_
        return (lam * c + psi) / (1 + lam)
    if name == "adaface":  # running stats at their initial values 20 / 100
        z = np.clip((np.clip(norms, 1e-3, 100) - 20.0) / (100.0 + 1e-3) * 0.333, -1, 1)
        th = np.clip(np.arccos(c) - 0.4 * z, 1e-3, math.pi - 1e-3)
        return np.cos(th) - 0.4 - 0.4 * z
    if name == "magface":  # official MagLinear default: easy margin, cos(theta) where cos <= 0
        a = np.clip(norms, 10, 110)
        m = 0.45 + (0.8 - 0.45) * (a - 10) / 100
        return np.where(c > 0, c * np.cos(m) - s1 * np.sin(m), c)
    raise AssertionError(name)


@pytest.mark.parametrize("name", MARGIN_LOSSES)
def test_target_logits_match_closed_form(name):
    cos, labels = _cos_batch(B=40, C=6, lo=-0.99, hi=0.99)
    norms = _norms(40)
    loss = build_loss(name).double().eval()
    logits = loss(cos, labels, norms=norms)
    c = cos.numpy()
    cy = c[np.arange(40), labels.numpy()]
    expected_t = _target_closed_form(name, cy, loss, norms.numpy())
    if name == "combined":
        keep = np.arccos(cy) <= math.pi - 0.3
        expected_t = np.where(keep, expected_t, logits.detach().numpy()[np.arange(40), labels] / 64)
    np.testing.assert_allclose(logits.detach().numpy()[np.arange(40), labels.numpy()],
                               loss.s * expected_t, rtol=1e-9, atol=1e-9)
    mask = np.ones_like(c, dtype=bool)
    mask[np.arange(40), labels.numpy()] = False
    if name != "curricularface":  # non-target logits are s*cos
        np.testing.assert_allclose(logits.detach().numpy()[mask], loss.s * c[mask], rtol=1e-12)


def test_arcface_fallback_region():
    loss = build_loss("arcface", m=0.5).double()
    theta = torch.tensor([math.pi - 0.5 + 1e-3, 3.0], dtype=torch.float64)
    np.testing.assert_allclose(loss.target_logit(theta).numpy(),
                               np.cos(theta.numpy()) - 0.5 * math.sin(0.5), rtol=1e-12)


def test_combined_really_combines_and_is_continuous():
    theta = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)
    loss = build_loss("combined", m1=1.2, m2=0.3, m3=0.15).double()
    t = loss.target_logit(theta)
    th = theta.numpy()
    main = np.cos(1.2 * th + 0.3) - 0.15
    thc = (math.pi - 0.3) / 1.2
    np.testing.assert_allclose(t.numpy()[th <= thc], main[th <= thc], rtol=1e-12)
    np.testing.assert_allclose(t.numpy()[th > thc], (np.cos(th) - 1 - math.cos(thc) - 0.15)[th > thc])
    assert torch.all(t[1:] - t[:-1] < 0)  # decreasing, no jump up
    assert abs(float(loss.target_logit(torch.tensor(thc + 1e-9, dtype=torch.float64)))
               - (-1.15)) < 1e-6  # continuous at theta_c
    # m1=1, m2=0.5, m3=0 is ArcFace wherever theta + m <= pi
    arc, comb = build_loss("arcface").double(), build_loss("combined", m1=1, m2=0.5, m3=0).double()
    part = theta[theta <= math.pi - 0.5]
    torch.testing.assert_close(comb.target_logit(part), arc.target_logit(part))


def test_normface_and_softmax_logits():
    cos, labels = _cos_batch()
    torch.testing.assert_close(build_loss("normface", s=30)(cos, labels), 30 * cos)
    torch.manual_seed(0)
    head = MarginHead(8, 5, "softmax")
    x = torch.randn(6, 8)
    value, logits, cos_h = head(x, labels)
    ref = F.linear(x, head.weight, head.bias)  # the unnormalised linear layer
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(value, F.cross_entropy(ref, labels), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cos_h, F.normalize(x) @ F.normalize(head.weight).T)


def test_sphereface_lambda_annealing():
    loss = build_loss("sphereface").double()
    assert loss.lambda_ == 1000.0
    cos, labels = _cos_batch()
    for n in range(1, 4):
        loss(cos, labels)  # training mode: one iteration each
        assert loss.lambda_ == pytest.approx(1000.0 / (1 + 0.12 * n))
    loss.eval()
    loss(cos, labels)
    assert loss.lambda_ == pytest.approx(1000.0 / (1 + 0.12 * 3))  # eval does not anneal
    loss.set_iteration(10 ** 6)
    assert loss.lambda_ == 5.0
    zero = build_loss("sphereface", lambda_base=0, lambda_min=0).double()
    theta = torch.linspace(0, math.pi, 50, dtype=torch.float64)
    torch.testing.assert_close(zero.target_logit(theta), zero.psi(theta))


def test_curricularface_modulates_hard_negatives():
    cos, labels = _cos_batch(B=30, C=6, lo=-0.9, hi=0.9)
    loss = build_loss("curricularface").double()
    loss(cos, labels)  # training step: t <- 0.01 * mean(cos_y)
    cy = cos[torch.arange(30), labels]
    assert float(loss.t) == pytest.approx(0.01 * float(cy.mean()))
    loss.t.fill_(0.3)
    loss.eval()
    logits = loss(cos, labels).detach().numpy() / 64
    c = cos.numpy()
    ty = _target_closed_form("curricularface", cy.numpy(), loss)
    expected = np.where(c > ty[:, None], c * (0.3 + c), c)
    expected[np.arange(30), labels.numpy()] = ty
    assert (c > ty[:, None]).sum() > 30  # some hard negatives exist in this batch
    np.testing.assert_allclose(logits, expected, rtol=1e-12)


def test_adaface_running_stats_and_margin():
    cos, labels = _cos_batch(B=8)
    norms = _norms(8)
    loss = build_loss("adaface").double()
    loss(cos, labels, norms=norms)
    assert float(loss.batch_mean) == pytest.approx(0.99 * 20 + 0.01 * float(norms.mean()))
    assert float(loss.batch_std) == pytest.approx(0.99 * 100 + 0.01 * float(norms.std()))
    # without norms the margin is the typical-sample one: cos(theta) - m
    theta = torch.linspace(0.1, 3.0, 20, dtype=torch.float64)
    torch.testing.assert_close(loss.target_logit(theta), torch.cos(theta) - 0.4)


def test_magface_regulariser_in_head_value():
    torch.manual_seed(0)
    head = MarginHead(8, 5, "magface").double()
    x = torch.randn(6, 8, dtype=torch.float64) * torch.tensor([5, 20, 50, 80, 120, 30.0])[:, None]
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    value, logits, _ = head(x, labels)
    a = x.norm(dim=1).clamp(10, 110)
    reg = 35 * (a / 110 ** 2 + 1 / a).mean()
    torch.testing.assert_close(value, F.cross_entropy(logits, labels) + reg)


def test_boundaryface_corrects_labels_after_start_epoch():
    loss = build_loss("boundaryface", start_epoch=2).double()
    # sample 0: own class far (cos 0.1), class 2 close (cos 0.9): cos(acos(0.9)+0.5) > 0.1 -> flip
    # sample 1: clean, own class close
    cos = torch.tensor([[0.1, 0.0, 0.9, 0.2], [0.8, 0.1, 0.3, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    out = loss.compute(cos, labels)
    assert out.labels.tolist() == [0, 0] and out.penalty is None
    loss.set_epoch(3)
    out = loss.compute(cos, labels)
    assert out.labels.tolist() == [2, 0]
    assert loss.last_corrected.tolist() == [True, False]
    t = _target_closed_form("arcface", np.array([0.9, 0.8]), loss)
    neg = np.array([0.2, 0.3])  # nearest negatives after correction
    assert float(out.penalty) == pytest.approx(math.pi * np.maximum(neg - t, 0).mean())
    assert out.logits[0, 2] == pytest.approx(64 * t[0])


def test_subcenter_head_max_dominant_and_outliers():
    torch.manual_seed(0)
    C, K, d = 3, 3, 6
    head = MarginHead(d, C, build_loss("subcenter_arcface"))
    assert head.weight.shape == (C * K, d)
    x = torch.randn(10, d)
    labels = torch.randint(0, C, (10,))
    _, _, cos = head(x, labels)
    w = F.normalize(head.weight).view(C, K, d)
    brute = torch.einsum("bd,ckd->bck", F.normalize(x), w).amax(dim=2)
    torch.testing.assert_close(cos, brute)
    # a class whose samples sit on sub-centre 2, one sample far away
    with torch.no_grad():
        centres = torch.zeros(C, K, d)
        centres[:, 0, 0] = 1
        centres[:, 1, 1] = 1
        centres[:, 2, 2] = 1
        head.weight.copy_(centres.view(C * K, d))
    feats = torch.tensor([[0, 0, 1, 0, 0, 0.1], [0, 0.1, 1, 0, 0, 0], [0, 0, 1, 0.2, 0, 0],
                          [1, 0, 0, 0, 0, 0.0]])
    lab = torch.zeros(4, dtype=torch.long)
    q = head.subcentre_outliers(feats, lab)
    assert int(q.dominant[0]) == 2
    assert q.outlier.tolist() == [False, False, False, True]
    assert float(q.theta[3]) == pytest.approx(math.pi / 2)
    head.train()
    head(feats, lab)
    torch.testing.assert_close(head.class_centres()[0], centres[0, 2])
    assert torch.allclose(head.class_centres().norm(dim=1), torch.ones(C))


# ---------------------------------------------------------------- gradients
def _gradcheck_inputs(name):
    cos, labels = _cos_batch(B=5, C=4, lo=-0.7, hi=0.85, seed=3)
    if name == "boundaryface":
        cos[torch.arange(5), labels] = torch.tensor([0.8, 0.7, 0.75, 0.6, 0.82], dtype=torch.float64)
    return cos, labels


@pytest.mark.parametrize("name", MARGIN_LOSSES)
def test_exact_gradient_matches_finite_differences(name):
    cos, labels = _gradcheck_inputs(name)
    loss = build_loss(name, grad_mode="exact").double().eval()
    if name == "boundaryface":
        loss.set_epoch(100)
    if name == "curricularface":
        loss.t.fill_(0.2)
    if name == "sphereface":
        loss.set_iteration(40)  # lambda between base and min
    # AdaFace detaches the norms (as in its paper code); MagFace differentiates through them
    norms = _norms(5).requires_grad_(name == "magface")

    def f(c, n):
        out = loss.compute(c, labels, norms=n)
        v = F.cross_entropy(out.logits, out.labels)
        return v if out.penalty is None else v + out.penalty

    assert torch.autograd.gradcheck(f, (cos.clone().requires_grad_(True), norms), eps=1e-6,
                                    atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MARGIN_LOSSES)
def test_detached_gradient_is_s_times_p_minus_y(name):
    cos, labels = _gradcheck_inputs(name)
    loss = build_loss(name, grad_mode="detached").double().eval()
    exact = build_loss(name, grad_mode="exact").double().eval()
    for lo in (loss, exact):
        if name == "boundaryface":
            lo.set_epoch(100)
        if name == "curricularface":
            lo.t.fill_(0.2)
    norms = _norms(5)
    c = cos.clone().requires_grad_(True)
    out = loss.compute(c, labels, norms=norms)
    F.cross_entropy(out.logits, out.labels, reduction="sum").backward()
    p = torch.softmax(out.logits.detach(), dim=1)
    expected = loss.s * (p - F.one_hot(out.labels, cos.shape[1]).double())
    torch.testing.assert_close(c.grad, expected, rtol=1e-10, atol=1e-12)
    # same forward values in both modes, different gradients
    c2 = cos.clone().requires_grad_(True)
    out2 = exact.compute(c2, labels, norms=norms)
    torch.testing.assert_close(out2.logits, out.logits.detach())
    F.cross_entropy(out2.logits, out2.labels, reduction="sum").backward()
    if name == "cosface":  # T = cos - m has dT/dcos = 1: both modes coincide
        torch.testing.assert_close(c2.grad, c.grad)
    else:
        assert not torch.allclose(c2.grad, c.grad)


def test_head_cos_grad_is_per_sample_dl_dcos():
    torch.manual_seed(0)
    head = MarginHead(8, 5, build_loss("arcface", grad_mode="detached"))
    x = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    value, logits, cos = head(x, labels)
    cos.retain_grad()
    value.backward()
    p = torch.softmax(logits.detach(), dim=1)
    torch.testing.assert_close(cos.grad, 64 * (p - F.one_hot(labels, 5)) / 4, rtol=1e-4, atol=1e-6)
    assert x.grad is not None and head.weight.grad is not None


def test_same_seed_same_bytes():
    def run():
        torch.manual_seed(7)
        head = MarginHead(16, 9, "curricularface")
        x = torch.randn(8, 16)
        v, _, _ = head(x, torch.arange(8))
        return head.weight.detach().numpy().tobytes(), v.detach().numpy().tobytes()
    assert run() == run()


# ---------------------------------------------------------------- monotonic targets
@pytest.mark.parametrize("name, params", [
    ("arcface", {}), ("cosface", {}), ("expface", {}), ("combined", {}),
    ("magface", {"easy_margin": False}), ("sphereface", {}), ("curricularface", {})])
def test_target_curve_decreasing(name, params):
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    t = build_loss(name, **params).double().target_logit(theta)
    assert torch.all(t[1:] < t[:-1])


def test_magface_easy_margin_matches_official_default():
    """MagLinear's default: cos(theta + m(a)) where cos(theta) > 0, cos(theta) beyond 90 degrees;
    without the easy margin, ArcFace's fallback cos(theta) - m sin(m) beyond pi - m."""
    theta = torch.tensor([math.radians(120.0), math.radians(60.0)], dtype=torch.float64)
    norms = torch.tensor([60.0, 60.0], dtype=torch.float64)
    m = 0.45 + (0.8 - 0.45) * (60 - 10) / 100
    easy = build_loss("magface").double().target_logit(theta, norms)
    assert float(easy[0]) == pytest.approx(-0.5, abs=1e-12)            # cos(120 deg), no margin
    assert float(easy[1]) == pytest.approx(math.cos(math.radians(60.0) + m), abs=1e-12)
    hard = build_loss("magface", easy_margin=False).double().target_logit(theta, norms)
    assert float(hard[0]) == pytest.approx(math.cos(math.radians(120.0) + m), abs=1e-12)
    with pytest.raises(NoisyFRError, match="easy_margin"):
        build_loss("magface", easy_margin="yes")


def test_magface_detached_mode_keeps_the_margin_norm_gradient():
    """grad_mode=detached detaches the angle only: MagFace's margin m(|x|) still moves the norms,
    with the same norm gradient as the exact mode (same values, same d/d|x| at fixed theta)."""
    torch.manual_seed(0)
    feats = (torch.randn(6, 8, dtype=torch.float64) * 4).requires_grad_(False)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    grads = {}
    for mode in ("exact", "detached"):
        loss = build_loss("magface", s=16.0, lambda_g=0.0, grad_mode=mode).double()
        norms = feats.norm(dim=1).clamp(12.0, 100.0).detach().requires_grad_(True)
        cos = torch.full((6, 5), 0.1, dtype=torch.float64)
        cos[torch.arange(6), labels] = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
        out = loss.compute(cos, labels, norms=norms)
        torch.nn.functional.cross_entropy(out.logits, out.labels).backward()
        grads[mode] = norms.grad.clone()
    assert grads["detached"].abs().min() > 0
    torch.testing.assert_close(grads["detached"], grads["exact"])


# ---------------------------------------------------------------- pytorch-metric-learning
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside PML (numpy 2 API)
def test_against_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    c = torch.linspace(-0.999, 0.999, 801, dtype=torch.float64)
    theta = torch.acos(c)
    arc = pml.ArcFaceLoss(num_classes=3, embedding_size=4, margin=math.degrees(0.5), scale=64)
    torch.testing.assert_close(build_loss("arcface").double().target_logit(theta),
                               arc.modify_cosine_of_target_classes(c))
    cosf = pml.CosFaceLoss(num_classes=3, embedding_size=4, margin=0.35, scale=64)
    torch.testing.assert_close(build_loss("cosface").double().target_logit(theta),
                               cosf.modify_cosine_of_target_classes(c))
    sph = pml.SphereFaceLoss(num_classes=3, embedding_size=4, margin=4)
    sph.cast_types(torch.float64, "cpu")
    ours = build_loss("sphereface", lambda_base=0, lambda_min=0).double()
    torch.testing.assert_close(ours.target_logit(theta), sph.modify_cosine_of_target_classes(c))


@pytest.mark.parametrize("name,cls,margin", [("arcface", "ArcFaceLoss", math.degrees(0.5)),
                                             ("cosface", "CosFaceLoss", 0.35)])
def test_head_loss_value_matches_pytorch_metric_learning(name, cls, margin):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(0)
    ref = getattr(pml, cls)(num_classes=7, embedding_size=12, margin=margin, scale=64)
    head = MarginHead(12, 7, name)
    with torch.no_grad():
        head.weight.copy_(ref.W.T)
    x = torch.randn(16, 12, requires_grad=True)
    labels = torch.randint(0, 7, (16,))
    value, _, _ = head(x, labels)
    (gx,) = torch.autograd.grad(value, x)
    ref_value = ref(x, labels)
    (rx,) = torch.autograd.grad(ref_value, x)
    torch.testing.assert_close(value, ref_value, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, rx, rtol=1e-3, atol=1e-5)  # exact mode = PML's gradient


@pytest.mark.parametrize("grad_mode", ["exact", "detached"])
def test_curricularface_sparse_hard_negatives(grad_mode):
    """Few hard negatives take the sparse path; values and gradients as in the dense formula."""
    B, C = 4, 60
    cos = torch.full((B, C), -0.4, dtype=torch.float64)
    cos += 0.01 * torch.linspace(-1, 1, B * C, dtype=torch.float64).view(B, C)
    labels = torch.tensor([0, 5, 10, 59])
    cos[torch.arange(B), labels] = 0.9
    cos[1, 7] = 0.7  # hard: above T(theta_y) = cos(acos(0.9) + 0.5) ~ 0.57
    cos[2, 3] = 0.65
    loss = build_loss("curricularface", grad_mode=grad_mode).double().eval()
    loss.t.fill_(0.25)
    c = cos.clone().requires_grad_(True)
    logits = loss(c, labels)
    ty = _target_closed_form("curricularface", np.full(B, 0.9), loss)
    expected = cos.numpy().copy()
    hard = expected > ty[:, None]
    hard[np.arange(B), labels.numpy()] = False
    assert hard.sum() == 2
    expected[hard] = expected[hard] * (0.25 + expected[hard])
    expected[np.arange(B), labels.numpy()] = ty
    np.testing.assert_allclose(logits.detach().numpy(), 64 * expected, rtol=1e-12)
    F.cross_entropy(logits, labels, reduction="sum").backward()
    p = torch.softmax(logits.detach(), dim=1)
    g = 64 * (p - F.one_hot(labels, C).double())
    if grad_mode == "exact":  # d/dc [c (t + c)] = t + 2c on hard negatives
        g[1, 7] *= 0.25 + 2 * 0.7
        g[2, 3] *= 0.25 + 2 * 0.65
        cy = 0.9
        dT = math.cos(0.5) + math.sin(0.5) * cy / math.sqrt(1 - cy ** 2)
        g[torch.arange(B), labels] *= dT
    torch.testing.assert_close(c.grad, g, rtol=1e-8, atol=1e-12)


def test_boundaryface_against_brute_force():
    """Corrected labels and penalty equal a direct loop over the rows (random batch, C=2 and 9)."""
    for C in (2, 9):
        g = torch.Generator().manual_seed(C)
        cos = torch.rand(64, C, generator=g, dtype=torch.float64) * 1.6 - 0.8
        labels = torch.randint(0, C, (64,), generator=g)
        loss = build_loss("boundaryface", start_epoch=0, m=0.3).double()
        out = loss.compute(cos, labels)
        exp_labels, gaps = [], []
        for b in range(64):
            y = int(labels[b])
            negs = [j for j in range(C) if j != y]
            k = max(negs, key=lambda j: float(cos[b, j]))
            tk = math.acos(float(cos[b, k]))
            tk_m = math.cos(tk + 0.3) if tk + 0.3 <= math.pi else math.cos(tk) - 0.3 * math.sin(0.3)
            new = k if tk_m > float(cos[b, y]) else y
            exp_labels.append(new)
            cy = float(cos[b, new])
            ty = math.cos(math.acos(cy) + 0.3) if math.acos(cy) + 0.3 <= math.pi \
                else cy - 0.3 * math.sin(0.3)
            neg = max(float(cos[b, j]) for j in range(C) if j != new)
            gaps.append(max(neg - ty, 0.0))
        assert out.labels.tolist() == exp_labels
        assert 0 < sum(a != b for a, b in zip(exp_labels, labels.tolist())) < 64
        assert float(out.penalty) == pytest.approx(math.pi * np.mean(gaps), rel=1e-12)


# ---------------------------------------------------------------- easy margin
def _dT_dcos_fd(loss, cos_y, norms=None, h=1e-6):
    """Central finite difference of T(arccos(c)) w.r.t. c (double precision)."""
    def T(c):
        return loss.target_logit(torch.acos(c), norms)
    return (T(cos_y + h) - T(cos_y - h)) / (2 * h)


@pytest.mark.parametrize("name,params,closed", [
    ("arcface", {"m": 0.5}, lambda t: torch.cos(t + 0.5)),
    ("combined", {"m1": 1.1, "m2": 0.3, "m3": 0.2}, lambda t: torch.cos(1.1 * t + 0.3) - 0.2),
])
def test_easy_margin_values_and_gradients_on_both_sides_of_90_degrees(name, params, closed):
    theta = torch.deg2rad(torch.tensor([30.0, 60.0, 85.0, 89.5, 90.5, 95.0, 120.0, 170.0],
                                       dtype=torch.float64))
    below = theta < math.pi / 2
    easy_loss = build_loss(name, easy_margin=True, **params).double()
    plain = build_loss(name, **params).double()
    cos_y = torch.cos(theta).requires_grad_(True)
    t = easy_loss._target(cos_y, None)
    (g,) = torch.autograd.grad(t.sum(), cos_y)
    want = torch.where(below, closed(theta), torch.cos(theta))
    torch.testing.assert_close(t.detach(), want, rtol=0, atol=1e-12)
    # exact gradient: the margin curve's slope below 90 degrees, exactly 1 (plain cos) beyond
    torch.testing.assert_close(g[~below], torch.ones_like(g[~below]), rtol=0, atol=1e-12)
    fd = _dT_dcos_fd(plain, cos_y.detach())
    torch.testing.assert_close(g[below], fd[below], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(fd[~below], torch.ones_like(fd[~below]), atol=1e-3)
    # easy_margin=False is unchanged: the margin (and its fallback) everywhere
    torch.testing.assert_close(plain.target_logit(theta), build_loss(name, **params).double()
                               .target_logit(theta), rtol=0, atol=0)
    if name == "arcface":
        from noisyfr.losses import arc_target
        torch.testing.assert_close(plain.target_logit(theta), arc_target(theta, 0.5), rtol=0, atol=0)
    else:
        torch.testing.assert_close(plain.target_logit(theta[:6]), closed(theta[:6]), rtol=0, atol=1e-12)
    # whole logits: autograd against finite differences in double precision, away from 90 deg
    g_ = torch.Generator().manual_seed(3)
    cos = torch.rand(4, 5, generator=g_, dtype=torch.float64) * 1.6 - 0.8
    labels = torch.tensor([0, 1, 2, 3])
    cos[:, :4] = torch.where(torch.eye(4, 5, dtype=torch.bool)[:, :4],
                             torch.tensor([0.6, 0.2, -0.3, -0.7], dtype=torch.float64)[:, None],
                             cos[:, :4])
    cos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: easy_loss(c, labels), (cos,))


def test_easy_margin_is_in_loss_settings_and_labels_and_validated():
    from noisyfr.losses import loss_label, loss_settings

    for name in ("arcface", "combined"):
        assert loss_settings({"name": name})["easy_margin"] is False
        assert "easy_margin" not in loss_label({"name": name})
        assert "easy_margin=True" in loss_label({"name": name, "easy_margin": True})
        assert build_loss(name, easy_margin=True).hparams()["easy_margin"] is True
        with pytest.raises(NoisyFRError, match="easy_margin") as exc:
            build_loss(name, easy_margin="yes")
        assert "\n" not in str(exc.value)
    assert loss_label({"name": "arcface"}) == "arcface s=64 m=0.5 exact"


# ---------------------------------------------------------------- gradient floor
FLOOR_LOSSES = [("expface", {}), ("arcface", {}), ("cosface", {}), ("combined", {}),
                ("curricularface", {}), ("subcenter_arcface", {}), ("boundaryface", {}),
                ("adaface", {}), ("magface", {}), ("sphereface", {})]


@pytest.mark.parametrize("name,params", FLOOR_LOSSES)
@pytest.mark.parametrize("floor", [0.0, 0.9, 1.0, 1.5])
def test_grad_floor_floors_dT_dcos_and_keeps_values(name, params, floor):
    theta = torch.deg2rad(torch.linspace(10.0, 175.0, 23, dtype=torch.float64))
    norms = _norms(len(theta)) if name in ("magface", "adaface") else None
    floored = build_loss(name, grad_floor=floor, **params).double()
    exact = build_loss(name, **params).double()
    if name == "adaface":  # running stats near the norms, so the margin varies per sample
        for loss in (floored, exact):
            loss.batch_mean.fill_(50.0)
            loss.batch_std.fill_(20.0)
    cos_y = torch.cos(theta).requires_grad_(True)
    n = None if norms is None else norms.clone().requires_grad_(True)
    t = floored._target(cos_y, n)
    grads = torch.autograd.grad(t.sum(), [cos_y] + ([n] if n is not None else []),
                                allow_unused=True)
    cos_e = cos_y.detach().clone().requires_grad_(True)
    n_e = None if norms is None else norms.clone().requires_grad_(True)
    t_e = exact._target(cos_e, n_e)
    grads_e = torch.autograd.grad(t_e.sum(), [cos_e] + ([n_e] if n_e is not None else []),
                                  allow_unused=True)
    torch.testing.assert_close(t.detach(), t_e.detach(), rtol=0, atol=0)  # value unchanged
    fd = _dT_dcos_fd(exact, cos_y.detach(), norms)
    torch.testing.assert_close(grads[0], fd.clamp_min(floor), rtol=1e-5, atol=1e-5)
    if n is not None:  # the norm gradient (MagFace's margin; AdaFace has none) is kept
        assert (grads[1] is None) == (grads_e[1] is None) == (name == "adaface")
        if grads[1] is not None:
            torch.testing.assert_close(grads[1], grads_e[1], rtol=0, atol=0)
    if floor == 0.0:  # every target decreases in theta: dT/dcos >= 0, the floor 0 is exact
        torch.testing.assert_close(grads[0], grads_e[0], rtol=0, atol=0)


def test_grad_floor_in_the_full_loss_gradient():
    """dL/dcos of the cross-entropy: the target column is s (p_y - 1) max(dT/dcos, floor) / B."""
    cos, labels = _cos_batch(B=8, C=6, lo=-0.95, hi=0.6, seed=4)
    s, floor = 16.0, 1.0
    loss = build_loss("expface", s=s, grad_floor=floor).double()
    cos = cos.requires_grad_(True)
    out = loss.compute(cos, labels)
    F.cross_entropy(out.logits, out.labels).backward()
    rows = torch.arange(8)
    p = torch.softmax(out.logits.detach(), 1)
    g_t = _dT_dcos_fd(build_loss("expface").double(), cos.detach()[rows, labels])
    want = s * (p[rows, labels] - 1) * g_t.clamp_min(floor) / 8
    torch.testing.assert_close(cos.grad[rows, labels], want, rtol=1e-6, atol=1e-8)
    assert (g_t < floor).any()  # the floor was active somewhere
    other = torch.ones_like(p, dtype=torch.bool)
    other[rows, labels] = False
    torch.testing.assert_close(cos.grad[other], (s * p / 8)[other], rtol=1e-10, atol=1e-12)
    # expface's slope: about 0.81 at 90 degrees, m^2 = 0.49 near 180 degrees
    ref = build_loss("expface").double()
    g90 = _dT_dcos_fd(ref, torch.tensor([0.0], dtype=torch.float64))
    g180 = _dT_dcos_fd(ref, torch.tensor([math.cos(math.pi - 0.01)], dtype=torch.float64))
    assert abs(float(g90) - 0.806) < 1e-3 and abs(float(g180) - 0.49) < 1e-2


def test_grad_floor_refused_where_meaningless():
    for kwargs, words in [({"grad_mode": "detached", "grad_floor": 1.0}, ("grad_floor", "grad_mode")),
                          ({"grad_floor": -0.1}, ("grad_floor",)),
                          ({"grad_floor": float("nan")}, ("grad_floor",))]:
        with pytest.raises(NoisyFRError) as exc:
            build_loss("expface", **kwargs)
        assert all(w in str(exc.value) for w in words) and "\n" not in str(exc.value)
    for name in ("normface", "softmax"):  # no margin: the option does not exist there
        with pytest.raises(NoisyFRError, match="grad_floor"):
            build_loss(name, grad_floor=1.0)
    from noisyfr.losses import loss_label

    assert loss_label({"name": "expface", "grad_floor": 1.0}) == "expface s=64 m=0.7 grad_floor=1 exact"
    assert loss_label({"name": "expface"}) == "expface s=64 m=0.7 exact"


# ---------------------------------------------------------------- sub-centre counting window
def _subcentre_head(C=2, K=3, d=6):
    head = MarginHead(d, C, build_loss("subcenter_arcface", K=K)).train()
    with torch.no_grad():
        centres = torch.zeros(C, K, d)
        for k in range(K):
            centres[:, k, k] = 1
        head.weight.copy_(centres.view(C * K, d))
    return head, centres


def _near(k, n, d=6):
    f = torch.full((n, d), 0.05)
    f[:, k] = 1.0
    return f


def test_dominant_subcentre_is_measured_over_the_current_and_previous_epoch():
    from noisyfr.train.parallel import load_head_state

    head, centres = _subcentre_head()
    lab = torch.zeros(6, dtype=torch.long)
    head.set_epoch(1)
    head(_near(0, 6), lab)                     # epoch 1: six samples at sub-centre 0
    assert int(head.subcentre_counts[0, 0]) == 6
    head.set_epoch(2)
    assert int(head.subcentre_counts.sum()) == 0 and int(head.subcentre_counts_prev[0, 0]) == 6
    head(_near(2, 4), lab[:4])                 # epoch 2: four at sub-centre 2
    torch.testing.assert_close(head.class_centres()[0], centres[0, 0])  # 6 (prev) beat 4
    head.set_epoch(2)                          # the same epoch again: nothing rotates
    assert int(head.subcentre_counts[0, 2]) == 4 and int(head.subcentre_counts_prev[0, 0]) == 6
    head.set_epoch(3)                          # epoch 1's counts drop out of the window
    head(_near(1, 1), lab[:1])
    assert int(head.subcentre_counts_prev[0, 2]) == 4 and int(head.subcentre_counts_prev[0, 0]) == 0
    torch.testing.assert_close(head.class_centres()[0], centres[0, 2])  # 4 (prev) beat 1
    # a checkpoint carries the window: a fresh head resumes it and rotates the same way
    state = head.state_dict()
    assert {"subcentre_counts", "subcentre_counts_prev", "subcentre_epoch"} <= set(state)
    again, _ = _subcentre_head()
    load_head_state(again, state)
    for h in (head, again):
        h.set_epoch(4)
    for key in ("subcentre_counts", "subcentre_counts_prev", "subcentre_epoch"):
        assert torch.equal(getattr(again, key), getattr(head, key))
    # an older checkpoint (cumulative counts only) loads: its counts become the previous epoch's
    old = {k: v for k, v in state.items() if k in ("weight", "subcentre_counts")}
    legacy, _ = _subcentre_head()
    load_head_state(legacy, old)
    legacy.set_epoch(4)
    assert torch.equal(legacy.subcentre_counts_prev, state["subcentre_counts"])
    assert int(legacy.subcentre_counts.sum()) == 0


def test_partial_fc_dominant_uses_the_same_window():
    from noisyfr.losses.partial_fc import PartialFCHead

    head, centres = _subcentre_head()
    part = PartialFCHead(6, 2, build_loss("subcenter_arcface", K=3), 1.0).train()
    with torch.no_grad():
        part.weight.copy_(head.weight)
    lab = torch.zeros(6, dtype=torch.long)
    for h in (head, part):
        h.set_epoch(1)
        h(_near(0, 6), lab)
        h.set_epoch(2)
        h(_near(2, 4), lab[:4])
        h.set_epoch(3)
        h(_near(1, 1), lab[:1])
    for key in ("subcentre_counts", "subcentre_counts_prev", "subcentre_epoch"):
        assert torch.equal(getattr(part, key), getattr(head, key))
    x = F.normalize(_near(1, 1), dim=1)
    cos, _ = part.owned_cosines(x, lab[:1], dominant=True)
    torch.testing.assert_close(cos, x @ centres[0, 2])  # sub-centre 2 dominates in the window
