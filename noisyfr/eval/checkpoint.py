"""Rebuild a backbone from a training checkpoint (``checkpoints/epoch_<E>.pt`` / ``last.pt``)."""
from __future__ import annotations

import os

import torch

from noisyfr.device import resolve_device
from noisyfr.dotted import get_dotted
from noisyfr.errors import NoisyFRError
from noisyfr.io import load_checkpoint


def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu"
                  ) -> tuple[torch.nn.Module, dict]:
    """Load a checkpoint written by the trainer; return (backbone in eval mode on ``device``, checkpoint).

    The checkpoint is a dict read with ``torch.load(weights_only=True)`` holding ``config``
    (``model.backbone``, ``model.embedding_dim``, ``data.image_size``, ``data.center_crop``) and
    ``model`` (the backbone state_dict). Any problem -> NoisyFRError naming the file.
    """
    from noisyfr.models import create_backbone

    dev = resolve_device(device)
    ckpt = load_checkpoint(path, map_location=dev, required=("config", "model"))
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
