"""The target logits of the built-in margin losses, written once for torch and for numpy.

Each built-in loss's target logit T(theta) (before the scale s) is a function here of the angle
``theta`` (radians), the loss's parameters and an array namespace ``xp``. The torch losses of
:mod:`noisyfr.losses` call these functions with tensors (``xp`` = their torch namespace) and
train through them; analysis calls them without torch on :class:`Dual` numbers (:data:`DUAL`),
which carry a numpy value and its derivative (forward mode) and so give T and dT/dcos(theta_y)
in one pass (:meth:`Reference.target_and_slope`). The parameters are checked here too
(:data:`CHECKS`), by the torch losses and by :func:`reference` alike: one rule for each.

A namespace ``xp`` has ``cos``, ``sin``, ``pow``, ``clip``, ``where``, ``floor``, ``remainder``,
``detach`` (the value without its derivative) and ``like(value, theta)`` (a number or an array as
an operand beside ``theta``).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from noisyfr import numeric
from noisyfr.errors import NoisyFRError

#: Allowed values of ``grad_mode``.
GRAD_MODES = ("exact", "detached")
#: cos(theta_y) is clamped to [-1 + COS_EPS, 1 - COS_EPS] before arccos, i.e. theta_y lies in
#: [~1.41e-3, pi - ~1.41e-3] rad; this keeps d arccos / d cos finite (<= ~707).
COS_EPS = 1e-6
#: The SphereFace iteration of the reference state: annealed, lambda = lambda_min.
ANNEALED = 10 ** 12
#: The built-in losses whose target logit is cos itself, whose margin needs the feature norms, and
#: whose logits are an unnormalised linear head's (the torch classes' ``identity_target``,
#: ``needs_norms`` and ``linear_head``; tests/test_targets.py checks that they agree).
IDENTITY_TARGETS, NEEDS_NORMS, LINEAR_HEADS = ("softmax", "normface"), ("magface",), ("softmax",)


def check_real(loss: str, name: str, value, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> float:
    """Validate a real-valued parameter with :mod:`noisyfr.numeric` (NaN and infinity refused,
    strings too: a loss takes numbers); raise :class:`NoisyFRError` naming it when invalid."""
    try:
        if isinstance(value, str):
            raise NoisyFRError(f"expected a number, got str {value!r}")
        if integer:
            v = numeric.real(value, None)
            if v != int(v):
                raise NoisyFRError("must be an integer")
            return numeric.integer(int(v), None, lo=None if lo is None else math.ceil(lo),
                                   hi=None if hi is None else math.floor(hi))
        return numeric.real(value, None, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    except NoisyFRError as exc:
        raise NoisyFRError(f"{loss}: invalid parameter {name}={value!r}: {exc}") from None


def check_bool(loss: str, name: str, value) -> bool:
    """``value`` if it is a bool, else :class:`NoisyFRError` naming the parameter."""
    if not isinstance(value, bool):
        raise NoisyFRError(f"{loss}: invalid parameter {name}={value!r}: must be true or false")
    return value


def check_base(loss: str, s, grad_mode, grad_floor, identity_target: bool) -> tuple[float, str, float | None]:
    """``(s, grad_mode, grad_floor)`` of any margin loss, checked. ``grad_floor`` needs the exact
    gradient and a margin (``identity_target`` False)."""
    s = check_real(loss, "s", s, lo=0.0, lo_open=True)
    if grad_mode not in GRAD_MODES:
        raise NoisyFRError(f"{loss}: invalid parameter grad_mode={grad_mode!r}: "
                           f"must be one of {', '.join(GRAD_MODES)}")
    if grad_floor is not None:
        grad_floor = check_real(loss, "grad_floor", grad_floor, lo=0.0)
        if identity_target:
            raise NoisyFRError(f"{loss}: invalid parameter grad_floor={grad_floor!r}: "
                               "the target logit is cos itself (no margin to floor)")
        if grad_mode != "exact":
            raise NoisyFRError(f"{loss}: invalid parameter grad_floor={grad_floor!r}: "
                               f"needs grad_mode=exact (grad_mode={grad_mode} has dT/dcos = 1 "
                               "already)")
    return s, grad_mode, grad_floor


def _angle_margin(loss: str, value) -> float:
    return check_real(loss, "m", value, lo=0.0, hi=math.pi, hi_open=True)


def _checks_magface(loss: str, p: dict) -> dict:
    out = {"easy_margin": check_bool(loss, "easy_margin", p["easy_margin"]),
           "l_a": check_real(loss, "l_a", p["l_a"], lo=0.0, lo_open=True)}
    out["u_a"] = check_real(loss, "u_a", p["u_a"], lo=out["l_a"], lo_open=True)
    out["l_m"] = check_real(loss, "l_m", p["l_m"], lo=0.0, hi=math.pi, hi_open=True)
    out["u_m"] = check_real(loss, "u_m", p["u_m"], lo=out["l_m"], hi=math.pi, hi_open=True)
    out["lambda_g"] = check_real(loss, "lambda_g", p["lambda_g"], lo=0.0)
    return out


#: Per built-in loss, ``check(loss, params) -> checked``: its own parameters (not s, grad_mode,
#: grad_floor), in the order they are checked.
CHECKS: dict[str, Callable[[str, dict], dict]] = {
    "softmax": lambda loss, p: {},
    "normface": lambda loss, p: {},
    "cosface": lambda loss, p: {"m": check_real(loss, "m", p["m"], lo=0.0, hi=2.0)},
    "arcface": lambda loss, p: {"m": _angle_margin(loss, p["m"]),
                                "easy_margin": check_bool(loss, "easy_margin", p["easy_margin"])},
    "combined": lambda loss, p: {"easy_margin": check_bool(loss, "easy_margin", p["easy_margin"]),
                                 "m1": check_real(loss, "m1", p["m1"], lo=0.0, lo_open=True, hi=10.0),
                                 "m2": check_real(loss, "m2", p["m2"], lo=0.0, hi=math.pi, hi_open=True),
                                 "m3": check_real(loss, "m3", p["m3"], lo=0.0, hi=2.0)},
    "expface": lambda loss, p: {"m": check_real(loss, "m", p["m"], lo=0.0, lo_open=True, hi=10.0)},
    "sphereface": lambda loss, p: {"m": check_real(loss, "m", p["m"], lo=1.0, hi=16.0),
                                   **{k: check_real(loss, k, p[k], lo=0.0)
                                      for k in ("lambda_base", "gamma", "power", "lambda_min")}},
    "curricularface": lambda loss, p: {"m": _angle_margin(loss, p["m"]),
                                       "alpha": check_real(loss, "alpha", p["alpha"], lo=0.0, lo_open=True, hi=1.0)},
    "adaface": lambda loss, p: {"m": check_real(loss, "m", p["m"], lo=0.0, hi=2.0),
                                "h": check_real(loss, "h", p["h"], lo=0.0, lo_open=True),
                                "t_alpha": check_real(loss, "t_alpha", p["t_alpha"], lo=0.0, lo_open=True, hi=1.0)},
    "magface": _checks_magface,
    "subcenter_arcface": lambda loss, p: {"m": _angle_margin(loss, p["m"]),
                                          "K": check_real(loss, "K", p["K"], lo=1, hi=64, integer=True)},
    "boundaryface": lambda loss, p: {
        "m": _angle_margin(loss, p["m"]),
        "start_epoch": check_real(loss, "start_epoch", p["start_epoch"], lo=0, integer=True),
        "penalty_weight": check_real(loss, "penalty_weight", p["penalty_weight"], lo=0.0)},
}


# ---- the target logits ---------------------------------------------------------------------
def easy(theta, target, on: bool, xp):
    """insightface's easy margin: ``target`` where cos(theta) > 0 (theta < 90 degrees), else
    cos(theta) (no margin, dT/dcos = 1); ``target`` unchanged when ``on`` is False."""
    if not on:
        return target
    return xp.where(theta < 0.5 * math.pi, target, xp.cos(theta))


def arc(theta, m, xp):
    """ArcFace target cos(theta + m), with the standard fallback cos(theta) - m*sin(m) when
    theta > pi - m (keeps the curve decreasing). ``m`` may be a number or an array like ``theta``."""
    m = xp.like(m, theta)
    return xp.where(theta + m <= math.pi, xp.cos(theta + m), xp.cos(theta) - m * xp.sin(m))


def cosine(theta, xp):
    """T(theta) = cos(theta) (softmax, NormFace)."""
    return xp.cos(theta)


def cosface(theta, m, xp):
    """T(theta) = cos(theta) - m."""
    return xp.cos(theta) - m


def arcface(theta, m, easy_margin, xp):
    """T(theta) = cos(theta + m), fallback beyond pi - m; with ``easy_margin`` cos(theta) from 90
    degrees on."""
    return easy(theta, arc(theta, m, xp), easy_margin, xp)


def combined(theta, m1, m2, m3, easy_margin, xp):
    """T(theta) = cos(m1*theta + m2) - m3, beyond theta_c the continuous decreasing fallback
    cos(theta) - (1 + cos(theta_c)) - m3; with ``easy_margin`` cos(theta) from 90 degrees on."""
    main = xp.cos(m1 * theta + m2) - m3
    theta_c = (math.pi - m2) / m1  # where m1*theta + m2 reaches pi
    if theta_c < math.pi:
        fallback = xp.cos(theta) - (1.0 + math.cos(theta_c)) - m3
        main = xp.where(theta <= theta_c, main, fallback)
    return easy(theta, main, easy_margin, xp)


def expface(theta, m, xp):
    """T(theta) = cos(pi * (theta/pi)^m)."""
    return xp.cos(math.pi * xp.pow(theta / math.pi, m))


def sphereface_lambda(lambda_base, gamma, power, lambda_min, iteration: int) -> float:
    """SphereFace's annealing weight max(lambda_min, lambda_base*(1 + gamma*iteration)^-power)."""
    return max(lambda_min, lambda_base * (1.0 + gamma * iteration) ** (-power))


def sphereface_psi(theta, m, xp):
    """A-Softmax psi(theta) = (-1)^k cos(m*theta) - 2k, k = floor(m*theta/pi)."""
    k = xp.floor(m * xp.detach(theta) / math.pi)
    sign = 1.0 - 2.0 * xp.remainder(k, 2.0)
    return sign * xp.cos(m * theta) - 2.0 * k


def sphereface(theta, m, lam, xp):
    """T(theta) = (lambda*cos(theta) + psi(theta)) / (1 + lambda)."""
    return (lam * xp.cos(theta) + sphereface_psi(theta, m, xp)) / (1.0 + lam)


def adaface(theta, m, z, xp):
    """T = cos(clip(theta - m*z, 1e-3, pi - 1e-3)) - m*(1 + z), z the norm's margin scaler."""
    return xp.cos(xp.clip(theta - m * z, 1e-3, math.pi - 1e-3)) - m * (1.0 + z)


def magface_margin(norms, l_a, u_a, l_m, u_m, xp):
    """MagFace's margin m(a), a = clip(|x|, l_a, u_a) (the mid-range margin when ``norms`` is None)."""
    if norms is None:
        return 0.5 * (l_m + u_m)
    a = xp.clip(norms, l_a, u_a)
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface(theta, margin, easy_margin, xp):
    """T = cos(theta + m(a)); with ``easy_margin`` cos(theta) beyond 90 degrees, else the ArcFace
    fallback beyond pi - m(a)."""
    return easy(theta, arc(theta, margin, xp), easy_margin, xp)


# ---- forward-mode derivatives on numpy ------------------------------------------------------
class Dual:
    """A numpy value with its derivative along one input (forward mode): arithmetic with numbers,
    arrays and other :class:`Dual` s follows the chain rule; comparisons compare the values."""

    __slots__ = ("val", "der")
    __array_ufunc__ = None  # numpy arrays hand their operators to ours

    def __init__(self, val, der):
        self.val, self.der = val, der

    @staticmethod
    def _parts(x):
        return (x.val, x.der) if isinstance(x, Dual) else (x, 0.0)

    def __add__(self, o):
        v, d = self._parts(o)
        return Dual(self.val + v, self.der + d)

    __radd__ = __add__

    def __sub__(self, o):
        v, d = self._parts(o)
        return Dual(self.val - v, self.der - d)

    def __rsub__(self, o):
        return Dual(o - self.val, -self.der)

    def __neg__(self):
        return Dual(-self.val, -self.der)

    def __mul__(self, o):
        v, d = self._parts(o)
        return Dual(self.val * v, self.der * v + self.val * d)

    __rmul__ = __mul__

    def __truediv__(self, o):
        v, d = self._parts(o)
        return Dual(self.val / v, (self.der * v - self.val * d) / (v * v))

    def __rtruediv__(self, o):
        return Dual(o / self.val, -o * self.der / (self.val * self.val))

    def __lt__(self, o):
        return self.val < self._parts(o)[0]

    def __le__(self, o):
        return self.val <= self._parts(o)[0]

    def __gt__(self, o):
        return self.val > self._parts(o)[0]

    def __ge__(self, o):
        return self.val >= self._parts(o)[0]


class _DualNamespace:
    """The ``xp`` of :class:`Dual` numbers (plain numbers and arrays pass through numpy)."""

    @staticmethod
    def cos(x):
        return Dual(np.cos(x.val), -np.sin(x.val) * x.der) if isinstance(x, Dual) else np.cos(x)

    @staticmethod
    def sin(x):
        return Dual(np.sin(x.val), np.cos(x.val) * x.der) if isinstance(x, Dual) else np.sin(x)

    @staticmethod
    def pow(x, e):
        if not isinstance(x, Dual):
            return np.power(x, e)
        return Dual(np.power(x.val, e), e * np.power(x.val, e - 1) * x.der)

    @staticmethod
    def clip(x, lo, hi):
        if not isinstance(x, Dual):
            return np.clip(x, lo, hi)
        inside = (x.val >= lo) & (x.val <= hi)  # the gradient of a clamp: 1 inside, ends included
        return Dual(np.clip(x.val, lo, hi), np.where(inside, x.der, 0.0))

    @staticmethod
    def where(cond, a, b):
        (av, ad), (bv, bd) = Dual._parts(a), Dual._parts(b)
        out = np.where(cond, av, bv)
        if not isinstance(a, Dual) and not isinstance(b, Dual):
            return out
        return Dual(out, np.where(cond, ad, bd))

    @staticmethod
    def floor(x):
        return np.floor(Dual._parts(x)[0])

    @staticmethod
    def remainder(x, y):  # x - y*floor(x/y): slope 1 between the jumps
        return Dual(np.remainder(x.val, y), x.der) if isinstance(x, Dual) else np.remainder(x, y)

    @staticmethod
    def detach(x):
        return Dual._parts(x)[0]

    @staticmethod
    def like(value, theta):
        return value


#: The namespace of :class:`Dual` numbers.
DUAL = _DualNamespace()


# ---- the reference losses of analysis -------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """A built-in loss in its reference state, without torch: what analysis evaluates (the
    counterfactual weights, the analytic curves). ``target(theta, norms, xp)`` is T(theta)."""

    name: str
    s: float
    grad_mode: str
    grad_floor: float | None
    target: Callable
    params: dict[str, Any] = field(default_factory=dict)
    needs_norms: bool = False
    linear_head: bool = False
    identity_target: bool = False

    @property
    def reference_norm(self) -> float | None:
        """The feature norm a loss that needs norms is read at without them: (l_a + u_a)/2."""
        return 0.5 * (self.params["l_a"] + self.params["u_a"]) if self.needs_norms else None

    def target_and_slope(self, theta, norms=None) -> tuple[np.ndarray, np.ndarray]:
        """``(T, dT/dcos)`` at the angles ``theta`` (radians, at the label trained on), float64,
        the slope *as the loss applies it*: as :meth:`noisyfr.losses.MarginLoss._target` does,
        cos(theta) is clamped to 1 -/+ :data:`COS_EPS` (no slope where it is clamped) before
        arccos, ``exact`` differentiates T, floored at ``grad_floor`` when set, and ``detached``
        has slope 1. A loss whose target is cos itself (softmax, NormFace) has T = cos(theta)
        and slope 1 everywhere, as it trains (no clamp)."""
        c = np.cos(np.asarray(theta, dtype=np.float64))
        if self.identity_target:
            return c, np.ones_like(c)
        lo, hi = -1 + COS_EPS, 1 - COS_EPS
        cc = np.clip(c, lo, hi)
        angle = np.arccos(cc)
        if self.grad_mode != "exact":
            return np.asarray(self.target(angle, norms, DUAL), dtype=np.float64), np.ones_like(c)
        inside = (c >= lo) & (c <= hi)
        d_angle = np.where(inside, -1.0 / np.sqrt(1.0 - cc * cc), 0.0)  # d arccos / d cos
        out = self.target(Dual(angle, d_angle), norms, DUAL)
        value, slope = Dual._parts(out)
        slope = np.broadcast_to(np.asarray(slope, dtype=np.float64), c.shape).copy()
        if self.grad_floor is not None:
            slope = np.maximum(slope, self.grad_floor)
        return np.asarray(value, dtype=np.float64), slope


def _target_of(name: str, p: dict) -> Callable:
    """T(theta, norms, xp) of built-in loss ``name`` with checked parameters ``p``, in its
    reference state (SphereFace annealed, AdaFace at z = 0, MagFace at the given norms or the
    mid-range margin, CurricularFace and BoundaryFace: their ArcFace target)."""
    if name in IDENTITY_TARGETS:
        return lambda t, n, xp: cosine(t, xp)
    if name == "cosface":
        return lambda t, n, xp: cosface(t, p["m"], xp)
    if name == "arcface":
        return lambda t, n, xp: arcface(t, p["m"], p["easy_margin"], xp)
    if name == "combined":
        return lambda t, n, xp: combined(t, p["m1"], p["m2"], p["m3"], p["easy_margin"], xp)
    if name == "expface":
        return lambda t, n, xp: expface(t, p["m"], xp)
    if name == "sphereface":
        lam = sphereface_lambda(p["lambda_base"], p["gamma"], p["power"], p["lambda_min"], ANNEALED)
        return lambda t, n, xp: sphereface(t, p["m"], lam, xp)
    if name == "adaface":
        return lambda t, n, xp: adaface(t, p["m"], 0.0, xp)
    if name == "magface":
        def target(t, n, xp):
            margin = magface_margin(n, p["l_a"], p["u_a"], p["l_m"], p["u_m"], xp)
            return magface(t, margin, p["easy_margin"], xp)
        return target
    return lambda t, n, xp: arc(t, p["m"], xp)  # curricularface, subcenter_arcface, boundaryface


def is_builtin(name) -> bool:
    """True when ``name`` is a built-in loss that no registration replaced in this process (a
    plugin may register its own class under a built-in's name)."""
    if not isinstance(name, str) or name not in CHECKS:
        return False
    base = sys.modules.get("noisyfr.losses.base")
    if base is None or not base.LOSSES:  # the registry is not loaded: the built-ins are all there is
        return True
    cls = base.LOSSES.get(name)
    return cls is not None and cls.__module__ in ("noisyfr.losses.margins", "noisyfr.losses.adaptive")


def check(name: str, params: dict) -> dict:
    """Check the parameters of a loss ``name`` as building it would (:func:`noisyfr.losses.build_loss`),
    without torch for a built-in loss: an unknown name or parameter or an invalid value ->
    NoisyFRError naming it. Returns the completed settings: ``s``, ``grad_mode``,
    ``grad_floor`` and the loss's own parameters, checked."""
    from noisyfr.labels import BUILTIN_PARAMETERS

    if not is_builtin(name):
        from noisyfr.losses import build_loss  # a plugin's loss: its own checks, in torch

        return build_loss(name, **params).hparams()
    allowed = BUILTIN_PARAMETERS[name]
    for key in params:
        if key not in allowed:
            raise NoisyFRError(f"{name}: unknown parameter {key!r}: accepted {', '.join(allowed)}")
    p = {**allowed, **params}
    s, mode, floor = check_base(name, p.get("s", 1.0), p["grad_mode"], p.get("grad_floor"),
                                name in IDENTITY_TARGETS)
    return {"s": s, "grad_mode": mode, "grad_floor": floor, **CHECKS[name](name, p)}


def reference(name: str, grad_mode: str, params: dict) -> Reference:
    """Built-in loss ``name`` with ``params`` (a config's, defaults filled in) in ``grad_mode``
    (``grad_floor`` dropped outside exact), checked as :func:`check` does."""
    if not is_builtin(name):
        raise NoisyFRError(f"unknown loss {name!r}: choose from {', '.join(sorted(CHECKS))}")
    params = {**params, "grad_mode": grad_mode}
    if grad_mode != "exact":
        params.pop("grad_floor", None)
    p = check(name, params)
    return Reference(name=name, s=p.pop("s"), grad_mode=p.pop("grad_mode"), grad_floor=p.pop("grad_floor"),
                     target=_target_of(name, p), params=p, needs_norms=name in NEEDS_NORMS,
                     linear_head=name in LINEAR_HEADS, identity_target=name in IDENTITY_TARGETS)


def parse_loss_spec(text: str, where: str = "--match") -> tuple[str, dict]:
    """``"expface:m=0.7,s=64"`` -> ``("expface", {"m": 0.7, "s": 64})`` (values parsed as YAML
    scalars; the name and parameters checked by :func:`check`: no torch for a built-in loss).
    One-line NoisyFRError naming ``where`` otherwise."""
    from noisyfr.io import parse_yaml

    name, _, rest = str(text).partition(":")
    name, params = name.strip(), {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise NoisyFRError(f"{where} {text!r}: expected NAME[:KEY=VALUE,...], got item {item!r}")
        params[key.strip()] = parse_yaml(value, f"{where} {text!r}")
    try:
        check(name, params)
    except NoisyFRError as exc:
        raise NoisyFRError(f"{where} {text!r}: {exc}") from None
    return name, params
