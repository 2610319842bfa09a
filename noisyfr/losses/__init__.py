"""Margin-based softmax losses for face recognition, behind one registry.

``build_loss(name, **kwargs)`` builds a loss (``LOSSES`` lists them); ``MarginHead`` holds the
class centres and calls the loss. A new loss subclasses ``MarginLoss`` and is decorated with
``@register_loss("name")``. See docs/losses.md.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from noisyfr.errors import NoisyFRError
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


#: Loss parameters always shown in a loss label (when the loss has them), in this order.
LABEL_KEYS = ("s", "m", "m1", "m2", "m3", "K")


def loss_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of a config ``loss`` section that changes a number: ``name``, each
    constructor parameter (the section's value, else the loss's default; ``grad_floor`` only when
    set, as it changes nothing when None), ``sample_rate`` when set (Partial FC) and
    ``grad_mode``. An unregistered name gives the section as it is (``grad_mode`` defaulting to
    exact)."""
    section = {k: v for k, v in dict(section or {}).items()
               if not (k == "sample_rate" and v is None)}
    name = section.get("name", "arcface")
    out: dict[str, Any] = {"name": name}
    if isinstance(name, str) and name in LOSSES:
        for key, default in loss_parameters(name).items():
            out[key] = section.get(key, default)
        if out.get("grad_floor", 0) is None:
            del out["grad_floor"]
        if "sample_rate" in section:
            out["sample_rate"] = section["sample_rate"]
    else:
        out.update({k: v for k, v in section.items() if k != "name"})
    out.setdefault("grad_mode", "exact")
    return out


def loss_label(section: Mapping[str, Any]) -> str:
    """Short label of a loss setting, e.g. ``arcface s=32 m=0.5 detached``: the name, the scale
    and margins (:data:`LABEL_KEYS`), any other parameter that differs from the loss's default,
    and the gradient mode."""
    settings = loss_settings(section)
    name = settings.pop("name")
    mode = settings.pop("grad_mode")
    defaults = loss_parameters(name) if isinstance(name, str) and name in LOSSES else {}

    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    shown = [k for k in LABEL_KEYS if k in settings]
    shown += [k for k in settings if k not in LABEL_KEYS and settings[k] != defaults.get(k, object())]
    return " ".join([str(name), *(f"{k}={fmt(settings[k])}" for k in shown), str(mode)])


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
