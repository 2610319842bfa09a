"""Shared machinery of the margin losses.

Every loss is a small subclass of :class:`MarginLoss` that defines ``target_logit(theta)``, a pure
tensor function of the target angle (radians) before scaling. The base class does the rest once:
cos -> theta (clamped) -> target_logit -> scatter into ``s * cos``, and the ``exact`` / ``detached``
gradient switch.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from noisyfr import targets
from noisyfr.errors import NoisyFRError
from noisyfr.targets import COS_EPS, GRAD_MODES, check_bool, check_real  # noqa: F401 (re-exported)

#: Registry: loss name -> class. Filled by the :func:`register_loss` decorator.
LOSSES: dict[str, type[MarginLoss]] = {}


def register_loss(name: str):
    """Class decorator adding a loss class (a :class:`MarginLoss` subclass) to :data:`LOSSES`
    under ``name`` and setting its ``name``. A later registration under the same name replaces
    the earlier one."""

    def deco(cls):
        cls.name = name
        LOSSES[name] = cls
        return cls

    return deco


class MarginOutput(NamedTuple):
    """What a loss hands the head: logits for cross-entropy, the labels to use, an extra term."""

    logits: torch.Tensor  #: [B, C] logits for cross-entropy
    labels: torch.Tensor  #: [B] labels for cross-entropy (BoundaryFace may correct them)
    penalty: torch.Tensor | None  #: scalar added to the mean cross-entropy, or None


class _TorchNamespace:
    """The ``xp`` of :mod:`noisyfr.targets` for torch tensors."""

    cos, sin, pow, clip, where = torch.cos, torch.sin, torch.pow, torch.clamp, torch.where
    floor, remainder = torch.floor, torch.remainder

    @staticmethod
    def detach(x):
        return x.detach()

    @staticmethod
    def like(value, theta):
        return torch.as_tensor(value, dtype=theta.dtype, device=theta.device)


#: The namespace in which the torch losses evaluate the target logits of :mod:`noisyfr.targets`.
TORCH = _TorchNamespace()


def arc_target(theta: torch.Tensor, m) -> torch.Tensor:
    """:func:`noisyfr.targets.arc` on tensors: cos(theta + m), the fallback cos(theta) - m*sin(m)
    beyond pi - m. ``m`` may be a float or a tensor like ``theta``."""
    return targets.arc(theta, m, TORCH)


class _MarginLogits(torch.autograd.Function):
    """Logits of a margin loss in one autograd node: ``(logits, target) = f(cos, norms)``.

    ``logits = s * cos`` with row i's target column ``labels[i]`` set to ``s * T_i``, where
    ``T = loss._target(cos_y, norms)`` (cos_y = the target column of ``cos``) is the target
    logit, also returned (in the graph) for penalties. Being one node, the gradient w.r.t.
    ``cos`` is built once in place (``grad * s``, target column overwritten with dL/dcos_y from
    the small [B] graph of T), instead of a dense ``s * cos`` gradient plus a dense gather
    gradient and their sum: one pass over [B, C] forward and one in backward, as NormFace's
    ``s * cos``.

    When ``loss.hard_negatives`` returns a coefficient ``t``, the non-target entries with
    ``cos > T[row]`` become ``s * cos * (t + cos)`` (CurricularFace hard negatives), in a few
    more in-place elementwise passes in float arithmetic (no bool masks, no index lists). In
    ``exact`` grad mode their gradient is ``s * (t + 2 cos)``, else ``s`` (straight-through).

    Model-parallel (Partial FC) use: with ``cos_y_given`` [B], ``cos`` holds only this rank's
    columns and ``labels`` is -1 on rows whose target column lives on another rank; those rows
    take their target cosine from ``cos_y_given`` (for the hard-negative threshold ``T``) and
    have no target column here (nothing is scattered into them, no gradient reaches ``T``).
    """

    @staticmethod
    def forward(ctx, cos, norms, labels, loss, cos_y_given=None):
        own = None if cos_y_given is None else labels >= 0
        idx = (labels if own is None else labels.clamp_min(0)).unsqueeze(1)
        need_cos, need_norms = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.enable_grad():  # a private [B] graph for T(cos_y, norms)
            cos_y = cos.detach().gather(1, idx).squeeze(1)
            if own is not None:
                cos_y = torch.where(own, cos_y, cos_y_given.to(cos_y.dtype))
            cos_y = cos_y.detach().requires_grad_(need_cos)
            n = None if norms is None else norms.detach().requires_grad_(need_norms)
            target = loss._target(cos_y, n).to(cos.dtype)
        values = target.detach()
        ctx.graph = (target, cos_y, n)
        t = loss.hard_negatives(cos, labels, values)
        easy = None
        if t is not None:
            # easy[i, j] = 1.0 where cos[i, j] <= T[i] (or j is the target), else 0.0: the
            # complement of the hard negatives cos > T. (A float-valued compare is ~4x faster
            # than a bool one on CPU, and float masks need no index lists.)
            easy = torch.le(cos, values.unsqueeze(1), out=torch.empty_like(cos))
            _put(easy, idx, torch.ones_like(values), own)
            if not easy.numel() or not bool(easy.amin() < 1):
                easy = None
        if easy is None:
            out = cos * loss.s
        else:
            # factor = F - F*easy + easy with F = cos + t: exactly F on hard entries and exactly
            # 1 elsewhere, so factor * cos * s equals where(hard, cos * (cos + t), cos) * s bit
            # for bit, in one allocation and in-place passes.
            out = torch.add(cos, t)
            out.addcmul_(out, easy, value=-1.0).add_(easy).mul_(cos).mul_(loss.s)
        _put(out, idx, values * loss.s, own)
        ctx.own = own
        if easy is not None and loss.grad_mode == "exact" and need_cos:
            ctx.save_for_backward(idx, cos, easy, t.detach().clone())
        else:
            ctx.save_for_backward(idx)
        ctx.s = loss.s
        return out, values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, grad_target):
        idx, *mod = ctx.saved_tensors
        target, cos_y, n = ctx.graph
        # dL/dT: through the logits' target column and through the returned target
        grad_t = grad.gather(1, idx).squeeze(1) * ctx.s
        if ctx.own is not None:  # no target column on this rank: no gradient through T here
            grad_t = torch.where(ctx.own, grad_t, torch.zeros_like(grad_t))
        if grad_target is not None:
            grad_t = grad_t + grad_target
        inputs = [x for x in (cos_y, n) if x is not None and x.requires_grad]
        got = dict(zip(map(id, inputs), torch.autograd.grad(
            target, inputs, grad_t, retain_graph=True, allow_unused=True))) if inputs else {}
        grad_cos = grad_norms = None
        if ctx.needs_input_grad[0]:
            if mod:  # exact modulation: d/dcos [cos (t + cos)] = t + 2 cos on hard entries
                cos, easy, t = mod
                # (t + 2 cos) on hard entries, exactly 1 elsewhere (as above), times grad * s
                grad_cos = torch.add(t, cos, alpha=2)
                grad_cos.addcmul_(grad_cos, easy, value=-1.0).add_(easy).mul_(grad).mul_(ctx.s)
            else:
                grad_cos = grad * ctx.s
            g_y = got.get(id(cos_y))
            if g_y is None:
                g_y = torch.zeros_like(grad_t)
            _put(grad_cos, idx, g_y.to(grad_cos.dtype), ctx.own)
        if ctx.needs_input_grad[1]:
            grad_norms = got.get(id(n))
        return grad_cos, grad_norms, None, None, None


def _put(mat: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, own) -> None:
    """``mat[i, idx[i]] = values[i]`` in place, only on rows where ``own`` (None: every row)."""
    if own is not None:
        values = torch.where(own, values.to(mat.dtype), mat.gather(1, idx).squeeze(1))
    mat.scatter_(1, idx, values.unsqueeze(1).to(mat.dtype))


class MarginLoss(nn.Module):
    """Base class: ``loss(cos, labels, norms=None) -> logits`` [B, C] for cross-entropy.

    Non-target logits are ``s*cos``, target logits ``s*target_logit(theta_y)``.
    ``grad_mode="exact"`` differentiates through ``target_logit``; ``"detached"`` applies the margin
    under ``no_grad`` (arcface_torch convention), so dL/dcos = s*(softmax - onehot).

    ``grad_floor`` (None, or a number >= 0; exact mode, losses with a margin only) keeps the value
    of the target logit T and floors its derivative: dT/dcos_y becomes max(dT/dcos_y, grad_floor)
    per sample (a dependence on the feature norms keeps its own gradient). It is the remedy for
    the exact-gradient collapse of ExpFace under label noise: ExpFace's dT/dcos is about 0.81 at
    90 degrees and falls to m^2 = 0.49 near 180 degrees, so its periphery pulls less than the
    plain softmax's (dT/dcos = 1); ``grad_floor: 1`` makes it pull at least as much. Refused in
    ``detached`` mode (dT/dcos is 1 there already: a floor would do nothing or change the
    mode's meaning) and for losses whose target is cos itself (NormFace, softmax).
    """

    name = "base"
    #: True when the target logit is cos itself (NormFace, softmax): fast path s*cos.
    identity_target = False
    #: Sub-centres per class the head must allocate (Sub-center ArcFace: K).
    subcenters = 1
    #: True for plain softmax: the head is an unnormalised linear layer W x + b.
    linear_head = False
    #: True when the loss cannot work without ``norms=`` (MagFace).
    needs_norms = False
    #: Why the loss cannot run under Partial FC (sampled, sharded centres), or None when it can.
    #: Partial FC calls ``update_state`` and ``hard_negatives`` as usual, never
    #: ``correct_labels``, and ``penalty`` with ``cos=None, target=None`` (global labels and
    #: norms): a loss whose hooks need every class's cosine says so here.
    partial_fc_blocker: str | None = None

    def __init__(self, s: float = 64.0, grad_mode: str = "exact", grad_floor: float | None = None):
        super().__init__()
        self.s, self.grad_mode, self.grad_floor = targets.check_base(self.name, s, grad_mode, grad_floor,
                                                                     self.identity_target)
        self.epoch = 1

    # ---- hooks for subclasses -------------------------------------------------------------
    def target_logit(self, theta: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """Target logit before scaling as a pure function of the target angle ``theta`` (radians)."""
        raise NotImplementedError

    def update_state(self, cos_y: torch.Tensor, norms: torch.Tensor | None) -> None:
        """Update running state from a training batch (called under no_grad; default: nothing)."""

    def correct_labels(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the labels to train on (default: unchanged; BoundaryFace corrects some)."""
        return labels

    def hard_negatives(self, cos: torch.Tensor, labels: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor | None:
        """CurricularFace-style modulation of the hard negatives: return the coefficient ``t``
        (0-dim tensor) to turn every non-target entry with ``cos_j > target`` (``target`` = the
        detached T(theta_y) of its row) into ``cos_j * (t + cos_j)``; None (default) leaves the
        non-target entries at ``cos``."""
        return None

    def penalty(self, cos, labels, target, norms) -> torch.Tensor | None:
        """Extra scalar added to the mean cross-entropy (default: None)."""
        return None

    # ---- public API ----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the current epoch (counts from 1). No-op for most losses."""
        self.epoch = check_real(self.name, "epoch", epoch, lo=1, integer=True)

    def _check_inputs(self, cos, labels, norms):
        if not torch.is_tensor(cos) or cos.dim() != 2 or not cos.is_floating_point():
            raise NoisyFRError(f"{self.name}: cos must be a float tensor [B, C], got "
                               f"{getattr(cos, 'shape', type(cos).__name__)}")
        if (not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != cos.shape[0]
                or labels.dtype != torch.int64):
            raise NoisyFRError(f"{self.name}: labels must be an int64 tensor [{cos.shape[0]}], got "
                               f"{getattr(labels, 'dtype', type(labels).__name__)} "
                               f"{tuple(getattr(labels, 'shape', ()))}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cos.shape[1]):
            raise NoisyFRError(f"{self.name}: labels out of range [0, {cos.shape[1]}): "
                               f"min {int(labels.min())}, max {int(labels.max())}")
        if norms is not None and (not torch.is_tensor(norms) or norms.shape != labels.shape):
            raise NoisyFRError(f"{self.name}: norms must be a tensor [{cos.shape[0]}], got "
                               f"{tuple(getattr(norms, 'shape', ()))}")
        if norms is None and self.needs_norms:
            raise NoisyFRError(f"{self.name}: needs the feature norms (norms=[B]); use MarginHead")
        if cos.dtype in (torch.float16, torch.bfloat16):
            cos = cos.float()
            norms = None if norms is None else norms.float()
        return cos, labels, norms

    def compute(self, cos: torch.Tensor, labels: torch.Tensor,
                norms: torch.Tensor | None = None) -> MarginOutput:
        """Logits, training labels and penalty for cosines ``cos`` [B, C] and ``labels`` [B]."""
        cos, labels, norms = self._check_inputs(cos, labels, norms)
        if self.identity_target:
            return MarginOutput(cos * self.s, labels, None)
        if self.training:
            with torch.no_grad():
                self.update_state(cos.gather(1, labels.unsqueeze(1)).squeeze(1), norms)
        labels = self.correct_labels(cos, labels)
        logits, target = _MarginLogits.apply(cos, norms, labels, self)
        return MarginOutput(logits, labels, self.penalty(cos, labels, target, norms))

    def _target(self, cos_y: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        """Target logit T(theta_y) before scaling from the target cosines ``cos_y`` [B], with
        the ``grad_mode`` applied: ``exact`` differentiates through ``target_logit``,
        ``detached`` has value T and gradient 1 w.r.t. ``cos_y`` (the angle is detached; a
        dependence on ``norms`` keeps its gradient). With ``grad_floor`` (exact only) the value
        is T and the gradient w.r.t. ``cos_y`` is max(dT/dcos_y, grad_floor) per sample."""
        if self.grad_mode == "exact":
            theta = torch.acos(cos_y.clamp(-1 + COS_EPS, 1 - COS_EPS))
            target = self.target_logit(theta, norms)
            if self.grad_floor is None or not cos_y.requires_grad or not torch.is_grad_enabled():
                return target
            # dT_i/dcos_i from the small [B] graph (row i of T depends on cos_y[i] only), then
            # T + (max(g, floor) - g) * (cos_y - cos_y): the value of T, the gradient
            # max(g, floor) w.r.t. cos_y, the gradient w.r.t. the norms untouched.
            (g,) = torch.autograd.grad(target.sum(), cos_y, retain_graph=True, allow_unused=True)
            if g is None:
                g = torch.zeros_like(cos_y)
            lift = (g.clamp_min(self.grad_floor) - g).detach()
            return target + lift * (cos_y - cos_y.detach())
        with torch.no_grad():
            theta = torch.acos(cos_y.clamp(-1 + COS_EPS, 1 - COS_EPS))
        # Only the angle is detached: a margin that depends on the feature norm (MagFace's m(|x|))
        # keeps its gradient w.r.t. the norms, as in the official MagFace code.
        t_val = self.target_logit(theta, norms)
        return cos_y + (t_val - cos_y.detach())  # value T(theta), gradient 1 w.r.t. cos_y

    def forward(self, cos: torch.Tensor, labels: torch.Tensor,
                norms: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, C] for cross-entropy (see :meth:`compute` for labels and penalty)."""
        return self.compute(cos, labels, norms).logits

    def hparams(self) -> dict:
        """The constructor parameters of this loss (name -> value)."""
        import inspect

        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self" and hasattr(self, k)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())
