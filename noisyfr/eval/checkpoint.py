"""Rebuild a backbone from a training checkpoint (``checkpoints/epoch_<E>.pt`` / ``last.pt``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from noisyfr.dotted import get_dotted
from noisyfr.errors import NoisyFRError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is parsed by ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise NoisyFRError(f"device: unknown device {device!r} (use auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NoisyFRError(f"device: {device!r} requested but CUDA is not available")
    return dev


def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu"
                  ) -> tuple[torch.nn.Module, dict]:
    """Load a checkpoint written by the trainer; return (backbone in eval mode on ``device``, checkpoint).

    The checkpoint is a dict read with ``torch.load(weights_only=True)`` holding ``config``
    (``model.backbone``, ``model.embedding_dim``, ``data.image_size``, ``data.center_crop``) and
    ``model`` (the backbone state_dict). Any problem -> NoisyFRError naming the file.
    """
    from noisyfr.models import create_backbone

    path = Path(path)
    if not path.is_file():
        raise NoisyFRError(f"{path}: checkpoint file not found")
    dev = resolve_device(device)
    try:
        ckpt = torch.load(path, map_location=dev, weights_only=True)
    except Exception as exc:  # corrupt file, not a torch file, disallowed pickle content
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NoisyFRError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise NoisyFRError(f"{path}: not a noisyfr checkpoint (needs a dict with 'config' and 'model')")
    config = ckpt["config"]
    missing = object()
    name = get_dotted(config, "model.backbone", missing)
    if name is missing:
        raise NoisyFRError(f"{path}: checkpoint config lacks model.backbone")
    embedding_dim = get_dotted(config, "model.embedding_dim", 512)
    image_size = get_dotted(config, "data.image_size", 112)
    width = get_dotted(config, "model.width", 1.0)
    model = create_backbone(name, embedding_dim=embedding_dim, image_size=image_size, width=width)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise NoisyFRError(f"{path}: weights do not fit {name} (d={embedding_dim}, "
                           f"size={image_size}): {first}") from None
    return model.to(dev).eval(), ckpt
