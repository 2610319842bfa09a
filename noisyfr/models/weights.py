"""Fit a state dict from elsewhere (insightface ``arcface_torch``, DDP, ``torch.compile``) to a backbone.

insightface's ``arcface_torch`` IResNet uses the parameter names of :mod:`noisyfr.models.iresnet`
(``conv1``, ``bn1``, ``prelu``, ``layer1.0.bn1`` ... ``bn2``, ``fc``, ``features``), so its
``backbone.pth`` loads once the wrappers are taken off. :func:`fit_state_dict` maps what differs:

- the prefixes a wrapper adds to every key: ``module.`` (DataParallel / DDP), ``_orig_mod.``
  (``torch.compile``), ``backbone.`` (a whole model saved around its backbone);
- BatchNorm ``num_batches_tracked`` counters missing from older files (filled with 0: they do not
  change an evaluation forward pass).

Anything else that does not fit (missing or unexpected keys, a tensor of another shape) is refused
with the keys named: a state dict for another architecture never loads partly.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from noisyfr.errors import NoisyFRError

#: prefixes taken off when every key carries one (applied repeatedly: ``module._orig_mod.``)
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")
#: how many key names an error message lists per kind
SHOWN_KEYS = 4


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _listed(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return f"{len(keys)} {what}: {shown}{more}"


def fit_state_dict(state: Mapping, model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """``state`` with its names mapped to ``model``'s; NoisyFRError naming ``what`` when it does not fit.

    The error lists the missing keys (the model has them, the file does not), the unexpected
    keys (the file has them, the model does not) and the shape mismatches, a few of each.
    """
    if not isinstance(state, Mapping) or not state:
        raise NoisyFRError(f"{what}: not a state dict (expected a non-empty mapping of tensors)")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise NoisyFRError(f"{what}: not a state dict (entry {bad[0]!r} is not a named tensor)")
    mapped = _strip_wrappers(dict(state))
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in mapped and key.endswith(".num_batches_tracked"):
            mapped[key] = torch.zeros_like(ref)
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    shapes = [f"{k} {list(mapped[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in mapped and mapped[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [_listed(w, ks) for w, ks in (("missing keys", missing), ("unexpected keys", unexpected),
                                               ("shape mismatches (file vs model)", shapes)) if ks]
        raise NoisyFRError(f"{what}: {'; '.join(parts)}")
    return mapped


def load_fitted(model: nn.Module, state: Mapping, what: str) -> nn.Module:
    """Load ``state`` into ``model`` through :func:`fit_state_dict` (strict); returns the model."""
    model.load_state_dict(fit_state_dict(state, model, what), strict=True)
    return model
