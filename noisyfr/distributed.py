"""torch.distributed helpers shared by the model-parallel head and the trainer: the process
group's rank and size, collectives with the gradients a data-parallel step needs, shard
gathering for checkpoints, and a BatchNorm synchronised over the ranks on CPU (gloo).

Every function here is a no-op (or the identity) without an initialised process group, so the
single-process path never touches ``torch.distributed``.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def torchrun_group(device: str = "auto"):
    """Inside ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) with no process group yet:
    initialise one for the block (NCCL when the run's ``device`` is CUDA, else gloo) and destroy
    it after; otherwise do nothing (a single process, or a group Ray Train already made)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
        dist.barrier()  # every rank done before any tears its connections down
    finally:
        dist.destroy_process_group()


def shard_range(total: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, count)`` of rank ``rank``'s contiguous share of ``total`` items: the first
    ``total % world`` ranks hold one more (arcface_torch's class split)."""
    base, extra = divmod(int(total), int(world))
    return base * rank + min(rank, extra), base + (1 if rank < extra else 0)


# torch renamed the tensor collectives (the old names warn from 2.14 on)
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` [n, ...] concatenated in rank order [world * n, ...], no gradient
    (every rank must pass the same shape)."""
    rank, world = rank_world()
    if world == 1:
        return x
    x = x.contiguous()
    out = x.new_empty((world * x.shape[0],) + tuple(x.shape[1:]))
    _all_gather(out, x)
    return out


class _GatherRows(torch.autograd.Function):
    """All-gather with the data-parallel gradient: forward concatenates every rank's rows;
    backward sums the gradients of all ranks (each holds a partial gradient of the same loss)
    and returns this rank's rows, times ``grad_scale``."""

    @staticmethod
    def forward(ctx, x, grad_scale):
        ctx.rows, ctx.scale = x.shape[0], float(grad_scale)
        return all_gather_rows(x)

    @staticmethod
    def backward(ctx, grad):
        rank, world = rank_world()
        out = grad.new_empty((ctx.rows,) + tuple(grad.shape[1:]))
        _reduce_scatter(out, grad.contiguous())
        if ctx.scale != 1.0:
            out.mul_(ctx.scale)
        return out, None


def gather_rows_with_grad(x: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
    """:func:`all_gather_rows` in the autograd graph: the gradient reaching ``x`` is the sum over
    the ranks of the gradient on its rows, times ``grad_scale`` (the world size when the
    parameters upstream are averaged by DistributedDataParallel, so that the average is the
    gradient of the loss)."""
    if rank_world()[1] == 1:
        return x if grad_scale == 1.0 else _Scale.apply(x, grad_scale)
    return _GatherRows.apply(x, grad_scale)


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` or ``max``) over the ranks; returns ``t`` (no gradient)."""
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient is summed over the ranks too (each rank's loss depends on
    the sum, so every rank's input gets the total)."""

    @staticmethod
    def forward(ctx, x):
        return all_reduce_(x.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_(grad.clone())


def gather_to_rank0(t: torch.Tensor) -> torch.Tensor | None:
    """Every rank's ``t`` (rows may differ in number) concatenated in rank order on rank 0, in
    host memory, one rank's shard at a time; None on the other ranks. Every rank must call it."""
    rank, world = rank_world()
    if world == 1:
        return t.detach().cpu()
    t = t.detach().contiguous()
    rows = torch.tensor([t.shape[0]], device=t.device)
    counts = all_gather_rows(rows).tolist()
    if rank != 0:
        dist.send(t, dst=0)
        return None
    parts = [t.cpu()]
    for src in range(1, world):
        buf = t.new_empty((counts[src],) + tuple(t.shape[1:]))
        dist.recv(buf, src=src)
        parts.append(buf.cpu())
    return torch.cat(parts)


# --------------------------------------------------------------------------- BatchNorm on CPU
class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (every rank's rows),
    for gloo on CPU where ``torch.nn.SyncBatchNorm`` refuses to run. Two all-reduces per layer
    (sum and count, then the sum of squared deviations; half precision is computed in float32);
    the gradient is exact
    because each all-reduce passes the summed gradient back. In eval mode, or without a
    process group, it is plain BatchNorm. Its state dict is BatchNorm's."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and rank_world()[1] > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        n_local = xf.new_full((1,), float(xf.numel() // xf.shape[1]))
        summed = _AllReduceSum.apply(torch.cat([xf.sum(dims), n_local]))
        n = summed[-1].detach()
        mean = summed[:-1] / n
        dev = xf - mean.view(shape)
        var = _AllReduceSum.apply((dev * dev).sum(dims)) / n
        y = dev * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None \
                    else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)),
                                                  alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised over the ranks: ``torch.nn.SyncBatchNorm`` on
    CUDA, :class:`CPUSyncBatchNorm` elsewhere (same parameters, buffers and state-dict keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
