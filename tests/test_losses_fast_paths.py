"""The fused autograd paths of noisyfr.losses (one-node margin logits, CurricularFace modulation,
softmax head, sub-centre max) against plain-autograd reference formulations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from noisyfr.losses import MarginHead, build_loss

MARGIN = ["sphereface", "cosface", "arcface", "combined", "expface", "adaface", "magface",
          "boundaryface"]


def _batch(B=12, C=9, seed=0, lo=-0.8, hi=0.95):
    g = torch.Generator().manual_seed(seed)
    cos = lo + (hi - lo) * torch.rand(B, C, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    norms = 5.0 + 120.0 * torch.rand(B, generator=g, dtype=torch.float64)
    return cos, labels, norms


def _reference_logits(loss, cos, labels, norms):
    """s*cos with the target column s*T(theta_y), written with out-of-place autograd ops."""
    cos_y = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
    theta = torch.acos(cos_y.clamp(-1 + 1e-6, 1 - 1e-6))
    target = loss.target_logit(theta, norms)
    onehot = F.one_hot(labels, cos.shape[1]).bool()
    return loss.s * torch.where(onehot, target.unsqueeze(1), cos)


@pytest.mark.parametrize("name", MARGIN)
def test_margin_logits_and_gradients_match_plain_autograd(name):
    cos, labels, norms = _batch(seed=len(name))
    loss = build_loss(name).double().eval()
    if name == "sphereface":
        loss.set_iteration(30)
    ref_loss = build_loss(name).double().eval()
    ref_loss.load_state_dict(loss.state_dict())
    if name == "boundaryface":
        loss.set_epoch(1)  # before its start epoch: labels unchanged, no penalty
    c1, n1 = cos.clone().requires_grad_(True), norms.clone().requires_grad_(True)
    c2, n2 = cos.clone().requires_grad_(True), norms.clone().requires_grad_(True)
    logits = loss(c1, labels, norms=n1)
    ref = _reference_logits(ref_loss, c2, labels, n2)
    torch.testing.assert_close(logits, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(cos.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (logits * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-10, atol=1e-12)
    if name == "magface":  # the margin depends on the norm: a gradient reaches it
        assert n2.grad is not None and n2.grad.abs().sum() > 0
        torch.testing.assert_close(n1.grad, n2.grad, rtol=1e-10, atol=1e-12)
    else:
        assert n1.grad is None or float(n1.grad.abs().sum()) == 0.0


def test_repeated_backward_and_no_grad():
    cos, labels, norms = _batch()
    loss = build_loss("arcface").double().eval()
    c = cos.clone().requires_grad_(True)
    logits = loss(c, labels)
    (g1,) = torch.autograd.grad(logits.sum(), c, retain_graph=True)
    (g2,) = torch.autograd.grad(logits.sum(), c)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loss(c, labels), logits.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("grad_mode", ["exact", "detached"])
@pytest.mark.parametrize("lo", [-0.9, 0.0])  # many hard negatives / (almost) none
def test_curricularface_against_where_formula(grad_mode, lo):
    cos, labels, _ = _batch(B=16, C=40, seed=3, lo=lo, hi=0.3)
    cos[torch.arange(16), labels] = torch.linspace(0.2, 0.95, 16, dtype=torch.float64)
    loss = build_loss("curricularface", grad_mode=grad_mode).double().eval()
    loss.t.fill_(0.35)
    c1, c2 = cos.clone().requires_grad_(True), cos.clone().requires_grad_(True)
    logits = loss(c1, labels)
    # reference: the documented formula with torch.where, differentiated by autograd
    cos_y = c2.gather(1, labels.unsqueeze(1)).squeeze(1)
    T = build_loss("arcface").double().target_logit(torch.acos(cos_y.clamp(-1 + 1e-6, 1 - 1e-6)))
    onehot = F.one_hot(labels, 40).bool()
    hard = (c2 > T.detach().unsqueeze(1)) & ~onehot
    mod = c2 * (0.35 + c2)
    if grad_mode == "detached":
        mod = c2 + (mod - c2).detach()
        T = cos_y + (T - cos_y).detach()
    ref = 64 * torch.where(onehot, T.unsqueeze(1), torch.where(hard, mod, c2))
    torch.testing.assert_close(logits, ref, rtol=1e-12, atol=1e-12)
    if lo < 0:
        assert hard.sum() > 100
    F.cross_entropy(logits, labels).backward()
    F.cross_entropy(ref, labels).backward()
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-10, atol=1e-13)


def test_softmax_head_is_a_linear_layer_with_gradients():
    torch.manual_seed(0)
    head = MarginHead(16, 11, "softmax").double()
    with torch.no_grad():
        head.bias.normal_()
    x = torch.randn(9, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (9,))
    value, logits, cos = head(x, labels)
    cos.retain_grad()
    value.backward()
    x2 = x.detach().clone().requires_grad_(True)
    w2 = head.weight.detach().clone().requires_grad_(True)
    b2 = head.bias.detach().clone().requires_grad_(True)
    ref_logits = F.linear(x2, w2, b2)
    F.cross_entropy(ref_logits, labels).backward()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, w2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.bias.grad, b2.grad, rtol=1e-10, atol=1e-12)
    # dL/dcos = dL/dlogits * |x| |W_j|
    p = torch.softmax(ref_logits.detach(), dim=1)
    dlogits = (p - F.one_hot(labels, 11)) / 9
    scale = torch.outer(x.detach().norm(dim=1), head.weight.detach().norm(dim=1))
    torch.testing.assert_close(cos.grad, dlogits * scale, rtol=1e-10, atol=1e-12)


def test_subcentre_head_matches_reference_with_ties():
    torch.manual_seed(1)
    C, K, d, B = 7, 3, 10, 24
    head = MarginHead(d, C, build_loss("subcenter_arcface")).double().train()
    with torch.no_grad():
        w = head.weight.view(C, K, d)
        w[:3, 1] = w[:3, 0] * 2.0  # classes 0-2: sub-centres 0 and 1 point the same way (ties)
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(B) % C
    value, logits, cos = head(x, labels)
    cos.retain_grad()
    value.backward()
    # reference: normalise, one product [B, C*K], max over the K sub-centres (first on ties)
    x2 = x.detach().clone().requires_grad_(True)
    w2 = head.weight.detach().clone().requires_grad_(True)
    full = F.normalize(x2) @ F.normalize(w2).t()
    ref_cos, sub = full.view(B, C, K).max(dim=2)
    ref_value = F.cross_entropy(build_loss("subcenter_arcface").double()(ref_cos, labels), labels)
    ref_value.backward()
    torch.testing.assert_close(cos, ref_cos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, w2.grad, rtol=1e-9, atol=1e-12)
    tie = (full.view(B, C, K)[:, :3, 0] - full.view(B, C, K)[:, :3, 1]).abs() < 1e-12
    assert tie.all()  # the tied pair really ties
    assert float(head.weight.grad.view(C, K, d)[:3, 1].abs().max()) == 0.0  # 2nd of a tie: none
    counts = torch.zeros(C, K, dtype=torch.long)
    k = sub[torch.arange(B), labels]
    counts.view(-1).index_add_(0, labels * K + k, torch.ones_like(labels))
    assert torch.equal(head.subcentre_counts, counts)
    assert math.isfinite(float(value.detach()))
