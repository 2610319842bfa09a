"""Margin-matched comparators: the ArcFace or CosFace margin whose target logit equals another
loss's at one angle, and the angles where the two still differ.

Two margins differ in *strength* (how much they lower the target logit where the clean samples
sit) and in *shape* (how that penalty changes with the angle). A comparator matched at theta0
has the same target logit T there, so what still differs between the two is shape:

- ArcFace: cos(theta0 + m) = T_L(theta0), i.e. m = arccos(T_L(theta0)) - theta0;
- CosFace: cos(theta0) - m = T_L(theta0), i.e. m = cos(theta0) - T_L(theta0).

ExpFace at m = 0.7 matched at 45 degrees gives ArcFace m = 0.40 rad (against the usual 0.5).
A loss is given as a name and its parameters (or a built loss); stateful losses are taken in the
reference state of :mod:`noisyfr.losses.curves` (SphereFace annealed, ...).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from noisyfr import numeric
from noisyfr.errors import NoisyFRError
from noisyfr.losses.base import MarginLoss
from noisyfr.targets import parse_loss_spec  # noqa: F401 (re-exported: without torch there)

#: Families a matched comparator can come from.
FAMILIES = ("arcface", "cosface")
#: Default tolerance of :func:`differing_band`, in target-logit units (before the scale s; at
#: s = 64 a difference of 0.01 is 0.64 in the logit).
DEFAULT_TOL = numeric.DEFAULT_MATCH_TOL
#: Angles (degrees) of the band scan: 0 to 180 in steps of 0.05.
BAND_STEP_DEG = 0.05


def _loss(loss: MarginLoss | str, params: Mapping | None = None) -> MarginLoss:
    """The loss in double precision, in its reference state, with the exact gradient (the value
    of T does not depend on the mode)."""
    if isinstance(loss, MarginLoss):
        return loss
    from noisyfr.losses.curves import reference_loss

    params = {k: v for k, v in dict(params or {}).items() if k not in ("name", "grad_mode")}
    return reference_loss(loss, "exact", params)


def target_values(loss: MarginLoss | str, theta, params: Mapping | None = None) -> np.ndarray:
    """T_L(theta) (before the scale s) at the angles ``theta`` (radians, array-like), float64.
    A loss that needs feature norms (MagFace) is read at its reference norm."""
    built = _loss(loss, params)
    if built.linear_head:
        raise NoisyFRError(f"{built.name}: its logits are not s * T(theta) (a linear head): no "
                           "target logit to match")
    t = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    norms = None
    if getattr(built, "needs_norms", False):
        norms = torch.full_like(t, float(built.reference_norm))
    with torch.no_grad():
        return built.double().target_logit(t, norms).numpy()


def matched_margin(loss: MarginLoss | str, theta0: float, family: str = "arcface",
                   params: Mapping | None = None) -> float:
    """The ``family`` margin m whose target logit equals ``loss``'s at ``theta0`` (radians):
    ArcFace m = arccos(T_L(theta0)) - theta0, CosFace m = cos(theta0) - T_L(theta0).
    NoisyFRError when no margin of the family's range matches (T_L(theta0) above cos(theta0):
    a negative margin; ArcFace beyond 180 degrees)."""
    if family not in FAMILIES:
        raise NoisyFRError(f"matched_margin: family {family!r}: choose from {', '.join(FAMILIES)}")
    theta0 = numeric.real(theta0, "theta0", lo=0.0, hi=math.pi)
    t0 = float(target_values(loss, [theta0], params)[0])
    name = getattr(loss, "name", loss)
    if family == "arcface":
        m = math.acos(min(1.0, max(-1.0, t0))) - theta0
        ok = 0.0 <= m and theta0 + m < math.pi
    else:
        m = math.cos(theta0) - t0
        ok = 0.0 <= m <= 2.0
    if not ok:
        raise NoisyFRError(f"matched_margin: no {family} margin matches {name} at "
                           f"{math.degrees(theta0):g} deg (T = {t0:.4f}, cos = {math.cos(theta0):.4f}; "
                           f"m would be {m:.4f})")
    return float(m)


def comparator(family: str, m: float, s: float, grad_mode: str = "exact") -> MarginLoss:
    """The ``family`` loss with margin ``m`` (a plain build: no easy margin, no floor)."""
    from noisyfr.losses import build_loss

    return build_loss(family, m=m, s=s, grad_mode=grad_mode).double()


def differing_band(loss: MarginLoss | str, m: float, family: str = "arcface",
                   tol: float = DEFAULT_TOL, params: Mapping | None = None) -> list[tuple[float, float]]:
    """The angle intervals (degrees, inclusive ends on a grid of :data:`BAND_STEP_DEG`) where
    ``loss``'s target logit and the ``family`` comparator's at margin ``m`` differ by more than
    ``tol`` (target-logit units); ``[]`` when they never do."""
    tol = numeric.real(tol, "tol", lo=0.0, lo_open=True)
    deg = np.arange(0.0, 180.0 + BAND_STEP_DEG / 2, BAND_STEP_DEG)
    theta = np.radians(deg)
    built = _loss(loss, params)
    other = comparator(family, m, float(built.s))
    with torch.no_grad():
        theirs = other.target_logit(torch.as_tensor(theta)).numpy()
    apart = np.abs(target_values(built, theta) - theirs) > tol
    bands, start = [], None
    for i, flag in enumerate(apart):
        if flag and start is None:
            start = i
        if start is not None and (not flag or i == len(apart) - 1):
            end = i if flag else i - 1
            bands.append((float(deg[start]), float(deg[end])))
            start = None
    return bands


def format_bands(bands: list[tuple[float, float]]) -> str:
    """``0-12.3, 61.2-180 deg`` (``none`` for no band)."""
    if not bands:
        return "none"
    return ", ".join(f"{a:g}-{b:g}" for a, b in bands) + " deg"


def matching_table(specs: list[tuple[str, dict]], angles_deg, tol: float = DEFAULT_TOL):
    """One row per loss setting and angle: ``loss``, ``theta0_deg``, ``T`` (the loss's target
    logit there), ``arcface_m``, ``cosface_m`` (NaN where none matches) and the bands where each
    matched comparator differs by more than ``tol``. ``specs``: (name, params) pairs."""
    import pandas as pd

    from noisyfr.losses import loss_label

    rows = []
    for name, params in specs:
        label = loss_label({"name": name, **params}).rsplit(" ", 1)[0]  # without the grad mode
        for a in angles_deg:
            theta0 = math.radians(numeric.real(a, "--at", lo=0.0, hi=180.0))
            row = {"loss": label, "theta0_deg": float(a),
                   "T": float(target_values(name, [theta0], params)[0]), "tol": tol}
            for fam in FAMILIES:
                try:
                    m = matched_margin(name, theta0, fam, params)
                    row[f"{fam}_m"] = m
                    row[f"{fam}_band"] = format_bands(differing_band(name, m, fam, tol, params))
                except NoisyFRError:
                    row[f"{fam}_m"], row[f"{fam}_band"] = math.nan, "no match"
            rows.append(row)
    return pd.DataFrame(rows)
