"""Labels of the settings that change a number, without torch: a loss setting (:func:`loss_settings`,
:func:`loss_label`) and the trained head of a run over features (:func:`head_label`). Analysis
names runs with them; :mod:`noisyfr.losses` and :mod:`noisyfr.models.vector` re-export them.

A loss setting is completed with its loss's constructor defaults. They come from the live
registry (:data:`noisyfr.losses.LOSSES`, plugins included) whenever :mod:`noisyfr.losses` has been
imported in this process; otherwise from :data:`BUILTIN_PARAMETERS`, the built-in losses' defaults,
which are all a fresh registry holds (tests/test_torch_free.py checks that the two agree).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

#: Constructor parameters and defaults of the built-in losses, in registration order: what
#: ``noisyfr.losses.loss_parameters`` gives for each in a fresh registry.
BUILTIN_PARAMETERS: dict[str, dict[str, Any]] = {
    "softmax": {"grad_mode": "exact"},
    "normface": {"s": 64.0, "grad_mode": "exact"},
    "cosface": {"m": 0.35, "s": 64.0, "grad_mode": "exact", "grad_floor": None},
    "arcface": {"m": 0.5, "s": 64.0, "grad_mode": "exact", "grad_floor": None, "easy_margin": False},
    "combined": {"m1": 1.0, "m2": 0.3, "m3": 0.2, "s": 64.0, "grad_mode": "exact", "grad_floor": None,
                 "easy_margin": False},
    "expface": {"m": 0.7, "s": 64.0, "grad_mode": "exact", "grad_floor": None},
    "sphereface": {"m": 4, "s": 64.0, "lambda_base": 1000.0, "gamma": 0.12, "power": 1.0, "lambda_min": 5.0,
                   "grad_mode": "exact", "grad_floor": None},
    "curricularface": {"m": 0.5, "s": 64.0, "alpha": 0.01, "grad_mode": "exact", "grad_floor": None},
    "adaface": {"m": 0.4, "h": 0.333, "s": 64.0, "t_alpha": 0.01, "grad_mode": "exact", "grad_floor": None},
    "magface": {"s": 64.0, "l_a": 10.0, "u_a": 110.0, "l_m": 0.45, "u_m": 0.8, "lambda_g": 35.0,
                "easy_margin": True, "grad_mode": "exact", "grad_floor": None},
    "subcenter_arcface": {"m": 0.5, "s": 64.0, "K": 3, "grad_mode": "exact", "grad_floor": None},
    "boundaryface": {"m": 0.5, "s": 64.0, "start_epoch": 7, "penalty_weight": math.pi, "grad_mode": "exact",
                     "grad_floor": None},
}
#: Loss parameters always shown in a loss label (when the loss has them), in this order.
LABEL_KEYS = ("s", "m", "m1", "m2", "m3", "K")
#: Default ``depth`` of each vector backbone (:mod:`noisyfr.models.vector`).
DEFAULT_DEPTH = {"linear": 1, "mlp": 2}


def _parameters(name) -> dict[str, Any] | None:
    """The constructor defaults of loss ``name``, or None when no loss of that name is registered."""
    if not isinstance(name, str):
        return None
    losses = sys.modules.get("noisyfr.losses")
    if losses is not None and hasattr(losses, "loss_parameters"):  # the live registry, plugins included
        return losses.loss_parameters(name) if name in losses.LOSSES else None
    return dict(BUILTIN_PARAMETERS[name]) if name in BUILTIN_PARAMETERS else None


def is_registered(name) -> bool:
    """True when a loss of that name is registered (the live registry, or a built-in one)."""
    return _parameters(name) is not None


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
    params = _parameters(name)
    if params is not None:
        for key, default in params.items():
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
    defaults = _parameters(name) or {}

    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    shown = [k for k in LABEL_KEYS if k in settings]
    shown += [k for k in settings if k not in LABEL_KEYS and settings[k] != defaults.get(k, object())]
    return " ".join([str(name), *(f"{k}={fmt(settings[k])}" for k in shown), str(mode)])


def head_label(model_cfg) -> str | None:
    """The trained head of a run over features, as analysis conditions name it (``linear
    128->64``, ``mlp 128->512x1->64``), or None for an image backbone. Runs with different heads
    are different conditions: a head's capacity decides whether wrong labels can be fitted."""
    if not isinstance(model_cfg, dict) or model_cfg.get("backbone") not in DEFAULT_DEPTH:
        return None
    name, d_in, d_out = model_cfg["backbone"], model_cfg.get("input_dim"), model_cfg.get("embedding_dim")
    d_in = "?" if d_in is None else int(d_in)
    if name == "linear":
        return f"linear {d_in}->{d_out}"
    depth = int(model_cfg.get("depth") or DEFAULT_DEPTH[name])
    hidden = "?" if d_in == "?" else max(1, round(float(model_cfg.get("width", 1.0)) * d_in))
    return f"mlp {d_in}->{hidden}x{depth - 1}->{d_out}"
