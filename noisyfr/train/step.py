"""One optimiser step of backbone + margin head, with per-sample angle tracking from the same
forward/backward pass (see :mod:`noisyfr.train.angles`)."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from noisyfr.errors import NoisyFRError
from noisyfr.train import angles as angles_mod


def allreduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the parameters' gradients over the ``world`` processes (one flat all-reduce)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    for t in module.state_dict().values():
        if torch.is_tensor(t):
            dist.broadcast(t, 0)


class Stepper:
    """One optimiser step of backbone + head, with per-sample angle tracking.

    ``step(images, labels, index, where)`` runs forward (backbone under autocast when
    ``amp_dtype`` is set, head in float32), checks the loss is finite (NoisyFRError naming the loss
    and ``where``), backward, gradient all-reduce (``world > 1``), clipping, optimiser and
    scheduler steps. When ``self.tracker`` is an :class:`~noisyfr.train.angles.AngleTracker`, the
    batch's angles are added to it from this same forward pass, and with ``self.track_grads``
    the per-sample weights (``weight``, ``weight_theta``, ``grad_norm``) from its backward pass.
    Returns ``(loss value, number of correct argmax predictions, lr used)``.
    """

    def __init__(self, model, head, optimizer, scheduler=None, *, scaler=None, amp_dtype=None,
                 grad_clip: float = 0.0, world: int = 1, orig_labels: torch.Tensor | None = None,
                 loss_name: str = "loss"):
        self.model, self.head, self.optimizer, self.scheduler = model, head, optimizer, scheduler
        self.scaler, self.amp_dtype, self.grad_clip, self.world = scaler, amp_dtype, grad_clip, world
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.device = next(model.parameters()).device
        self.orig_labels = orig_labels
        self.loss_name = loss_name
        self.tracker: angles_mod.AngleTracker | None = None
        self.track_grads = True

    def _theta_dominant(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Angle to the labelled class's dominant sub-centre (None for single-centre heads)."""
        if getattr(self.head, "K", 1) == 1:
            return None
        with torch.no_grad():
            x = torch.nn.functional.normalize(feats.detach().float(), dim=1)
            centres = self.head.class_centres()[labels]
            return torch.arccos((x * centres).sum(1).clamp(-1.0, 1.0))

    def step(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
             where: str = "") -> tuple[float, int, float]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True).long()
        index = index.long()
        track = self.tracker is not None
        grads = track and self.track_grads
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            feats = self.model(images)
        feats = feats.float()
        if grads and feats.requires_grad:
            feats.retain_grad()
        loss, logits, cos = self.head(feats, labels)
        if grads and cos.requires_grad:
            cos.retain_grad()
        loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise NoisyFRError(
                f"loss {self.loss_name}: non-finite loss ({loss_val}) at {where}; "
                f"lower optim.lr, change the loss parameters or set optim.grad_clip")
        opt, scaler = self.optimizer, self.scaler
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scale = float(scaler.get_scale())
            scaler.scale(loss).backward()
        else:
            scale = 1.0
            loss.backward()
        if self.world > 1:
            allreduce_grads(self.params, self.world)
        if self.grad_clip > 0:
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        lr_used = float(opt.param_groups[0]["lr"])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        correct = int((logits.detach().argmax(1) == labels).sum())
        if track:
            orig = (self.orig_labels[index] if self.orig_labels is not None else index.new_full(
                index.shape, -1)).to(self.device)
            used = getattr(self.head, "last_labels", None)
            used = labels if used is None else used
            values = angles_mod.batch_rows(
                cos, labels, used, orig, grad_cos=cos.grad if grads else None,
                grad_feat=feats.grad if grads else None, scale=scale,
                theta_dominant=self._theta_dominant(feats, labels))
            self.tracker.add(index, labels, used, values)
        return loss_val, correct, lr_used
