"""Rebuild a backbone from a file of weights: a noisyfr checkpoint or a bare state dict.

- a training checkpoint (``checkpoints/epoch_<E>.pt`` / ``last.pt``) names its backbone in its
  config;
- a bare state dict (insightface ``arcface_torch``'s ``backbone.pth``: parameter name -> tensor)
  or an ``arcface_torch`` training checkpoint (its ``state_dict_backbone``) names nothing: the
  caller gives the architecture (``--backbone iresnet50``); names are mapped by
  :func:`noisyfr.models.weights.fit_state_dict` and a mismatch is refused with the keys named.

Files are read with the guarded loader :func:`noisyfr.io.load_checkpoint` (``weights_only=True``).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from noisyfr import numeric
from noisyfr.device import resolve_device
from noisyfr.dotted import get_dotted
from noisyfr.errors import NoisyFRError
from noisyfr.io import load_checkpoint

#: input of a bare state dict: insightface's aligned 112x112 crops, no centre crop
RAW_IMAGE_SIZE = 112
RAW_EMBEDDING_DIM = 512


def is_bare_state_dict(obj: Any) -> bool:
    """True for a mapping of parameter names to tensors (what ``module.state_dict()`` saves)."""
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def backbone_weights(obj: dict, path: str | os.PathLike) -> dict | None:
    """The backbone state dict in a loaded file that is not a noisyfr checkpoint, else None:
    the file itself when it is a bare state dict, its ``state_dict_backbone`` for an
    ``arcface_torch`` training checkpoint."""
    if is_bare_state_dict(obj):
        return obj
    inner = obj.get("state_dict_backbone") if isinstance(obj, dict) else None
    if inner is not None:
        if not is_bare_state_dict(inner):
            raise NoisyFRError(f"checkpoint {path}: state_dict_backbone is not a state dict")
        return inner
    return None


def _raw_config(backbone: str, embedding_dim: int) -> dict:
    return {"model": {"backbone": backbone, "embedding_dim": embedding_dim, "width": 1.0},
            "data": {"image_size": RAW_IMAGE_SIZE, "center_crop": 1.0}}


def _checked_sizes(config, path) -> tuple[int, int, float]:
    """``(embedding_dim, image_size, width)`` of a checkpoint's config, checked before a model is
    built from them (a checkpoint is input too: no NaN, no size that would exhaust memory), and
    its ``data.center_crop`` (used by eval and embed); NoisyFRError naming the file and key."""
    where = f"checkpoint {path}: config key"
    dim = numeric.integer(get_dotted(config, "model.embedding_dim", 512), f"{where} 'model.embedding_dim'",
                          lo=1, hi=numeric.MAX_EMBEDDING_DIM)
    size = numeric.integer(get_dotted(config, "data.image_size", 112), f"{where} 'data.image_size'",
                           lo=1, hi=numeric.MAX_IMAGE_SIZE)
    width = numeric.real(get_dotted(config, "model.width", 1.0), f"{where} 'model.width'",
                         lo=0.0, lo_open=True, hi=4.0)
    numeric.real(get_dotted(config, "data.center_crop", 1.0), f"{where} 'data.center_crop'",
                 lo=0.0, lo_open=True, hi=1.0)
    return dim, size, width


def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu",
                  backbone: str | None = None, embedding_dim: int | None = None
                  ) -> tuple[torch.nn.Module, dict]:
    """Load a backbone; return (backbone in eval mode on ``device``, checkpoint dict).

    A noisyfr checkpoint holds ``config`` (``model.backbone``, ``model.embedding_dim``,
    ``model.width``, ``data.image_size``, ``data.center_crop``) and ``model`` (the state dict);
    ``backbone``, when given, must agree with it. A bare state dict needs ``backbone``; it is
    built with ``embedding_dim`` (default 512) for 112x112 input, and the returned checkpoint is
    ``{"config": <that>, "model": <the state dict>}`` so that callers read both kinds alike. Any
    problem -> NoisyFRError naming the file.
    """
    from noisyfr.models import create_backbone
    from noisyfr.models.weights import load_fitted

    dev = resolve_device(device)
    obj = load_checkpoint(path, map_location=dev)
    weights = backbone_weights(obj, path)
    if weights is not None:
        if backbone is None:
            raise NoisyFRError(f"checkpoint {path}: a bare state dict (an insightface backbone.pth?) "
                               f"does not name its architecture: give --backbone NAME")
        ckpt = {"config": _raw_config(backbone, embedding_dim or RAW_EMBEDDING_DIM), "model": weights}
    else:
        absent = [k for k in ("config", "model") if k not in obj]
        if absent:
            raise NoisyFRError(f"checkpoint {path}: not a noisyfr checkpoint (missing "
                               f"{', '.join(absent)}) nor a state dict")
        ckpt = obj
        missing = object()
        name = get_dotted(ckpt["config"], "model.backbone", missing)
        if name is missing:
            raise NoisyFRError(f"{path}: checkpoint config lacks model.backbone")
        if backbone is not None and backbone != name:
            raise NoisyFRError(f"checkpoint {path}: holds a {name} (its config), not a {backbone}")
    config = ckpt["config"]
    name = get_dotted(config, "model.backbone")
    dim, image_size, width = _checked_sizes(config, path)
    if embedding_dim is not None and embedding_dim != dim:
        raise NoisyFRError(f"checkpoint {path}: its config has embedding_dim {dim}, not {embedding_dim}")
    model = create_backbone(name, embedding_dim=dim, image_size=image_size, width=width,
                            **_vector_args(config))
    load_fitted(model, ckpt["model"], f"checkpoint {path}: weights do not fit {name} "
                                      f"(d={dim}, size={image_size})")
    return model.to(dev).eval(), ckpt


def _vector_args(config) -> dict:
    """``depth`` and ``input_dim`` of a vector backbone's checkpoint config (a features run);
    nothing for an image backbone."""
    from noisyfr.models import BACKBONE_SPECS

    spec = BACKBONE_SPECS.get(get_dotted(config, "model.backbone"))
    if spec is None or not spec.vectors:
        return {}
    return {"depth": get_dotted(config, "model.depth"), "input_dim": get_dotted(config, "model.input_dim")}


def init_backbone(model: torch.nn.Module, path: str | os.PathLike, what: str = "model.init") -> None:
    """Copy the weights of ``path`` (a bare state dict, an ``arcface_torch`` checkpoint or a noisyfr
    checkpoint's ``model``) into ``model``; NoisyFRError naming ``what`` and the file on a mismatch."""
    from noisyfr.models.weights import load_fitted

    obj = load_checkpoint(path, map_location="cpu")
    weights = backbone_weights(obj, path)
    if weights is None:
        if not isinstance(obj.get("model"), dict):
            raise NoisyFRError(f"{what}: checkpoint {path}: neither a state dict nor a noisyfr "
                               f"checkpoint (no 'model' entry)")
        weights = obj["model"]
    load_fitted(model, weights, f"{what}: checkpoint {path}: weights do not fit the backbone")
