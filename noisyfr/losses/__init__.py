"""Margin-based softmax losses for face recognition, behind one registry.

``build_loss(name, **kwargs)`` builds a loss (``LOSSES`` lists them); ``MarginHead`` holds the
class centres and calls the loss. A new loss subclasses ``MarginLoss`` and is decorated with
``@register_loss("name")``. See docs/losses.md.
"""
from __future__ import annotations

import inspect

from noisyfr.errors import NoisyFRError
from noisyfr.labels import LABEL_KEYS, loss_label, loss_settings  # noqa: F401 (re-exported: without torch there)
from noisyfr.losses import margins as _margins  # noqa: F401  (registers the losses)
from noisyfr.losses.base import COS_EPS, GRAD_MODES, LOSSES, MarginLoss, MarginOutput, arc_target, register_loss

# The plain margins register before the adaptive losses: that is the order of LOSSES, so the
# import sorter must not move the adaptive import above the margins one.
# isort: split
from noisyfr.losses import adaptive as _adaptive  # noqa: F401
from noisyfr.losses.adaptive import SubcentreQuery
from noisyfr.losses.head import MarginHead


def loss_parameters(name: str) -> dict:
    """Constructor parameters of loss ``name`` with their defaults."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def _lookup(name):
    if not isinstance(name, str) or name not in LOSSES:
        raise NoisyFRError(f"unknown loss {name!r}: choose from {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def build_loss(name: str, **kwargs) -> MarginLoss:
    """Build the registered loss ``name`` with keyword parameters (``s``, ``m``, ``m1``/``m2``/``m3``,
    ``grad_mode``, ...). Unknown name or parameter, or an invalid value -> NoisyFRError naming it."""
    cls = _lookup(name)
    allowed = loss_parameters(name)
    for key in kwargs:
        if key not in allowed:
            raise NoisyFRError(f"{name}: unknown parameter {key!r}: accepted {', '.join(allowed)}")
    return cls(**kwargs)


__all__ = ["LOSSES", "register_loss", "build_loss", "loss_parameters", "loss_settings", "loss_label",
           "MarginHead", "MarginLoss", "MarginOutput", "SubcentreQuery", "GRAD_MODES", "COS_EPS",
           "arc_target"]
