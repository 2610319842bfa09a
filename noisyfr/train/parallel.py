"""How the trainer lays backbone and head over the processes and the device: the head (replicated
:class:`~noisyfr.losses.MarginHead` or model-parallel
:class:`~noisyfr.losses.partial_fc.PartialFCHead`), DistributedDataParallel, SyncBatchNorm,
channels-last and ``torch.compile``, the checks of those options on this platform, and the
checkpoint state of a sharded head (gathered to rank 0, sliced back on resume).
"""
from __future__ import annotations

import platform
import shutil
from typing import Any

import torch
from torch import nn

from noisyfr.distributed import convert_sync_batchnorm, gather_to_rank0
from noisyfr.errors import NoisyFRError

#: Head state-dict entries that a Partial FC head shards by class (rows per class: K, 1).
_SHARDED_KEYS = {"weight": True, "subcentre_counts": False, "subcentre_counts_prev": False}


def _err(key: str, msg: str) -> NoisyFRError:
    return NoisyFRError(f"config key '{key}': {msg}")


# --------------------------------------------------------------------------- platform checks
def check_amp(amp: str, device: torch.device) -> None:
    """``optim.amp``: bf16 runs on CPU and CUDA; fp16 needs CUDA (its GradScaler)."""
    if amp == "fp16" and device.type != "cuda":
        raise _err("optim.amp", f"fp16 needs CUDA (loss scaling with a GradScaler); on "
                                f"{device.type} use bf16 or none")


def check_compile(device: torch.device) -> None:
    """``model.compile``: NoisyFRError when ``torch.compile`` cannot run here (dynamo does not
    support this Python/platform; on CPU no C++ compiler for inductor; on CUDA no Triton)."""
    try:
        import torch._dynamo as dynamo

        supported = dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001 - an import failure means the same
        supported = False
    if not supported:
        raise _err("model.compile", f"torch.compile is not supported on this platform (Python "
                                    f"{platform.python_version()}, {platform.system()}); set it "
                                    "to false")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise _err("model.compile", "torch.compile on CUDA needs Triton, which is not "
                                        "installed; set it to false")
        return
    from torch._inductor import config as inductor_config

    cxx = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) \
        else inductor_config.cpp.cxx
    if not cxx or shutil.which(str(cxx)) is None:
        raise _err("model.compile", f"torch.compile on {device.type} needs a C++ compiler "
                                    f"({cxx or 'g++'}) on PATH; install one or set it to false")


# --------------------------------------------------------------------------- building
def build_head(cfg: dict, num_classes: int, rank: int, world: int) -> nn.Module:
    """The margin head of a config: a :class:`~noisyfr.losses.partial_fc.PartialFCHead` when
    ``loss.sample_rate`` is set, else a :class:`~noisyfr.losses.MarginHead`."""
    from noisyfr.losses import MarginHead, build_loss
    from noisyfr.train.config import loss_kwargs

    loss = build_loss(cfg["loss"]["name"], **loss_kwargs(cfg["loss"]))
    dim = cfg["model"]["embedding_dim"]
    if cfg["loss"]["sample_rate"] is None:
        return MarginHead(dim, num_classes, loss)
    from noisyfr.losses.partial_fc import PartialFCHead

    try:
        return PartialFCHead(dim, num_classes, loss, cfg["loss"]["sample_rate"], seed=cfg["seed"],
                             rank=rank, world=world)
    except NoisyFRError as exc:
        raise _err("loss.sample_rate", str(exc).split(": ", 1)[-1]) from None


def wrap(model: nn.Module, head: nn.Module, cfg: dict, device: torch.device, world: int):
    """``(model_call, head_call)``: what the step runs. With ``world > 1`` the backbone is wrapped
    in DistributedDataParallel (its BatchNorms synchronised first with ``model.sync_bn``), and a
    replicated head too (a Partial FC head is model-parallel and stays as it is); with
    ``model.channels_last`` the backbone's weights are channels-last; with ``model.compile`` the
    backbone (or its DDP wrapper) is compiled. ``model`` and ``head`` themselves stay the plain
    modules (state dicts, evaluation)."""
    m = cfg["model"]
    if m["channels_last"]:
        model.to(memory_format=torch.channels_last)
    model_call, head_call = model, head
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        model_call = DDP(model, device_ids=ids)
        if not getattr(head, "sharded", False):  # its loss state is each rank's own
            head_call = DDP(head, device_ids=ids, **_no_buffer_sync())
    if m["compile"]:
        model_call = torch.compile(model_call)
    return model_call, head_call


def _no_buffer_sync() -> dict:
    """DDP keyword for not broadcasting buffers before every forward (renamed in torch 2.14)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def sync_batchnorm(model: nn.Module, cfg: dict, device: torch.device, world: int) -> nn.Module:
    """``model`` with its BatchNorms synchronised over the ranks when ``model.sync_bn`` and
    ``world > 1`` (before the optimiser sees the parameters: they are kept, not copied)."""
    if cfg["model"]["sync_bn"] and world > 1:
        return convert_sync_batchnorm(model, device)
    return model


# --------------------------------------------------------------------------- checkpoints
def head_state(head: nn.Module) -> dict[str, Any] | None:
    """The head's state dict for a checkpoint; a sharded head's shards gathered into the full
    (``MarginHead``-shaped) tensors on rank 0 (None on the other ranks). Every rank calls it."""
    state = head.state_dict()
    if not getattr(head, "sharded", False):
        return state
    full = {k: gather_to_rank0(v) if k in _SHARDED_KEYS else v for k, v in state.items()}
    return full if head.rank == 0 else None


def load_head_state(head: nn.Module, state: dict[str, Any]) -> None:
    """Load a checkpoint's head state (a sharded head takes its rows of the full tensors). A
    checkpoint from before the sub-centre counting window (``subcentre_counts`` only, counted
    from step 0) is read with no previous epoch's counts and epoch 0, so the next
    ``set_epoch`` turns its counts into the previous epoch's."""
    state = dict(state)
    if "subcentre_counts" in state and "subcentre_counts_prev" not in state:
        state["subcentre_counts_prev"] = torch.zeros_like(state["subcentre_counts"])
        state["subcentre_epoch"] = torch.zeros((), dtype=torch.long)
    if getattr(head, "sharded", False):
        state = {k: _rows_of(head, v, _SHARDED_KEYS[k]) if k in _SHARDED_KEYS else v
                 for k, v in state.items()}
    head.load_state_dict(state)


def _rows_of(head, full: torch.Tensor, per_k: bool) -> torch.Tensor:
    rows = head.K if per_k else 1
    return full[head.class_start * rows:(head.class_start + head.num_local) * rows]


def _param_index(optimizer, param) -> int:
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    return next(i for i, p in enumerate(flat) if p is param)


def optimizer_state(optimizer, head: nn.Module) -> dict[str, Any] | None:
    """The optimiser's state dict; with a sharded head, its per-parameter state (momentum) for
    the centres gathered on rank 0 like :func:`head_state` (None on the other ranks)."""
    state = optimizer.state_dict()
    if not getattr(head, "sharded", False):
        return state
    i = _param_index(optimizer, head.weight)
    per = state["state"].get(i, {})
    gathered = {k: gather_to_rank0(v) if torch.is_tensor(v) and v.dim() else v
                for k, v in sorted(per.items())}
    if head.rank != 0:
        return None
    if per:
        state["state"][i] = gathered
    return state


def load_optimizer_state(optimizer, head: nn.Module, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimiser state (a sharded head's centres take their rows)."""
    if getattr(head, "sharded", False):
        i = _param_index(optimizer, head.weight)
        per = state["state"].get(i)
        if per:
            state = {**state, "state": {**state["state"], i: {
                k: _rows_of(head, v, True) if torch.is_tensor(v) and v.dim() else v
                for k, v in per.items()}}}
    optimizer.load_state_dict(state)
