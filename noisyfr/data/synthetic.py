"""Synthetic face-like identities: the embedded default data of noisyfr.

Every identity is a set of stable parameters (head and jaw shape, hair style and colour, skin tone,
eye/brow/nose/mouth geometry, eye colour, beard, moles, freckles) drawn from
``SeedSequence(seed, spawn_key=(identity,))``. Every image of that identity is drawn from its own
``SeedSequence(seed, spawn_key=(identity, k + 1))`` and adds within-identity variation: pose (roll,
yaw, pitch, scale, shift), lighting (direction, strength, colour tint), expression (smile, open
mouth, blink, raised brows, gaze), occlusions (glasses, sunglasses, hat, face mask, a hand-like
bar), background clutter, clothing and pixel noise. An image therefore depends only on
``(seed, identity, k, size)``: not on the order of access, nor on ``ids``/``per_id`` (a smaller
spec is a prefix of a larger one).

Rendering is vectorised numpy drawing in a canonical face frame (ellipses and rectangles evaluated
on coordinate grids, each restricted to its bounding box), so it is fast enough to feed training
directly from memory: :class:`SyntheticIndex` renders lazily and caches.
"""
from __future__ import annotations

import io
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from noisyfr.data.index import FaceIndex
from noisyfr.data.pairs import VerificationSet
from noisyfr.errors import NoisyFRError

#: Bump when the drawing changes: recorded in ``synth.json`` so that old folders can be told apart.
RENDERER_VERSION = 1

DEFAULTS = {"ids": 100, "per_id": 20, "size": 112, "seed": 0}
MIN_SIZE, MAX_SIZE = 16, 1024
MAX_IMAGES = 10_000_000
PNG_COMPRESS_LEVEL = 6

_VIEW = 1.22       # canonical half-extent shown at scale 1
_V_CENTRE = 0.06   # canonical v at the image centre (faces sit slightly high)

_SKIN = np.array([[255, 226, 200], [241, 196, 164], [226, 174, 134], [200, 140, 100],
                  [164, 108, 72], [118, 76, 50], [84, 56, 40]], dtype=np.float32)
_HAIR = np.array([[22, 20, 20], [58, 40, 28], [104, 72, 44], [186, 146, 88], [150, 64, 34],
                  [150, 150, 150], [228, 214, 186], [80, 60, 50]], dtype=np.float32)
_IRIS = np.array([[62, 40, 24], [104, 72, 40], [64, 106, 160], [74, 118, 76], [118, 128, 138],
                  [40, 30, 24]], dtype=np.float32)
HAIR_STYLES = ("bald", "short", "long", "fringe", "volume", "side_part")


@dataclass(frozen=True)
class IdentityParams:
    """The stable parameters of one synthetic identity.

    Lengths are canonical face units (the head spans about [-0.8, 0.8] x [-1, 1], v pointing
    down); colours are RGB tuples in [0, 255].
    """

    skin: tuple
    head_a: float
    head_b: float
    jaw_a: float
    jaw_y: float
    chin: float
    hair_color: tuple
    hair_style: str
    hairline: float
    hair_volume: float
    hair_part: float
    ear_size: float
    ear_y: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris_color: tuple
    iris_r: float
    brow_dy: float
    brow_len: float
    brow_thick: float
    brow_tilt: float
    brow_bend: float
    nose_len: float
    nose_w: float
    mouth_dy: float
    mouth_w: float
    lip_h: float
    lip_color: tuple
    smile: float
    beard: bool
    moustache: bool
    blush: float
    moles: tuple
    freckles: tuple


def _seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))


def _palette(rng: np.random.Generator, pal: np.ndarray, jitter: float) -> tuple:
    """A colour between two neighbouring palette entries, plus a little jitter."""
    i = rng.integers(len(pal))
    j = min(len(pal) - 1, i + 1)
    c = pal[i] + rng.random() * (pal[j] - pal[i]) * 0.5 + rng.normal(0, jitter, 3)
    return tuple(float(x) for x in np.clip(c, 0, 255))


@lru_cache(maxsize=4096)
def render_identity_params(seed: int, label: int) -> IdentityParams:
    """Stable parameters of identity ``label`` under ``seed`` (independent of how many ids exist)."""
    rng = np.random.default_rng(_seed_sequence(seed, label))
    u = rng.uniform
    skin = _palette(rng, _SKIN, 6.0)
    head_a, head_b = u(0.58, 0.80), u(0.86, 1.02)
    jaw_y = u(0.18, 0.34)
    chin = u(0.88, 1.04)
    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.08, 0.28, 0.22, 0.16, 0.12, 0.14])]
    hair = _palette(rng, _HAIR, 8.0)
    eye_y = u(-0.14, 0.02)
    nose_len = u(0.22, 0.36)
    lip = np.array(skin) * np.array([0.78, 0.55, 0.55]) + np.array([30, 0, 4]) * u(0, 1)
    n_moles = int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))
    moles = tuple((u(-0.5, 0.5), u(-0.3, 0.7), u(0.018, 0.035)) for _ in range(n_moles))
    freckles = ()
    if rng.random() < 0.2:
        freckles = tuple((u(-0.45, 0.45), u(0.0, 0.35)) for _ in range(14))
    beard = bool(rng.random() < 0.22)
    return IdentityParams(
        skin=skin, head_a=head_a, head_b=head_b, jaw_a=head_a * u(0.55, 0.92), jaw_y=jaw_y,
        chin=chin, hair_color=hair, hair_style=style, hairline=u(-0.62, -0.36),
        hair_volume=u(0.03, 0.12), hair_part=u(-0.35, 0.35), ear_size=u(0.09, 0.15),
        ear_y=u(-0.02, 0.12), eye_y=eye_y, eye_dx=u(0.22, 0.34), eye_w=u(0.10, 0.15),
        eye_h=u(0.045, 0.075), iris_color=_palette(rng, _IRIS, 8.0), iris_r=u(0.04, 0.058),
        brow_dy=u(0.1, 0.17), brow_len=u(0.11, 0.19), brow_thick=u(0.016, 0.045),
        brow_tilt=u(-0.3, 0.3), brow_bend=u(0.0, 3.0), nose_len=nose_len, nose_w=u(0.07, 0.13),
        mouth_dy=u(0.16, 0.26), mouth_w=u(0.14, 0.25), lip_h=u(0.022, 0.048),
        lip_color=tuple(float(x) for x in np.clip(lip, 0, 255)), smile=u(-0.5, 1.5),
        beard=beard, moustache=bool(beard or rng.random() < 0.12), blush=u(0.0, 0.35),
        moles=moles, freckles=freckles,
    )


class _Canvas:
    """An RGB float32 image plus the canonical face coordinates (u, v) of every pixel."""

    def __init__(self, size: int, roll: float, scale: float, tx: float, ty: float):
        self.size = size
        self.k = size * scale / (2 * _VIEW)          # pixels per canonical unit
        self.c, self.s = math.cos(roll), math.sin(roll)
        self.pcx = size * (0.5 + 0.5 * tx)
        self.pcy = size * (0.5 + 0.5 * ty)
        p = np.arange(size, dtype=np.float32) + 0.5
        dx = (p - np.float32(self.pcx)) / np.float32(self.k)
        dy = (p - np.float32(self.pcy)) / np.float32(self.k)
        c, s = np.float32(self.c), np.float32(self.s)
        self.uv = np.empty((2, size, size), dtype=np.float32)
        self.u, self.v = self.uv[0], self.uv[1]
        np.add(c * dx[None, :], s * dy[:, None], out=self.u)
        np.add(c * dy[:, None] + np.float32(_V_CENTRE), -s * dx[None, :], out=self.v)
        self.img = np.empty((3, size, size), dtype=np.float32)   # planar RGB
        self._pair = np.empty((2, 1, 1), dtype=np.float32)       # scratch for (u, v) constants

    def window(self, cu: float, cv: float, r: float):
        """Pixel slices of the box holding a shape of canonical radius ``r`` around (cu, cv)."""
        du, dv = cu, cv - _V_CENTRE
        px = self.pcx + self.k * (self.c * du - self.s * dv)
        py = self.pcy + self.k * (self.s * du + self.c * dv)
        rp = r * self.k + 2.0
        i0, i1 = max(0, int(py - rp)), min(self.size, int(py + rp) + 2)
        j0, j1 = max(0, int(px - rp)), min(self.size, int(px + rp) + 2)
        if i0 >= i1 or j0 >= j1:
            return None
        return (slice(i0, i1), slice(j0, j1))

    def _local(self, sl, cu, cv, rot):
        U = self.u[sl] - cu
        V = self.v[sl] - cv
        if rot:
            cr, sr = math.cos(rot), math.sin(rot)
            U, V = cr * U + sr * V, cr * V - sr * U
        return U, V

    def ellipse(self, cu, cv, a, b, rot=0.0, bend=0.0, soft=False, on=None):
        """(slices, alpha) of an anti-aliased ellipse; ``bend`` curves it (v' = v + bend*u^2).

        ``soft`` gives a smooth falloff from the centre instead of a sharp edge. ``on``: evaluate
        on these window slices (to combine with another shape) instead of the ellipse's own box.
        Without ``on``, shapes smaller than a third of a pixel or outside the image give (None, None).
        """
        if on is None:
            if max(a, b) * self.k < 0.33:
                return None, None
            on = self.window(cu, cv, max(a, b) + abs(bend) * a * a)
            if on is None:
                return None, None
        sl = on
        # alpha = c0 - c*d with d = (U/a)^2 + (V/b)^2: c = 1 (soft) or half the minor radius in
        # pixels (a one-pixel anti-aliased edge); evaluated in place to keep numpy calls few.
        c = 1.0 if soft else 0.5 * min(a, b) * self.k
        c0 = 1.0 if soft else c + 0.5
        if not rot and not bend:
            # fast path (most shapes): both coordinates at once, fewer numpy calls
            pair = self._pair
            pair[0, 0, 0], pair[1, 0, 0] = cu, cv
            W = self.uv[:, sl[0], sl[1]] - pair
            rc = math.sqrt(c)
            pair[0, 0, 0], pair[1, 0, 0] = rc / a, rc / b
            W *= pair
            np.square(W, out=W)
            d = np.add(W[0], W[1])
            np.subtract(c0, d, out=d)
            return sl, _unit(d)
        U, V = self._local(sl, cu, cv, rot)
        if bend:
            V += bend * U * U
        np.square(U, out=U)
        U *= c / (a * a)
        np.square(V, out=V)
        V *= c / (b * b)
        np.subtract(c0, U, out=U)
        U -= V
        return sl, _unit(U)

    def rect(self, cu, cv, hw, hh, rot=0.0):
        """(slices, alpha) of an anti-aliased rectangle of half sizes (hw, hh) rotated by ``rot``."""
        sl = self.window(cu, cv, math.hypot(hw, hh))
        if sl is None:
            return None, None
        U, V = self._local(sl, cu, cv, rot)
        k = np.float32(self.k)
        a = _unit((np.float32(hw) - np.abs(U)) * k + np.float32(0.5))
        a *= _unit((np.float32(hh) - np.abs(V)) * k + np.float32(0.5))
        return sl, a

    def below(self, sl, v0, tilt=0.0, sign=1.0):
        """Alpha of the half-plane ``sign * (v - v0 - tilt*u) > 0`` on the window ``sl``."""
        d = (self.v[sl] - np.float32(v0) - np.float32(tilt) * self.u[sl]) * np.float32(sign * self.k)
        d += np.float32(0.5)
        return _unit(d)

    def paint(self, sl, alpha, color, opacity=1.0):
        if sl is None or opacity <= 0.0:
            return
        if opacity != 1.0:
            alpha = alpha * np.float32(opacity)
        region = self.img[:, sl[0], sl[1]]
        delta = color - region        # color: float32 [3, 1, 1]
        delta *= alpha
        region += delta


def _shade(color, f: float) -> np.ndarray:
    """``color`` darkened by the factor ``f`` <= 1."""
    return np.asarray(color, dtype=np.float32) * np.float32(f)


class _IdentityColours:
    """An identity's colours as [3, 1, 1] arrays, with its darker shades computed once."""

    def __init__(self, p: IdentityParams):
        self.skin, self.hair = _rgb(*p.skin), _rgb(*p.hair_color)
        self.iris, self.lip = _rgb(*p.iris_color), _rgb(*p.lip_color)
        self._shades: dict = {}

    def shade(self, name: str, f: float) -> np.ndarray:
        key = (name, f)
        c = self._shades.get(key)
        if c is None:
            c = self._shades[key] = _shade(getattr(self, name), f)
        return c


@lru_cache(maxsize=4096)
def _identity_colours(seed: int, label: int) -> _IdentityColours:
    return _IdentityColours(render_identity_params(seed, label))


def _unit(x: np.ndarray) -> np.ndarray:
    """Clip ``x`` to [0, 1] in place (two bare ufunc calls: cheaper than ``np.clip`` on small arrays)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def _rgb(*rgb) -> np.ndarray:
    """A colour as a float32 [3, 1, 1] array (broadcasts over planar [3, h, w] image regions)."""
    return np.array(rgb, dtype=np.float32).reshape(3, 1, 1)


_WHITE_EYE, _PUPIL, _GLINT = _rgb(238, 236, 230), _rgb(12, 10, 10), _rgb(250, 250, 250)
_MOUTH_IN, _TEETH, _BLUSH = _rgb(50, 18, 22), _rgb(236, 232, 220), _rgb(220, 90, 90)
_SUN_LENS, _LENS = _rgb(18, 18, 22), _rgb(200, 220, 235)
_MASKS = (_rgb(220, 230, 240), _rgb(120, 170, 210), _rgb(40, 40, 45))


class _Draws:
    """Scalar random draws for one image, taken from a block of uniforms drawn at once.

    Calling ``Generator.uniform`` once per scalar costs more than the drawing of small shapes;
    a fixed-size block keeps the stream deterministic (refilled the same way when exhausted).
    """

    BLOCK = 128

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._buf: list[float] = []

    def random(self) -> float:
        if not self._buf:
            self._buf = self.rng.random(self.BLOCK).tolist()[::-1]
        return self._buf.pop()

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def integers(self, n: int) -> int:
        return min(n - 1, int(self.random() * n))

    def color(self, lo: float = 20, hi: float = 235) -> np.ndarray:
        """A moderately saturated random colour [3, 1, 1]."""
        base = 0.5 * self.uniform(lo, hi)
        return _rgb(*(base + 0.5 * self.uniform(lo, hi) for _ in range(3)))

    def skin(self) -> np.ndarray:
        i = self.integers(len(_SKIN))
        j = min(len(_SKIN) - 1, i + 1)
        return (_SKIN[i] + self.random() * 0.5 * (_SKIN[j] - _SKIN[i])).reshape(3, 1, 1)


def render_image_array(seed: int, label: int, k: int, size: int) -> np.ndarray:
    """Render image ``k`` of identity ``label`` as a uint8 numpy array [3, size, size] (CHW)."""
    if not (MIN_SIZE <= size <= MAX_SIZE and label >= 0 and k >= 0 and seed >= 0):
        raise NoisyFRError(f"render_image: need seed, label, k >= 0 and size in "
                           f"[{MIN_SIZE}, {MAX_SIZE}], got seed={seed} label={label} k={k} "
                           f"size={size}")
    p = render_identity_params(int(seed), int(label))
    rng = np.random.default_rng(_seed_sequence(seed, label, k + 1))
    draw = _Draws(rng)
    u = draw.uniform

    # -------- per-image variation --------
    roll = u(-0.22, 0.22)
    yaw = u(-0.5, 0.5)
    pitch = u(-0.25, 0.25)
    scale = u(0.85, 1.12)
    tx, ty = u(-0.1, 0.1), u(-0.08, 0.08)
    cy_, sy_ = math.cos(yaw), math.sin(yaw)
    cp_, sp_ = math.cos(pitch), math.sin(pitch)

    def at(x, y, z):
        """Project a canonical 3-D point (depth z toward the viewer) for the current yaw/pitch."""
        return x * cy_ + z * sy_, y * cp_ - z * sp_ * 0.6

    smile = p.smile + u(-0.8, 1.6)
    mouth_open = u(0.2, 1.0) if draw.random() < 0.3 else 0.0
    blink = 0.15 if draw.random() < 0.08 else u(0.7, 1.15)
    brow_raise = u(-0.02, 0.05)
    gaze = (u(-0.35, 0.35), u(-0.2, 0.2))

    cv_ = _Canvas(size, roll, scale, tx, ty)
    img = cv_.img

    # -------- background: gradient + clutter --------
    S = size
    g = (np.arange(S, dtype=np.float32) + 0.5) * np.float32(2.0 / S) - 1.0
    ang = u(0, 2 * math.pi)
    t = np.clip(0.5 + 0.5 * (np.float32(math.cos(ang)) * g[None, :]
                             + np.float32(math.sin(ang)) * g[:, None]), 0, 1)
    c1, c2 = draw.color(), draw.color()
    img[...] = c1
    img += t[None] * (c2 - c1)
    for _ in range(draw.integers(5)):
        sl, a = cv_.ellipse(u(-1.6, 1.6), u(-1.3, 1.6), u(0.1, 0.6), u(0.1, 0.6), rot=u(0, 3.2))
        cv_.paint(sl, a, draw.color(), opacity=u(0.5, 1.0))

    col = _identity_colours(int(seed), int(label))
    skin, hair, iris_color, lip_color = col.skin, col.hair, col.iris, col.lip
    head_cv = -0.08
    cranium_b = p.head_b * 0.92

    # -------- clothing, hair behind the head, neck, ears --------
    cv_.paint(*cv_.ellipse(0.0, 1.78, 1.25, 0.72), draw.color())
    if p.hair_style == "long":
        cv_.paint(*cv_.ellipse(*at(0.0, 0.25, -0.3), p.head_a + 0.16, 1.15), hair)
    elif p.hair_style == "volume":
        cv_.paint(*cv_.ellipse(*at(0.0, -0.3, -0.3), p.head_a + 0.22 + p.hair_volume,
                               p.head_b * 0.85 + 0.12), hair)
    cv_.paint(*cv_.rect(*at(0.0, 1.05, -0.2), 0.17 + 0.2 * p.jaw_a, 0.38), col.shade("skin", 0.82))
    for side in (-1.0, 1.0):
        eu, ev = at(side * (p.head_a * 0.97), p.ear_y, -0.15)
        cv_.paint(*cv_.ellipse(eu, ev, p.ear_size * 0.55, p.ear_size), col.shade("skin", 0.92))
        cv_.paint(*cv_.ellipse(eu, ev, p.ear_size * 0.28, p.ear_size * 0.6, soft=True),
                  col.shade("skin", 0.7), opacity=0.6)

    # -------- head: cranium + jaw --------
    hu, hv = at(0.0, head_cv, 0.0)
    head_sl, head_alpha = cv_.ellipse(hu, hv, p.head_a, cranium_b)
    cv_.paint(head_sl, head_alpha, skin)
    jaw_b = p.chin - p.jaw_y
    cv_.paint(*cv_.ellipse(*at(0.0, p.jaw_y, 0.05), p.jaw_a, jaw_b), skin)

    # skin marks: blush, freckles, moles, beard
    for side in (-1.0, 1.0) if p.blush > 0.05 else ():
        bu, bv = at(side * p.eye_dx * 1.1, p.eye_y + p.nose_len * 0.85, 0.3)
        cv_.paint(*cv_.ellipse(bu, bv, 0.13 * cy_, 0.08, soft=True),
                  _BLUSH, opacity=p.blush)
    for fu, fv in p.freckles:
        cv_.paint(*cv_.ellipse(*at(fu, fv, 0.3), 0.012, 0.012), col.shade("skin", 0.7), opacity=0.8)
    for mu, mv, mr in p.moles:
        cv_.paint(*cv_.ellipse(*at(mu, mv, 0.3), mr * 0.6, mr * 0.6), col.shade("skin", 0.35))
    nose_tip = p.eye_y + p.nose_len
    mouth_y = nose_tip + p.mouth_dy
    if p.beard:
        sl, a = cv_.ellipse(*at(0.0, p.jaw_y + 0.02, 0.1), p.jaw_a * 1.04, jaw_b + 0.03)
        if sl is not None:
            a *= cv_.below(sl, nose_tip + 0.06)
            cv_.paint(sl, a, hair, opacity=0.85)

    # -------- eyes and brows --------
    for side in (-1.0, 1.0):
        eu, ev = at(side * p.eye_dx, p.eye_y, 0.25)
        ew = p.eye_w * cy_ * (1.0 - 0.25 * side * sy_)
        eh = p.eye_h * blink
        cv_.paint(*cv_.ellipse(eu, ev - 0.01, ew * 1.25, p.eye_h * 1.5, soft=True),
                  col.shade("skin", 0.72), opacity=0.7)
        cv_.paint(*cv_.ellipse(eu, ev, ew * 1.05 + 0.006, eh * 1.1 + 0.008), col.shade("skin", 0.4),
                  opacity=0.9)                                 # eyelid outline
        sl, white = cv_.ellipse(eu, ev, ew, eh, on=cv_.window(eu, ev, ew + 0.06))
        if sl is not None:
            cv_.paint(sl, white, _WHITE_EYE)
            iu = eu + gaze[0] * ew + 0.35 * sy_ * ew
            iv = ev + gaze[1] * p.eye_h
            _, iris = cv_.ellipse(iu, iv, p.iris_r * cy_, p.iris_r, on=sl)
            cv_.paint(sl, iris * white, iris_color)
            _, pupil = cv_.ellipse(iu, iv, p.iris_r * 0.45 * cy_, p.iris_r * 0.45, on=sl)
            cv_.paint(sl, pupil * white, _PUPIL)
            if blink > 0.5:
                cv_.paint(*cv_.ellipse(iu - 0.012, iv - 0.012, 0.012, 0.012),
                          _GLINT, opacity=0.8)
        bu, bv = at(side * (p.eye_dx + 0.01), p.eye_y - p.brow_dy - brow_raise, 0.27)
        cv_.paint(*cv_.ellipse(bu, bv, p.brow_len * cy_, p.brow_thick,
                               rot=-side * p.brow_tilt * 0.5, bend=p.brow_bend),
                  col.shade("hair", 0.8))

    # -------- nose --------
    nu, nv = at(0.0, (p.eye_y + nose_tip) * 0.5, 0.4)
    lit_side = 1.0 if draw.random() < 0.5 else -1.0
    cv_.paint(*cv_.ellipse(nu + lit_side * p.nose_w * 0.35, nv, p.nose_w * 0.22, p.nose_len * 0.45,
                           soft=True), col.shade("skin", 0.7), opacity=0.6)
    tu, tv = at(0.0, nose_tip - 0.02, 0.5)
    cv_.paint(*cv_.ellipse(tu, tv, p.nose_w * 0.6 * cy_, p.nose_w * 0.42, soft=True),
              col.shade("skin", 0.8), opacity=0.7)
    for side in (-1.0, 1.0):
        su, sv = at(side * p.nose_w * 0.38, nose_tip + 0.012, 0.42)
        cv_.paint(*cv_.ellipse(su, sv, p.nose_w * 0.2 * cy_, p.nose_w * 0.1), col.shade("skin", 0.3),
                  opacity=0.85)

    # -------- mouth --------
    mu, mv = at(0.0, mouth_y, 0.3)
    mw = p.mouth_w * cy_
    lip_h = p.lip_h + 0.05 * mouth_open
    if p.moustache:
        cv_.paint(*cv_.ellipse(mu, mv - lip_h - 0.035, mw * 0.95, 0.035, bend=1.5), hair,
                  opacity=0.9)
    cv_.paint(*cv_.ellipse(mu, mv, mw, lip_h, bend=smile), lip_color)
    if mouth_open > 0:
        sl, inner = cv_.ellipse(mu, mv, mw * 0.8, 0.045 * mouth_open, bend=smile)
        cv_.paint(sl, inner, _MOUTH_IN)
        if sl is not None:
            _, teeth = cv_.ellipse(mu, mv - 0.03 * mouth_open, mw * 0.6, 0.02 * mouth_open + 0.005,
                                   bend=smile, on=sl)
            cv_.paint(sl, teeth * inner, _TEETH)
    else:
        cv_.paint(*cv_.ellipse(mu, mv, mw * 0.92, 0.006 + 0.004 * lip_h / 0.05, bend=smile),
                  col.shade("lip", 0.5))

    # -------- hair on top --------
    if p.hair_style != "bald":
        hu2, hv2 = at(0.0, head_cv - 0.03, -0.05)
        sl, a = cv_.ellipse(hu2, hv2, p.head_a + p.hair_volume, cranium_b + p.hair_volume)
        if sl is not None:
            line = p.hairline + (0.12 if p.hair_style == "fringe" else 0.0)
            tilt = p.hair_part if p.hair_style == "side_part" else 0.0
            a *= cv_.below(sl, line - 0.5 * sp_, tilt=tilt, sign=-1.0)
            cv_.paint(sl, a, hair)
        if p.hair_style == "fringe":
            fu, fv = at(0.0, p.hairline + 0.08, 0.2)
            cv_.paint(*cv_.ellipse(fu, fv - 0.5 * sp_, p.head_a * 0.85, 0.14), hair)
    else:
        for side in (-1.0, 1.0):
            su, sv = at(side * p.head_a * 0.92, -0.25, -0.1)
            cv_.paint(*cv_.ellipse(su, sv, 0.08, 0.22), hair, opacity=0.8)

    # -------- occlusions --------
    r = draw.random()
    if r < 0.28:                               # glasses (0.2) or sunglasses (0.08)
        sun = r < 0.08
        frame = draw.color(0, 120)
        lens_w, lens_h = u(0.13, 0.17), u(0.09, 0.12)
        for side in (-1.0, 1.0):
            gu, gv = at(side * p.eye_dx, p.eye_y, 0.35)
            lw = lens_w * cy_
            sl, outer = cv_.ellipse(gu, gv, lw + 0.02, lens_h + 0.02)
            if sl is None:
                continue
            _, inner = cv_.ellipse(gu, gv, lw, lens_h, on=sl)
            if sun:
                cv_.paint(sl, outer, _SUN_LENS, opacity=0.92)
            else:
                cv_.paint(sl, inner, _LENS, opacity=0.15)
                cv_.paint(sl, outer * (1.0 - inner), frame)
        bu, bv = at(0.0, p.eye_y - 0.02, 0.4)
        cv_.paint(*cv_.rect(bu, bv, max(p.eye_dx - lens_w, 0.01) * cy_ + 0.01, 0.012), frame)
    if draw.random() < 0.15:                   # hat
        color = draw.color()
        hu3, hv3 = at(0.0, head_cv - cranium_b * 0.55, 0.0)
        cv_.paint(*cv_.rect(hu3, hv3 - 0.22, p.head_a + 0.06, 0.32), color)
        cv_.paint(*cv_.ellipse(hu3, hv3 + 0.1, p.head_a + 0.28, 0.07), _shade(color, 0.8))
    if draw.random() < 0.08:                   # face mask over mouth and nose
        sl, a = cv_.ellipse(*at(0.0, mouth_y - 0.05, 0.3), p.head_a * 0.92, 0.42)
        if sl is not None:
            a *= cv_.below(sl, nose_tip - 0.1)
            cv_.paint(sl, a, _MASKS[draw.integers(len(_MASKS))])
    if draw.random() < 0.2:                    # a hand or bar across the face
        color = draw.skin() if draw.random() < 0.5 else draw.color()
        cv_.paint(*cv_.rect(u(-0.6, 0.6), u(-0.4, 0.8), u(0.4, 1.0), u(0.06, 0.15),
                            rot=u(-1.2, 1.2)), color)

    # -------- lighting, colour tint, noise --------
    lang = u(0, 2 * math.pi)
    lx, ly = np.float32(math.cos(lang)), np.float32(math.sin(lang))
    strength = u(0.0, 0.55)
    shade = np.float32(u(0.7, 1.15)) + np.float32(0.25 * strength) * (lx * g[None, :] + ly * g[:, None])
    if head_sl is not None:
        U, V = cv_._local(head_sl, hu, hv, 0.0)
        nx = np.clip(U * np.float32(1.0 / p.head_a), -1, 1)
        ny = np.clip(V * np.float32(1.0 / cranium_b), -1, 1)
        shade[head_sl] += np.float32(strength) * (lx * nx + ly * ny) * head_alpha
    tint = _rgb(*(1.0 + u(-0.1, 0.1) for _ in range(3)))
    img *= shade[None]
    img *= tint
    sigma = u(1.5, 12.0)    # uniform noise (from random bytes) of std sigma: cheaper than normal
    noise = np.subtract(np.frombuffer(rng.bytes(img.size), dtype=np.uint8).reshape(img.shape),
                        np.float32(127.5), dtype=np.float32)
    noise *= np.float32(sigma * math.sqrt(12.0) / 256.0)
    img += noise
    img += np.float32(0.5)
    np.maximum(img, 0.0, out=img)
    np.minimum(img, 255.0, out=img)
    return img.astype(np.uint8)


def render_image(seed: int, label: int, k: int, size: int) -> torch.Tensor:
    """Render image ``k`` of identity ``label``: uint8 tensor [3, size, size]."""
    return torch.from_numpy(render_image_array(seed, label, k, size))


def encode_png(image: torch.Tensor | np.ndarray) -> bytes:
    """PNG bytes of a uint8 [3, H, W] tensor or array, with fixed settings (same image -> same bytes)."""
    arr = (image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="RGB").save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def check_params(ids, per_id, size, seed, where: str | None = "synthetic",
                 names: dict | None = None) -> tuple[int, int, int, int]:
    """Validate the four parameters; NoisyFRError ``"<where>: <name> must ..."`` otherwise.

    ``names`` renames parameters in messages (e.g. ``{"per_id": "--per-id"}`` for the CLI);
    ``where=None`` drops the prefix.
    """
    names = names or {}
    where = f"{where}: " if where else ""
    out = []
    for name, value, lo, hi in (("ids", ids, 1, MAX_IMAGES), ("per_id", per_id, 1, MAX_IMAGES),
                                ("size", size, MIN_SIZE, MAX_SIZE), ("seed", seed, 0, 2**63 - 1)):
        shown = names.get(name, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise NoisyFRError(f"{where}{shown} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise NoisyFRError(f"{where}{shown} must be in [{lo}, {hi}], got {value}")
        out.append(int(value))
    if out[0] * out[1] > MAX_IMAGES:
        raise NoisyFRError(f"{where}{names.get('ids', 'ids')} x {names.get('per_id', 'per_id')} = "
                           f"{out[0] * out[1]} images exceeds the limit {MAX_IMAGES}")
    return tuple(out)  # type: ignore[return-value]


def _parse_int_items(body: str, defaults: dict, where: str) -> dict:
    """``"ids=10,per-id=5"`` -> ``defaults`` updated with those integers (``-`` may replace ``_``);
    an unknown, repeated or valueless key, or a non-integer value, is a NoisyFRError naming ``where``."""
    params = dict(defaults)
    seen = set()
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in defaults:
            raise NoisyFRError(f"{where}: unknown key {key!r} (expected {', '.join(defaults)})")
        if not eq or not value.strip():
            raise NoisyFRError(f"{where}: key {key!r} needs a value ({key}=N)")
        if key in seen:
            raise NoisyFRError(f"{where}: key {key!r} given twice")
        seen.add(key)
        try:
            params[key] = int(value.strip())
        except ValueError:
            raise NoisyFRError(f"{where}: {key} must be an integer, got {value.strip()!r}") from None
    return params


def parse_spec(spec: str) -> dict:
    """Parse ``synthetic[:key=value,...]`` (keys ids, per_id, size, seed) into a full parameter dict."""
    if not isinstance(spec, str) or not (spec == "synthetic" or spec.startswith("synthetic:")):
        raise NoisyFRError(f"synthetic spec {spec!r}: must look like "
                           f"'synthetic:ids=100,per_id=20,size=112,seed=0'")
    body = spec[len("synthetic:"):] if spec.startswith("synthetic:") else ""
    params = _parse_int_items(body, DEFAULTS, f"synthetic spec {spec!r}")
    check_params(params["ids"], params["per_id"], params["size"], params["seed"],
                  f"synthetic spec {spec!r}")
    return params


class _RenderedImages:
    """Shared by :class:`SyntheticIndex` and :class:`SyntheticPairs`: image ``i`` is
    ``render_image(seed, first_label + i // per_id, i % per_id, size)``, rendered on first access
    and kept in a bounded LRU cache (``cache_mb`` megabytes, 0 disables it) that is not pickled
    (DataLoader workers start with an empty cache)."""

    first_label = 0
    _what = "image"

    def _init_cache(self, cache_mb: float) -> None:
        self._cache_max = max(0, int(cache_mb * 2**20 // (3 * self.size * self.size)))
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _check_index(self, i) -> int:
        n = self.ids * self.per_id
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"{self.source}: {self._what} index {i!r} out of range [0, {n})")
        return int(i) % n

    def identity_params(self, label: int) -> IdentityParams:
        """The stable parameters of identity ``label`` (an absolute label)."""
        return render_identity_params(self.seed, int(label))

    def load_image(self, i: int) -> torch.Tensor:
        """uint8 tensor [3, size, size] of image ``i`` (rendered once, then cached)."""
        i = self._check_index(i)
        img = self._cache.get(i)
        if img is not None:
            self._cache.move_to_end(i)
            return img.clone()
        j, k = divmod(i, self.per_id)
        img = render_image(self.seed, self.first_label + j, k, self.size)
        if self._cache_max:
            self._cache[i] = img
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
            return img.clone()
        return img

    def read_bytes(self, i: int) -> bytes:
        """PNG bytes of image ``i`` (decode them to get exactly :meth:`load_image`)."""
        return encode_png(self.load_image(i))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()   # don't ship rendered images to DataLoader workers
        return state


class SyntheticIndex(_RenderedImages, FaceIndex):
    """In-memory index of ``ids`` x ``per_id`` synthetic face-like images of ``size`` x ``size``.

    ``labels = repeat(arange(ids), per_id)``; identity names ``id0000``...; paths
    ``"<identity>/<k:03d>.png"`` (the layout ``noisyfr synth`` writes). Images are rendered on
    first access and kept in a bounded cache (``cache_mb`` megabytes, 0 disables it).
    """

    def __init__(self, ids: int = 100, per_id: int = 20, size: int = 112, seed: int = 0,
                 cache_mb: float = 512.0):
        self.ids, self.per_id, self.size, self.seed = check_params(
            ids, per_id, size, seed, "SyntheticIndex")
        self.source = self.spec
        width = max(4, len(str(self.ids - 1)))
        kwidth = max(3, len(str(self.per_id - 1)))
        self.identities = [f"id{i:0{width}d}" for i in range(self.ids)]
        self.labels = np.repeat(np.arange(self.ids, dtype=np.int64), self.per_id)
        self.paths = [f"{name}/{k:0{kwidth}d}.png" for name in self.identities
                      for k in range(self.per_id)]
        self._init_cache(cache_mb)

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "SyntheticIndex":
        """``SyntheticIndex.from_spec("synthetic:ids=100,per_id=20,size=112,seed=0")``; keys optional."""
        return cls(**parse_spec(spec), **kwargs)

    @property
    def spec(self) -> str:
        """The canonical spec string of this index (what :meth:`from_spec` reads back)."""
        return (f"synthetic:ids={self.ids},per_id={self.per_id},size={self.size},"
                f"seed={self.seed}")

    _what = "sample"


def montage(index: FaceIndex, ids: int = 8, per_id: int = 8) -> np.ndarray:
    """A uint8 [ids*H, per_id*W, 3] grid: row r holds the first ``per_id`` images of identity r."""
    rows = []
    for label in range(min(ids, index.num_identities)):
        where = np.flatnonzero(index.labels == label)[:per_id]
        rows.append(np.concatenate([index.load_image(int(i)).permute(1, 2, 0).numpy()
                                    for i in where], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------------------------
# Verification pairs over unseen synthetic identities
# ----------------------------------------------------------------------------------------------
PAIRS_PREFIX = "synthetic-pairs"
PAIRS_DEFAULTS = {"ids": 100, "per_id": 10, "first_id": 100_000, "pairs": 600, "size": 112,
                  "seed": 0}
MAX_PAIRS = 2_000_000
MAX_LABEL = 2**62


def _pairs_available(ids: int, per_id: int) -> tuple[int, int]:
    """(number of distinct same-identity pairs, number of distinct different-identity pairs)."""
    n = ids * per_id
    same = ids * (per_id * (per_id - 1) // 2)
    return same, n * (n - 1) // 2 - same


def check_pairs_params(ids, per_id, first_id, pairs, size, seed,
                       where: str = "synthetic-pairs") -> dict:
    """Validate the parameters of a synthetic verification set; NoisyFRError naming the bad one.

    ``ids`` >= 2 and ``per_id`` >= 2 (both kinds of pairs must exist), ``first_id`` >= 0,
    ``pairs`` even, >= 2 and at most the number of distinct same (and different) pairs,
    ``size`` in [16, 1024], ``seed`` >= 0. Returns the parameters as a dict of ints.
    """
    values = {"ids": ids, "per_id": per_id, "first_id": first_id, "pairs": pairs, "size": size,
              "seed": seed}
    bounds = {"ids": (2, MAX_IMAGES), "per_id": (2, MAX_IMAGES), "first_id": (0, MAX_LABEL),
              "pairs": (2, MAX_PAIRS), "size": (MIN_SIZE, MAX_SIZE), "seed": (0, 2**63 - 1)}
    out = {}
    for name, value in values.items():
        lo, hi = bounds[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise NoisyFRError(f"{where}: {name} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise NoisyFRError(f"{where}: {name} must be in [{lo}, {hi}], got {value}")
        out[name] = int(value)
    if out["ids"] * out["per_id"] > MAX_IMAGES:
        raise NoisyFRError(f"{where}: ids x per_id = {out['ids'] * out['per_id']} images exceeds "
                           f"the limit {MAX_IMAGES}")
    if out["first_id"] + out["ids"] > MAX_LABEL:
        raise NoisyFRError(f"{where}: first_id + ids must be <= {MAX_LABEL}")
    if out["pairs"] % 2:
        raise NoisyFRError(f"{where}: pairs must be even (half same, half different), "
                           f"got {out['pairs']}")
    same, diff = _pairs_available(out["ids"], out["per_id"])
    half = out["pairs"] // 2
    if half > same:
        raise NoisyFRError(f"{where}: pairs={out['pairs']} needs {half} distinct same-identity "
                           f"pairs but ids={out['ids']} x per_id={out['per_id']} has only {same}")
    if half > diff:  # pragma: no cover - unreachable with ids, per_id >= 2 and half <= same
        raise NoisyFRError(f"{where}: pairs={out['pairs']} needs {half} distinct "
                           f"different-identity pairs but only {diff} exist")
    return out


def parse_pairs_spec(spec: str) -> dict:
    """Parse ``synthetic-pairs[:key=value,...]`` (keys ids, per_id, first_id, pairs, size, seed;
    ``-`` may replace ``_``) into a full, validated parameter dict (defaults for missing keys)."""
    if not isinstance(spec, str) or not (spec == PAIRS_PREFIX or spec.startswith(PAIRS_PREFIX + ":")):
        raise NoisyFRError(f"synthetic pairs spec {spec!r}: must look like 'synthetic-pairs:"
                           f"ids=100,per_id=10,first_id=100000,pairs=600,size=112,seed=0'")
    where = f"synthetic pairs spec {spec!r}"
    params = _parse_int_items(spec[len(PAIRS_PREFIX) + 1:], PAIRS_DEFAULTS, where)
    return check_pairs_params(**params, where=where)


def _draw_unique(rng: np.random.Generator, need: int, n_images: int, draw, valid) -> np.ndarray:
    """``need`` distinct unordered pairs (a < b) by rejection: ``draw(m)`` -> two int64 arrays of
    candidates, ``valid(a, b)`` -> bool mask. Returns [need, 2] int64 in first-drawn order."""
    keys = np.empty(0, dtype=np.int64)
    while True:
        a, b = draw(2 * need + 64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        ok = (lo != hi) & valid(lo, hi)
        keys = np.concatenate([keys, lo[ok] * n_images + hi[ok]])
        _, first = np.unique(keys, return_index=True)
        if len(first) >= need:
            keys = keys[np.sort(first)[:need]]
            return np.stack([keys // n_images, keys % n_images], axis=1)


def sample_pairs(ids: int, per_id: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of a synthetic verification set: ``(pairs [P, 2] int64, issame [P] bool)``.

    Image ``i`` is image ``i % per_id`` of the ``i // per_id``-th identity. ``P/2`` distinct
    same-identity pairs, then ``P/2`` distinct different-identity pairs, each drawn uniformly
    without replacement from all unordered pairs of its kind with
    ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(2**32 - 1, 0)))`` (a stream that no
    identity or image uses: those have keys ``(label,)`` and ``(label, k + 1)``) and sorted (LFW-like order). Each pair is stored as ``(a, b)`` with ``a < b``.
    """
    p = check_pairs_params(ids, per_id, 0, pairs, MIN_SIZE, seed, where="sample_pairs")
    ids, per_id, half = p["ids"], p["per_id"], p["pairs"] // 2
    n = ids * per_id
    rng = np.random.default_rng(_seed_sequence(p["seed"], 2**32 - 1, 0))
    n_same, n_diff = _pairs_available(ids, per_id)
    labels = np.arange(n, dtype=np.int64) // per_id

    # same-identity pairs
    if 2 * half > n_same:       # dense: enumerate every candidate, pick without replacement
        a, b = np.triu_indices(per_id, 1)
        base = (np.arange(ids, dtype=np.int64) * per_id)[:, None]
        cand = np.stack([(base + a).ravel(), (base + b).ravel()], axis=1)
        same = cand[rng.choice(len(cand), half, replace=False)]
    else:
        def draw_same(m):
            who = rng.integers(ids, size=m, dtype=np.int64) * per_id
            return who + rng.integers(per_id, size=m), who + rng.integers(per_id, size=m)
        same = _draw_unique(rng, half, n, draw_same, lambda lo, hi: np.ones(len(lo), bool))

    # different-identity pairs
    if 2 * half > n_diff:       # dense (few identities, few images): enumerate
        a, b = np.triu_indices(n, 1)
        keep = labels[a] != labels[b]
        cand = np.stack([a[keep], b[keep]], axis=1).astype(np.int64)
        diff = cand[rng.choice(len(cand), half, replace=False)]
    else:
        diff = _draw_unique(rng, half, n,
                            lambda m: (rng.integers(n, size=m), rng.integers(n, size=m)),
                            lambda lo, hi: labels[lo] != labels[hi])

    blocks = [blk[np.lexsort((blk[:, 1], blk[:, 0]))] for blk in (same, diff)]
    out = np.concatenate(blocks).astype(np.int64)
    issame = np.repeat(np.array([True, False]), half)
    return out, issame


class SyntheticPairs(_RenderedImages, VerificationSet):
    """A verification set over synthetic identities ``first_id .. first_id + ids - 1``.

    Image ``i`` is ``render_image(seed, first_id + i // per_id, i % per_id, size)``: the same
    renderer and seed as :class:`SyntheticIndex`, so with ``first_id >= ids`` of a training index
    of the same seed none of these identities was seen in training. ``pairs``/``issame`` come from
    :func:`sample_pairs` (half same, half different, no duplicates, same block first). Images are
    rendered on first access and cached (``cache_mb``). ``name`` is ``"synthetic-pairs"``,
    ``source``/``spec`` the canonical spec string, ``labels`` the identity label of every image.
    """

    name = PAIRS_PREFIX

    def __init__(self, ids: int = 100, per_id: int = 10, first_id: int = 100_000,
                 pairs: int = 600, size: int = 112, seed: int = 0, cache_mb: float = 512.0):
        p = check_pairs_params(ids, per_id, first_id, pairs, size, seed, where="SyntheticPairs")
        self.ids, self.per_id, self.first_id = p["ids"], p["per_id"], p["first_id"]
        self.size, self.seed = p["size"], p["seed"]
        self.source = self.spec_for(p)
        self.labels = self.first_id + np.arange(self.ids * self.per_id, dtype=np.int64) // self.per_id
        self.pairs, self.issame = sample_pairs(self.ids, self.per_id, p["pairs"], self.seed)
        self._init_cache(cache_mb)

    @staticmethod
    def spec_for(p: dict) -> str:
        """Canonical spec string of a parameter dict."""
        return PAIRS_PREFIX + ":" + ",".join(f"{k}={p[k]}" for k in PAIRS_DEFAULTS)

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "SyntheticPairs":
        """``SyntheticPairs.from_spec("synthetic-pairs:ids=100,pairs=600")``; keys optional."""
        return cls(**parse_pairs_spec(spec), **kwargs)

    @property
    def spec(self) -> str:
        """The canonical spec string (what :meth:`from_spec` reads back)."""
        return self.source

    @property
    def num_images(self) -> int:
        return self.ids * self.per_id

    def image_name(self, i: int) -> str:
        label, k = divmod(int(i), self.per_id)
        return f"{self.source}[{i}] (id{self.first_id + label:04d}/{k:03d}.png)"

    @property
    def first_label(self) -> int:
        return self.first_id
