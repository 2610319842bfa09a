"""Fixed-margin losses: softmax, NormFace, SphereFace, CosFace, ArcFace, combined, ExpFace."""
from __future__ import annotations

import torch

from noisyfr import targets
from noisyfr.losses.base import COS_EPS, TORCH, MarginLoss, MarginOutput, register_loss


class _LinearLogits(torch.autograd.Function):
    """``bias + cos * outer(norms, centre_norms)`` (bias optional), computed in place on the
    outer product, with a lean backward: the norm gradients are two matrix-vector products of
    ``grad * cos`` instead of two more elementwise products and reductions over [B, C]."""

    @staticmethod
    def forward(ctx, cos, norms, centre_norms, bias):
        if cos.dtype == norms.dtype == centre_norms.dtype:
            # in place on the outer product: the same values as addcmul(bias, cos, scale)
            logits = torch.outer(norms, centre_norms).mul_(cos)
            if bias is not None:
                logits.add_(bias)
        else:  # mixed precision: let type promotion decide, as the plain expression would
            scale = torch.outer(norms, centre_norms)
            logits = cos * scale if bias is None else torch.addcmul(bias, cos, scale)
        ctx.save_for_backward(cos, norms, centre_norms)
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        cos, norms, centre_norms = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_cos = grad_norms = grad_centre = None
        buf = None
        if need[1] or need[2]:
            buf = grad * cos
            if need[1]:
                grad_norms = torch.mv(buf, centre_norms.to(buf.dtype))
            if need[2]:
                grad_centre = torch.mv(buf.t(), norms.to(buf.dtype))
        if need[0]:  # grad * outer(norms, centre_norms), reusing the [B, C] buffer
            if buf is not None and buf.dtype == norms.dtype == centre_norms.dtype:
                grad_cos = torch.outer(norms, centre_norms, out=buf)
            else:
                grad_cos = torch.outer(norms, centre_norms)
            grad_cos.mul_(grad)
        grad_bias = grad.sum(0) if need[3] else None
        return grad_cos, grad_norms, grad_centre, grad_bias


@register_loss("softmax")
class Softmax(MarginLoss):
    """Plain softmax: unnormalised linear head ``W x + b`` + cross-entropy.

    Called by :class:`MarginHead` with the feature norms, centre norms and bias, the logits are
    ``|x| |W_j| cos_j + b_j`` (= ``W x + b``), written through ``cos`` so that dL/dcos is readable.
    Called alone (no norms), the logits are ``cos`` (s = 1).
    """

    identity_target = True
    linear_head = True
    partial_fc_blocker = ("plain softmax is an unnormalised linear layer with a bias, not class "
                          "centres on the sphere")

    def __init__(self, grad_mode: str = "exact"):
        super().__init__(s=1.0, grad_mode=grad_mode)

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(theta)."""
        return targets.cosine(theta, TORCH)

    def compute(self, cos, labels, norms=None, centre_norms=None, bias=None) -> MarginOutput:
        """Logits ``norms*centre_norms*cos + bias`` (each factor optional)."""
        cos, labels, norms = self._check_inputs(cos, labels, norms)
        if norms is not None and centre_norms is not None:  # the head's case
            return MarginOutput(_LinearLogits.apply(cos, norms, centre_norms, bias), labels, None)
        if norms is not None:
            scale = norms.unsqueeze(1)
        elif centre_norms is not None:
            scale = centre_norms.unsqueeze(0)
        else:
            return MarginOutput(cos if bias is None else cos + bias, labels, None)
        logits = cos * scale if bias is None else torch.addcmul(bias, cos, scale)
        return MarginOutput(logits, labels, None)


@register_loss("normface")
class NormFace(MarginLoss):
    """NormFace: logits ``s*cos`` (no margin), s=64."""

    identity_target = True

    def __init__(self, s: float = 64.0, grad_mode: str = "exact"):
        super().__init__(s=s, grad_mode=grad_mode)

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(theta)."""
        return targets.cosine(theta, TORCH)


@register_loss("cosface")
class CosFace(MarginLoss):
    """CosFace / AM-Softmax: T(theta) = cos(theta) - m, m=0.35, s=64."""

    def __init__(self, m: float = 0.35, s: float = 64.0, grad_mode: str = "exact",
                 grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["cosface"](self.name, {"m": m}))

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(theta) - m."""
        return targets.cosface(theta, self.m, TORCH)


@register_loss("arcface")
class ArcFace(MarginLoss):
    """ArcFace: T(theta) = cos(theta + m) (m=0.5, s=64); cos(theta) - m*sin(m) for theta > pi - m.

    With ``easy_margin`` (insightface's option, default False) the margin applies only where
    cos(theta) > 0: T = cos(theta) (no margin, dT/dcos = 1) for theta >= 90 degrees.
    """

    def __init__(self, m: float = 0.5, s: float = 64.0, grad_mode: str = "exact",
                 grad_floor: float | None = None, easy_margin: bool = False):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["arcface"](self.name, {"m": m, "easy_margin": easy_margin}))

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(theta + m), fallback cos(theta) - m*sin(m) beyond pi - m; with
        ``easy_margin`` cos(theta) from 90 degrees on."""
        return targets.arcface(theta, self.m, self.easy_margin, TORCH)


@register_loss("combined")
class Combined(MarginLoss):
    """Combined margin T(theta) = cos(m1*theta + m2) - m3 with all three margins active.

    Beyond theta_c = (pi - m2)/m1 (where m1*theta + m2 would pass pi) the target continues as
    cos(theta) - (1 + cos(theta_c)) - m3: continuous at theta_c and decreasing.
    Defaults m1=1, m2=0.3, m3=0.2, s=64 (insightface's combined setting). With ``easy_margin``
    (default False) the margins apply only where cos(theta) > 0: T = cos(theta) for theta >= 90
    degrees (a step of m3 and more at 90 degrees: the insightface semantics).
    """

    def __init__(self, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2, s: float = 64.0,
                 grad_mode: str = "exact", grad_floor: float | None = None,
                 easy_margin: bool = False):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["combined"](
            self.name, {"easy_margin": easy_margin, "m1": m1, "m2": m2, "m3": m3}))

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(m1*theta + m2) - m3 (continuous decreasing fallback beyond theta_c);
        with ``easy_margin`` cos(theta) from 90 degrees on."""
        return targets.combined(theta, self.m1, self.m2, self.m3, self.easy_margin, TORCH)


@register_loss("expface")
class ExpFace(MarginLoss):
    """ExpFace: T(theta) = cos(pi * (theta/pi)^m), m=0.7, s=64 (m must be > 0)."""

    def __init__(self, m: float = 0.7, s: float = 64.0, grad_mode: str = "exact",
                 grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["expface"](self.name, {"m": m}))

    def target_logit(self, theta, norms=None):
        """T(theta) = cos(pi * (theta/pi)^m)."""
        return targets.expface(theta, self.m, TORCH)


@register_loss("sphereface")
class SphereFace(MarginLoss):
    """SphereFace (A-Softmax) on normalised features, scaled by ``s`` (not by the feature norm).

    psi(theta) = (-1)^k cos(m*theta) - 2k, k = floor(m*theta/pi); target
    T = (lambda*cos(theta) + psi(theta)) / (1 + lambda) with the annealing
    lambda = max(lambda_min, lambda_base*(1 + gamma*iteration)^-power), where ``iteration`` counts
    training forwards including the current one (0 before training: lambda = lambda_base).
    """

    def __init__(self, m: float = 4, s: float = 64.0, lambda_base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0,
                 grad_mode: str = "exact", grad_floor: float | None = None):
        super().__init__(s=s, grad_mode=grad_mode, grad_floor=grad_floor)
        self.__dict__.update(targets.CHECKS["sphereface"](self.name, {
            "m": m, "lambda_base": lambda_base, "gamma": gamma, "power": power, "lambda_min": lambda_min}))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def lambda_(self) -> float:
        """Current annealing weight lambda."""
        return targets.sphereface_lambda(self.lambda_base, self.gamma, self.power, self.lambda_min,
                                         int(self.iteration))

    def set_iteration(self, iteration: int) -> None:
        """Set the annealing iteration counter (e.g. to show the annealed curve)."""
        self.iteration.fill_(targets.check_real(self.name, "iteration", iteration, lo=0, integer=True))

    def psi(self, theta: torch.Tensor) -> torch.Tensor:
        """A-Softmax psi(theta) = (-1)^k cos(m*theta) - 2k, k = floor(m*theta/pi)."""
        return targets.sphereface_psi(theta, self.m, TORCH)

    def update_state(self, cos_y, norms):
        self.iteration += 1

    def target_logit(self, theta, norms=None):
        """T(theta) = (lambda*cos(theta) + psi(theta)) / (1 + lambda) at the current lambda."""
        return targets.sphereface(theta, self.m, self.lambda_, TORCH)


__all__ = ["Softmax", "NormFace", "CosFace", "ArcFace", "Combined", "ExpFace", "SphereFace",
           "COS_EPS"]
