"""Adaptive / stateful margin losses: CurricularFace, AdaFace, MagFace, Sub-center ArcFace,
BoundaryFace."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from noisyfr import targets
from noisyfr.errors import NoisyFRError
from noisyfr.losses.base import COS_EPS, TORCH, MarginLoss, arc_target, check_real, register_loss


@register_loss("curricularface")
class CurricularFace(MarginLoss):
    """CurricularFace: ArcFace target (m=0.5, s=64) plus hard-negative modulation.

    A non-target j with cos_j > T(theta_y) is a hard negative and its logit becomes
    ``s * cos_j * (t + cos_j)`` instead of ``s * cos_j``; ``t`` is the running mean of cos(theta_y)
    (t <- alpha*mean + (1 - alpha)*t, alpha=0.01, t starts at 0), updated in training mode.
    """

    def __init__(self, m: float = 0.5, s: float = 64.0, alpha: float = 0.01,
                 grad_mode: str = "exact", grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["curricularface"](self.name, {"m": m, "alpha": alpha}))
        self.register_buffer("t", torch.zeros(()))

    def update_state(self, cos_y, norms):
        self.t.mul_(1.0 - self.alpha).add_(self.alpha * cos_y.float().mean())

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(theta + m), fallback cos(theta) - m*sin(m) beyond pi - m."""
        return arc_target(theta, self.m)

    def hard_negatives(self, cos, labels, target):
        """The hard-negative coefficient ``t`` (the base class modulates the entries)."""
        return self.t.to(cos.dtype)


@register_loss("adaface")
class AdaFace(MarginLoss):
    """AdaFace: feature-norm adaptive margin (m=0.4, h=0.333, s=64, t_alpha=0.01).

    With the batch-normalised norm z = clip((|x| - mu)/(sigma + 1e-3) * h, -1, 1) (mu, sigma running
    mean/std of the norms, EMA with t_alpha, start 20 and 100), the target is
    T = cos(clip(theta - m*z, 1e-3, pi - 1e-3)) - (m + m*z). ``norms=None`` means z = 0: cos(theta) - m.
    """

    def __init__(self, m: float = 0.4, h: float = 0.333, s: float = 64.0, t_alpha: float = 0.01,
                 grad_mode: str = "exact", grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["adaface"](self.name, {"m": m, "h": h, "t_alpha": t_alpha}))
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def update_state(self, cos_y, norms):
        if norms is None or norms.numel() < 2:
            return
        safe = norms.detach().float().clamp(0.001, 100.0)
        self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe.mean())
        self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * safe.std())

    def margin_scaler(self, norms: torch.Tensor | None) -> torch.Tensor | float:
        """z in [-1, 1] from the feature norms (0 when ``norms`` is None)."""
        if norms is None:
            return 0.0
        safe = norms.detach().clamp(0.001, 100.0)
        z = (safe - self.batch_mean.to(safe.dtype)) / (self.batch_std.to(safe.dtype) + 1e-3)
        return (z * self.h).clamp(-1.0, 1.0)

    def target_logit(self, theta, norms=None):
        """T = cos(clip(theta - m*z, 1e-3, pi - 1e-3)) - m*(1 + z)."""
        z = self.margin_scaler(norms)
        return targets.adaface(theta, self.m, z, TORCH)


@register_loss("magface")
class MagFace(MarginLoss):
    """MagFace: ArcFace with a norm-dependent margin plus a norm regulariser.

    a = clamp(|x|, l_a, u_a); m(a) = l_m + (u_m - l_m)*(a - l_a)/(u_a - l_a); regulariser
    lambda_g * mean(a/u_a^2 + 1/a) added to the loss value. With ``easy_margin`` (the default of
    the official ``MagLinear``) T = cos(theta + m(a)) where cos(theta) > 0 and T = cos(theta)
    beyond 90 degrees; without it, the ArcFace fallback cos(theta) - m(a)*sin(m(a)) beyond
    pi - m(a). Defaults l_a=10, u_a=110, l_m=0.45, u_m=0.8, lambda_g=35, s=64,
    easy_margin=True. Training needs ``norms``; ``target_logit(theta)`` without norms uses
    a = (l_a + u_a)/2. In both grad modes the margin's dependence on the norm is differentiated
    (``detached`` detaches the angle only).
    """

    needs_norms = True

    def __init__(self, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45,
                 u_m: float = 0.8, lambda_g: float = 35.0, easy_margin: bool = True,
                 grad_mode: str = "exact", grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["magface"](self.name, {
            "easy_margin": easy_margin, "l_a": l_a, "u_a": u_a, "l_m": l_m, "u_m": u_m, "lambda_g": lambda_g}))

    @property
    def reference_norm(self) -> float:
        """Feature norm used when no norms are given: (l_a + u_a)/2."""
        return 0.5 * (self.l_a + self.u_a)

    def margin(self, norms: torch.Tensor | None):
        """Margin m(a) for feature norms (the mid-range margin when ``norms`` is None)."""
        return targets.magface_margin(norms, self.l_a, self.u_a, self.l_m, self.u_m, TORCH)

    def target_logit(self, theta, norms=None):
        """T = cos(theta + m(a)); beyond 90 degrees cos(theta) (easy margin), else the ArcFace
        fallback cos(theta) - m(a)*sin(m(a)) beyond pi - m(a)."""
        return targets.magface(theta, self.margin(norms), self.easy_margin, TORCH)

    def penalty(self, cos, labels, target, norms):
        a = norms.clamp(self.l_a, self.u_a)
        return self.lambda_g * (a / self.u_a ** 2 + 1.0 / a).mean()


class SubcentreQuery(NamedTuple):
    """Result of the Sub-center ArcFace dominant-sub-centre outlier query."""

    dominant: torch.Tensor  #: [C] index of each class's dominant sub-centre
    theta: torch.Tensor  #: [N] angle (radians) of each sample to its class's dominant sub-centre
    outlier: torch.Tensor  #: [N] bool, theta > threshold


@register_loss("subcenter_arcface")
class SubCenterArcFace(MarginLoss):
    """Sub-center ArcFace: K sub-centres per class (K=3), cos = max over them, ArcFace target.

    The head allocates K centres per class and takes the max; :meth:`outlier_query` finds the
    dominant sub-centre of each class (most samples nearest to it) and flags the samples farther
    than ``threshold_deg`` (75 degrees) from it.
    """

    def __init__(self, m: float = 0.5, s: float = 64.0, K: int = 3, grad_mode: str = "exact",
                 grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["subcenter_arcface"](self.name, {"m": m, "K": K}))
        self.subcenters = self.K

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(theta + m), fallback cos(theta) - m*sin(m) beyond pi - m."""
        return arc_target(theta, self.m)

    @torch.no_grad()
    def outlier_query(self, features: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor,
                      threshold_deg: float = 75.0) -> SubcentreQuery:
        """Dominant sub-centre per class and the samples farther than ``threshold_deg`` from it.

        ``features`` [N, d], ``labels`` [N] int64, ``centres`` [C, K, d] (need not be normalised).
        """
        thr = check_real(self.name, "threshold_deg", threshold_deg, lo=0.0, hi=180.0)
        if centres.dim() != 3 or features.dim() != 2 or features.shape[1] != centres.shape[2]:
            raise NoisyFRError(f"{self.name}: outlier_query needs features [N, d] and centres "
                               f"[C, K, d], got {tuple(features.shape)} and {tuple(centres.shape)}")
        C, K, _ = centres.shape
        if labels.shape != features.shape[:1] or (labels.numel() and (
                int(labels.min()) < 0 or int(labels.max()) >= C)):
            raise NoisyFRError(f"{self.name}: outlier_query labels must be [N] in [0, {C})")
        x = F.normalize(features.float(), dim=1)
        w = F.normalize(centres.float(), dim=2)
        cos_sub = torch.einsum("nd,nkd->nk", x, w[labels])
        nearest = cos_sub.argmax(dim=1)
        counts = torch.bincount(labels * K + nearest, minlength=C * K).view(C, K)
        dominant = counts.argmax(dim=1)
        cos_dom = cos_sub.gather(1, dominant[labels].unsqueeze(1)).squeeze(1)
        theta = torch.acos(cos_dom.clamp(-1.0, 1.0))
        return SubcentreQuery(dominant, theta, theta > math.radians(thr))


@register_loss("boundaryface")
class BoundaryFace(MarginLoss):
    """BoundaryFace: ArcFace (m=0.5, s=64) with closed-set label self-correction after a start epoch.

    For epoch > ``start_epoch`` (default 7): a sample whose nearest negative class k satisfies
    cos(theta_k + m) > cos(theta_y) gets its label corrected to k for this step, and the penalty
    ``penalty_weight * mean(relu(max_{j != y} cos_j - T(theta_y)))`` (weight pi) is added.
    ``last_corrected`` holds the bool mask [B] of the latest forward.
    """

    partial_fc_blocker = ("its label correction and penalty need each sample's cosine to every "
                          "class (Partial FC samples the negatives and shards the centres)")

    def __init__(self, m: float = 0.5, s: float = 64.0, start_epoch: int = 7,
                 penalty_weight: float = math.pi, grad_mode: str = "exact",
                 grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["boundaryface"](
            self.name, {"m": m, "start_epoch": start_epoch, "penalty_weight": penalty_weight}))
        self.last_corrected: torch.Tensor | None = None
        self._neg_idx: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        """True once the label correction runs (epoch > start_epoch)."""
        return self.epoch > self.start_epoch

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(theta + m), fallback cos(theta) - m*sin(m) beyond pi - m."""
        return arc_target(theta, self.m)

    def correct_labels(self, cos, labels):
        self._neg_idx = None
        if not self.active or cos.shape[1] < 2:
            self.last_corrected = torch.zeros_like(labels, dtype=torch.bool)
            return labels
        with torch.no_grad():
            # the two largest cosines of each row hold the nearest negative (top-1 unless it is
            # the label) and, for a flipped sample, the nearest negative of its new label.
            vals, idx = cos.detach().topk(2, dim=1)
            cos_y = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
            top_is_y = idx[:, 0] == labels
            neg_idx = torch.where(top_is_y, idx[:, 1], idx[:, 0])
            neg_cos = torch.where(top_is_y, vals[:, 1], vals[:, 0])
            theta_k = torch.acos(neg_cos.clamp(-1 + COS_EPS, 1 - COS_EPS))
            # cos(theta_k + m) <= cos(theta_k) <= cos_y when the label is the top-1: no flip then
            flip = (self.target_logit(theta_k) > cos_y) & ~top_is_y
            new = torch.where(flip, neg_idx, labels)
            # new label k = top-1: its nearest negative is the better of the old label and top-2
            other = torch.where(cos_y >= vals[:, 1], labels, idx[:, 1])
            self._neg_idx = torch.where(flip, other, neg_idx)
        self.last_corrected = flip
        return new

    def penalty(self, cos, labels, target, norms):
        if self._neg_idx is None or self.penalty_weight == 0:
            return None
        neg_cos = cos.gather(1, self._neg_idx.unsqueeze(1), sparse_grad=True).squeeze(1)
        return self.penalty_weight * torch.relu(neg_cos - target).mean()
