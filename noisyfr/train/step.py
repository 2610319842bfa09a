"""One optimiser step of backbone + margin head, with per-sample angle tracking from the same
forward/backward pass (see :mod:`noisyfr.train.angles`)."""
from __future__ import annotations

import math

import torch

from noisyfr.distributed import all_reduce_
from noisyfr.errors import NoisyFRError
from noisyfr.train import angles as angles_mod


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float,
                   sharded: tuple[torch.nn.Parameter, ...] = ()) -> torch.Tensor | None:
    """Scale the gradients so that their global norm is at most ``max_norm`` (as
    ``torch.nn.utils.clip_grad_norm_``); the norm of the ``sharded`` parameters (each rank
    holding a different part, e.g. Partial FC centres) is summed over the ranks. Returns the
    norm before clipping (a 0-dim tensor; None without gradients)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    dev = grads[0].device
    shard_ids = {id(p) for p in sharded}
    sq = torch.zeros(2, dtype=torch.float32, device=dev)
    for p in params:
        if p.grad is not None:
            sq[int(id(p) in shard_ids)] += p.grad.detach().float().pow(2).sum().to(dev)
    if shard_ids:
        all_reduce_(sq[1:])
    total = sq.sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total


class Stepper:
    """One optimiser step of backbone + head, with per-sample angle tracking.

    ``step(images, labels, index, where)`` runs forward (backbone under autocast when
    ``amp_dtype`` is set, head in float32), checks the loss is finite (NoisyFRError naming the loss
    and ``where``), backward, clipping, optimiser and scheduler steps. ``model`` is what runs the
    forward (the backbone, or its DistributedDataParallel / compiled wrapper, which average the
    gradients over the ranks during backward); ``head_call`` the same for the head (default: the
    head itself; a replicated head under DDP is wrapped, a Partial FC head is not). When
    ``self.tracker`` is an :class:`~noisyfr.train.angles.AngleTracker`, the batch's angles are
    added to it from this same forward pass, and with ``self.track_grads`` the per-sample
    weights (``weight``, ``weight_theta``, ``grad_norm``, ``unit_pull``) from its backward pass, and
    ``lse_neg`` from the logits the cross-entropy saw. With
    ``channels_last`` the images are passed in channels-last memory format. Returns ``(loss
    value, number of correct argmax predictions, lr used)``.
    """

    def __init__(self, model, head, optimizer, scheduler=None, *, scaler=None, amp_dtype=None,
                 grad_clip: float = 0.0, orig_labels: torch.Tensor | None = None,
                 loss_name: str = "loss", head_call=None, channels_last: bool = False):
        self.model, self.head, self.optimizer, self.scheduler = model, head, optimizer, scheduler
        self.scaler, self.amp_dtype, self.grad_clip = scaler, amp_dtype, grad_clip
        self.head_call = head if head_call is None else head_call
        self.channels_last = channels_last
        self.sharded = getattr(head, "sharded", False)
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
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True).long()
        index = index.long()
        track = self.tracker is not None
        grads = track and self.track_grads
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            feats = self.model(images)
        if feats.dtype in (torch.float16, torch.bfloat16):
            feats = feats.float()  # the head and loss run in float32
        if grads and feats.requires_grad:
            feats.retain_grad()
        loss, logits, cos = self.head_call(feats, labels)
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
        if self.grad_clip > 0:
            if scaler is not None:
                scaler.unscale_(opt)
            clip_grad_norm(self.params, self.grad_clip,
                           (self.head.weight,) if self.sharded else ())
        if track:  # before the update: the angles of the centres the loss saw
            self._track(feats, labels, cos, index, grads, scale, logits)
        lr_used = float(opt.param_groups[0]["lr"])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss_val, self.head.correct_count(logits, labels), lr_used

    def _track(self, feats, labels, cos, index, grads: bool, scale: float, logits=None) -> None:
        """Add the batch's angle rows to the tracker (after backward, before the update)."""
        orig = (self.orig_labels[index] if self.orig_labels is not None else index.new_full(
            index.shape, -1)).to(self.device)
        used = getattr(self.head, "last_labels", None)
        used = labels if used is None else used
        grad_cos, grad_feat = (cos.grad, feats.grad) if grads else (None, None)
        if self.sharded:
            values = angles_mod.sharded_batch_rows(self.head, orig, grad_cos, grad_feat, scale,
                                                   feats=feats)
        else:
            values = angles_mod.batch_rows(
                cos, labels, used, orig, grad_cos=grad_cos, grad_feat=grad_feat, scale=scale,
                theta_dominant=self._theta_dominant(feats, labels), feats=feats, logits=logits)
        self.tracker.add(index, labels, used, values)
