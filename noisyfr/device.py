"""Which torch device a command runs on: one rule for training, evaluation and export."""
from __future__ import annotations

import os

import torch

from noisyfr.errors import NoisyFRError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as named.

    Under torch.distributed, plain ``cuda`` / ``auto`` with CUDA pick the local rank's GPU
    (``LOCAL_RANK``). An unknown name, or CUDA without a GPU, raises NoisyFRError naming it.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise NoisyFRError(f"device {device!r}: unknown device (use auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NoisyFRError(f"device {device!r}: requested but CUDA is not available")
        import torch.distributed as dist

        if dev.index is None and dist.is_available() and dist.is_initialized():
            dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return dev
