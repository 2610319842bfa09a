"""Similarity and gradient curves of margin losses, as tables (drawn by ``noisyfr curves``).

For a loss, over theta_y in [0, pi]:

- ``target_logit`` T(theta): the target logit before scaling;
- ``dT_dtheta``: its derivative (autograd), and ``dT_dcos`` = -dT/dtheta / sin(theta);
- ``weight_exact`` / ``weight_detached``: |dL/dcos(theta_y)| of the cross-entropy of one sample in
  each gradient mode at the reference setting: ``num_classes`` classes (default 1000), every
  non-target cosine equal to ``neg_cos`` (default 0, i.e. orthogonal centres), computed by autograd
  through the loss itself. ``p_y`` is the softmax probability of the target class there.

Derivatives are taken at theta clamped to [1e-6, pi - 1e-6]; the weights go through the losses'
own clamp of cos to [-1 + 1e-6, 1 - 1e-6], so the exact weight is 0 at theta = 0 and pi.
Stateful losses are shown in their reference state: SphereFace annealed (lambda = lambda_min),
CurricularFace with t = 0, AdaFace with norm = running mean (z = 0), MagFace at the mid-range norm,
BoundaryFace before its start epoch.

The figure is :func:`noisyfr.analysis.plots.loss_curves_figure`; the command line lives in
:mod:`noisyfr.analysis.curves_cli`.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from noisyfr import numeric
from noisyfr.errors import NoisyFRError
from noisyfr.losses import LOSSES, build_loss

DEFAULT_LOSSES = numeric.DEFAULT_CURVE_LOSSES
#: Bounds of the reference setting (:mod:`noisyfr.numeric`): theta values, classes, their product.
MAX_POINTS = numeric.MAX_CURVE_POINTS
MAX_CLASSES = numeric.MAX_CURVE_CLASSES
MAX_CELLS = numeric.MAX_CURVE_CELLS
COLUMNS = ["loss", "theta", "theta_deg", "target_logit", "dT_dtheta", "dT_dcos", "p_y",
           "weight_exact", "weight_detached", "s", "num_classes", "neg_cos"]


def check_settings(points, num_classes, neg_cos, names=("points", "num_classes", "neg_cos"),
                   where: str = "curves: ") -> tuple[int, int, float]:
    """``(points, num_classes, neg_cos)`` checked: integers in [2, MAX_POINTS] and
    [2, MAX_CLASSES] whose product (the cosine matrix) is at most MAX_CELLS, a finite cosine in
    [-1, 1]; NoisyFRError ``where`` + the setting (``names``: how the caller spells them)."""
    points = numeric.integer(points, f"{where}{names[0]}", lo=2, hi=MAX_POINTS)
    num_classes = numeric.integer(num_classes, f"{where}{names[1]}", lo=2, hi=MAX_CLASSES)
    neg_cos = numeric.real(neg_cos, f"{where}{names[2]}", lo=-1.0, hi=1.0)
    if points * num_classes > MAX_CELLS:
        raise NoisyFRError(f"{where}{names[0]} x {names[1]} = {points} x {num_classes}: the "
                           f"cosine matrix would hold {points * num_classes} values, more than "
                           f"{MAX_CELLS}; lower one of them")
    return points, num_classes, neg_cos


def reference_loss(name: str, grad_mode: str, params: dict):
    """Loss ``name`` built with ``params`` in ``grad_mode`` (``grad_floor`` dropped outside
    exact), in float64, eval mode and its reference state (see the module docstring)."""
    if grad_mode != "exact":  # a gradient floor is an exact-mode option (refused otherwise)
        params = {k: v for k, v in params.items() if k != "grad_floor"}
    loss = build_loss(name, grad_mode=grad_mode, **params).double().eval()
    if hasattr(loss, "set_iteration"):  # SphereFace: annealed state, lambda = lambda_min
        loss.set_iteration(10 ** 12)
    return loss


def loss_curves(name: str, points: int = 361, num_classes: int = 1000, neg_cos: float = 0.0,
                params: dict | None = None) -> pd.DataFrame:
    """Curves of one registered loss as a DataFrame with :data:`COLUMNS` (one row per theta)."""
    if name not in LOSSES:
        raise NoisyFRError(f"unknown loss {name!r}: choose from {', '.join(sorted(LOSSES))}")
    points, num_classes, neg_cos = check_settings(points, num_classes, neg_cos)
    params = dict(params or {})
    params.pop("grad_mode", None)
    theta = torch.linspace(0.0, math.pi, points, dtype=torch.float64)
    ref = reference_loss(name, "exact", params)
    norms = None
    if getattr(ref, "needs_norms", False):
        norms = torch.full((points,), float(ref.reference_norm), dtype=torch.float64)
    with torch.no_grad():
        target = ref.target_logit(theta, norms)
    theta_e = theta.clamp(1e-6, math.pi - 1e-6).requires_grad_(True)
    (d_theta,) = torch.autograd.grad(ref.target_logit(theta_e, norms).sum(), theta_e)
    d_cos = -d_theta / torch.sin(theta_e.detach())
    labels = torch.zeros(points, dtype=torch.long)
    cols = {}
    for mode in ("exact", "detached"):
        loss = reference_loss(name, mode, params)
        cos = torch.full((points, num_classes), float(neg_cos), dtype=torch.float64)
        cos[:, 0] = torch.cos(theta)
        cos.requires_grad_(True)
        out = loss.compute(cos, labels, norms=norms)
        F.cross_entropy(out.logits, out.labels, reduction="sum").backward()
        cols[mode] = cos.grad[:, 0].abs()
        if mode == "exact":
            p_y = torch.softmax(out.logits.detach(), dim=1)[:, 0]
    return pd.DataFrame({
        "loss": name,
        "theta": theta.numpy(),
        "theta_deg": torch.rad2deg(theta).numpy(),
        "target_logit": target.numpy(),
        "dT_dtheta": d_theta.numpy(),
        "dT_dcos": d_cos.numpy(),
        "p_y": p_y.numpy(),
        "weight_exact": cols["exact"].numpy(),
        "weight_detached": cols["detached"].numpy(),
        "s": float(ref.s),
        "num_classes": num_classes,
        "neg_cos": float(neg_cos),
    }, columns=COLUMNS)


def curves(losses=DEFAULT_LOSSES, points: int = 361, num_classes: int = 1000,
           neg_cos: float = 0.0, params: dict | None = None) -> pd.DataFrame:
    """Curves of several losses stacked (long format); ``params`` maps loss name -> kwargs."""
    losses = list(losses)
    if not losses:
        raise NoisyFRError("curves: --losses is empty")
    params = params or {}
    return pd.concat([loss_curves(n, points, num_classes, neg_cos, params.get(n)) for n in losses],
                     ignore_index=True)
