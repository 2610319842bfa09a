"""Synthetic-face renderer: identity parameters and the pixels of one image ``(seed, label, k, size)``.

Every identity is a set of stable parameters (head and jaw shape, hair style and colour, skin tone,
eye/brow/nose/mouth geometry, eye colour, beard, moles, freckles) drawn from
``SeedSequence(seed, spawn_key=(identity,))``. Every image of that identity is drawn from its own
``SeedSequence(seed, spawn_key=(identity, k + 1))`` and adds within-identity variation: pose (roll,
yaw, pitch, scale, shift), lighting (direction, strength, colour tint), expression (smile, open
mouth, blink, raised brows, gaze), occlusions (glasses, sunglasses, hat, face mask, a hand-like
bar), background clutter, clothing and pixel noise. An image therefore depends only on
``(seed, identity, k, size)``: not on the order of access, nor on ``ids``/``per_id`` (a smaller
spec is a prefix of a larger one).

Rendering is vectorised numpy drawing in a canonical face frame (:mod:`noisyfr.data.canvas`), so it
is fast enough to feed training directly from memory (:class:`~noisyfr.data.synthetic.SyntheticIndex`
renders lazily and caches).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from noisyfr.data.canvas import Canvas, rgb, shade
from noisyfr.errors import NoisyFRError

#: Bump when the drawing changes: recorded in ``synth.json`` so that old folders can be told apart.
RENDERER_VERSION = 1

MIN_SIZE, MAX_SIZE = 16, 1024

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


def seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    """``SeedSequence(seed, spawn_key=key)``: identity ``label`` uses key ``(label,)``, its image
    ``k`` uses ``(label, k + 1)``."""
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
    rng = np.random.default_rng(seed_sequence(seed, label))
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


class _IdentityColours:
    """An identity's colours as [3, 1, 1] arrays, with its darker shades computed once."""

    def __init__(self, p: IdentityParams):
        self.skin, self.hair = rgb(*p.skin), rgb(*p.hair_color)
        self.iris, self.lip = rgb(*p.iris_color), rgb(*p.lip_color)
        self._shades: dict = {}

    def shade(self, name: str, f: float) -> np.ndarray:
        key = (name, f)
        c = self._shades.get(key)
        if c is None:
            c = self._shades[key] = shade(getattr(self, name), f)
        return c


@lru_cache(maxsize=4096)
def _identity_colours(seed: int, label: int) -> _IdentityColours:
    return _IdentityColours(render_identity_params(seed, label))


_WHITE_EYE, _PUPIL, _GLINT = rgb(238, 236, 230), rgb(12, 10, 10), rgb(250, 250, 250)
_MOUTH_IN, _TEETH, _BLUSH = rgb(50, 18, 22), rgb(236, 232, 220), rgb(220, 90, 90)
_SUN_LENS, _LENS = rgb(18, 18, 22), rgb(200, 220, 235)
_MASKS = (rgb(220, 230, 240), rgb(120, 170, 210), rgb(40, 40, 45))


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
        return rgb(*(base + 0.5 * self.uniform(lo, hi) for _ in range(3)))

    def skin(self) -> np.ndarray:
        i = self.integers(len(_SKIN))
        j = min(len(_SKIN) - 1, i + 1)
        return (_SKIN[i] + self.random() * 0.5 * (_SKIN[j] - _SKIN[i])).reshape(3, 1, 1)



class _Face:
    """One image being drawn: identity, colours, random draws, pose, expression and canvas.

    The constructor takes the per-image draws of pose then expression, in that order (the order
    of draws is part of the output: changing it changes every image).
    """

    head_cv = -0.08   # canonical v of the cranium's centre

    def __init__(self, p: IdentityParams, col: _IdentityColours, draw: _Draws, size: int):
        self.p, self.col, self.draw = p, col, draw
        u = draw.uniform
        roll = u(-0.22, 0.22)
        yaw = u(-0.5, 0.5)
        pitch = u(-0.25, 0.25)
        scale = u(0.85, 1.12)
        tx, ty = u(-0.1, 0.1), u(-0.08, 0.08)
        self.cy, self.sy = math.cos(yaw), math.sin(yaw)
        self.cp, self.sp = math.cos(pitch), math.sin(pitch)
        self.smile = p.smile + u(-0.8, 1.6)
        self.mouth_open = u(0.2, 1.0) if draw.random() < 0.3 else 0.0
        self.blink = 0.15 if draw.random() < 0.08 else u(0.7, 1.15)
        self.brow_raise = u(-0.02, 0.05)
        self.gaze = (u(-0.35, 0.35), u(-0.2, 0.2))
        self.cv = Canvas(size, roll, scale, tx, ty)
        self.cranium_b = p.head_b * 0.92
        self.jaw_b = p.chin - p.jaw_y
        self.nose_tip = p.eye_y + p.nose_len
        self.mouth_y = self.nose_tip + p.mouth_dy

    def at(self, x, y, z):
        """Project a canonical 3-D point (depth z toward the viewer) for the current yaw/pitch."""
        return x * self.cy + z * self.sy, y * self.cp - z * self.sp * 0.6


def _paint_background(f: _Face) -> np.ndarray:
    """A gradient between two random colours plus up to four blobs; returns the pixel-centre grid
    in [-1, 1] (float32 [size]) that the lighting reuses."""
    cv_, draw, u = f.cv, f.draw, f.draw.uniform
    S = cv_.size
    g = (np.arange(S, dtype=np.float32) + 0.5) * np.float32(2.0 / S) - 1.0
    ang = u(0, 2 * math.pi)
    t = np.clip(0.5 + 0.5 * (np.float32(math.cos(ang)) * g[None, :]
                             + np.float32(math.sin(ang)) * g[:, None]), 0, 1)
    c1, c2 = draw.color(), draw.color()
    cv_.img[...] = c1
    cv_.img += t[None] * (c2 - c1)
    for _ in range(draw.integers(5)):
        sl, a = cv_.ellipse(u(-1.6, 1.6), u(-1.3, 1.6), u(0.1, 0.6), u(0.1, 0.6), rot=u(0, 3.2))
        cv_.paint(sl, a, draw.color(), opacity=u(0.5, 1.0))
    return g


def _paint_body(f: _Face) -> None:
    """Clothing, hair behind the head (long and volume styles), neck and ears."""
    cv_, p, col, at = f.cv, f.p, f.col, f.at
    hair = col.hair
    cv_.paint(*cv_.ellipse(0.0, 1.78, 1.25, 0.72), f.draw.color())
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


def _paint_head(f: _Face) -> tuple:
    """Cranium and jaw; returns ``(slices, alpha, u, v)`` of the cranium for the lighting."""
    cv_, p, skin = f.cv, f.p, f.col.skin
    hu, hv = f.at(0.0, f.head_cv, 0.0)
    head_sl, head_alpha = cv_.ellipse(hu, hv, p.head_a, f.cranium_b)
    cv_.paint(head_sl, head_alpha, skin)
    cv_.paint(*cv_.ellipse(*f.at(0.0, p.jaw_y, 0.05), p.jaw_a, f.jaw_b), skin)
    return head_sl, head_alpha, hu, hv


def _paint_skin_marks(f: _Face) -> None:
    """Blush, freckles, moles and beard."""
    cv_, p, col, at = f.cv, f.p, f.col, f.at
    for side in (-1.0, 1.0) if p.blush > 0.05 else ():
        bu, bv = at(side * p.eye_dx * 1.1, p.eye_y + p.nose_len * 0.85, 0.3)
        cv_.paint(*cv_.ellipse(bu, bv, 0.13 * f.cy, 0.08, soft=True),
                  _BLUSH, opacity=p.blush)
    for fu, fv in p.freckles:
        cv_.paint(*cv_.ellipse(*at(fu, fv, 0.3), 0.012, 0.012), col.shade("skin", 0.7), opacity=0.8)
    for mu, mv, mr in p.moles:
        cv_.paint(*cv_.ellipse(*at(mu, mv, 0.3), mr * 0.6, mr * 0.6), col.shade("skin", 0.35))
    if p.beard:
        sl, a = cv_.ellipse(*at(0.0, p.jaw_y + 0.02, 0.1), p.jaw_a * 1.04, f.jaw_b + 0.03)
        if sl is not None:
            a *= cv_.below(sl, f.nose_tip + 0.06)
            cv_.paint(sl, a, col.hair, opacity=0.85)


def _paint_eye(f: _Face, side: float) -> None:
    """One eye (shadow, lid outline, white, iris, pupil, glint) and its brow; ``side`` is -1 or 1."""
    cv_, p, col = f.cv, f.p, f.col
    eu, ev = f.at(side * p.eye_dx, p.eye_y, 0.25)
    ew = p.eye_w * f.cy * (1.0 - 0.25 * side * f.sy)
    eh = p.eye_h * f.blink
    cv_.paint(*cv_.ellipse(eu, ev - 0.01, ew * 1.25, p.eye_h * 1.5, soft=True),
              col.shade("skin", 0.72), opacity=0.7)
    cv_.paint(*cv_.ellipse(eu, ev, ew * 1.05 + 0.006, eh * 1.1 + 0.008), col.shade("skin", 0.4),
              opacity=0.9)                                 # eyelid outline
    sl, white = cv_.ellipse(eu, ev, ew, eh, on=cv_.window(eu, ev, ew + 0.06))
    if sl is not None:
        cv_.paint(sl, white, _WHITE_EYE)
        iu = eu + f.gaze[0] * ew + 0.35 * f.sy * ew
        iv = ev + f.gaze[1] * p.eye_h
        _, iris = cv_.ellipse(iu, iv, p.iris_r * f.cy, p.iris_r, on=sl)
        cv_.paint(sl, iris * white, col.iris)
        _, pupil = cv_.ellipse(iu, iv, p.iris_r * 0.45 * f.cy, p.iris_r * 0.45, on=sl)
        cv_.paint(sl, pupil * white, _PUPIL)
        if f.blink > 0.5:
            cv_.paint(*cv_.ellipse(iu - 0.012, iv - 0.012, 0.012, 0.012),
                      _GLINT, opacity=0.8)
    bu, bv = f.at(side * (p.eye_dx + 0.01), p.eye_y - p.brow_dy - f.brow_raise, 0.27)
    cv_.paint(*cv_.ellipse(bu, bv, p.brow_len * f.cy, p.brow_thick,
                           rot=-side * p.brow_tilt * 0.5, bend=p.brow_bend),
              col.shade("hair", 0.8))


def _paint_nose(f: _Face) -> None:
    """Nose: a side shadow (on a randomly lit side), the tip and the nostrils."""
    cv_, p, col, at, nose_tip = f.cv, f.p, f.col, f.at, f.nose_tip
    nu, nv = at(0.0, (p.eye_y + nose_tip) * 0.5, 0.4)
    lit_side = 1.0 if f.draw.random() < 0.5 else -1.0
    cv_.paint(*cv_.ellipse(nu + lit_side * p.nose_w * 0.35, nv, p.nose_w * 0.22, p.nose_len * 0.45,
                           soft=True), col.shade("skin", 0.7), opacity=0.6)
    tu, tv = at(0.0, nose_tip - 0.02, 0.5)
    cv_.paint(*cv_.ellipse(tu, tv, p.nose_w * 0.6 * f.cy, p.nose_w * 0.42, soft=True),
              col.shade("skin", 0.8), opacity=0.7)
    for side in (-1.0, 1.0):
        su, sv = at(side * p.nose_w * 0.38, nose_tip + 0.012, 0.42)
        cv_.paint(*cv_.ellipse(su, sv, p.nose_w * 0.2 * f.cy, p.nose_w * 0.1), col.shade("skin", 0.3),
                  opacity=0.85)


def _paint_mouth(f: _Face) -> None:
    """Moustache, lips, and either the open mouth with teeth or the closed lips' line."""
    cv_, p, col, smile, mouth_open = f.cv, f.p, f.col, f.smile, f.mouth_open
    mu, mv = f.at(0.0, f.mouth_y, 0.3)
    mw = p.mouth_w * f.cy
    lip_h = p.lip_h + 0.05 * mouth_open
    if p.moustache:
        cv_.paint(*cv_.ellipse(mu, mv - lip_h - 0.035, mw * 0.95, 0.035, bend=1.5), col.hair,
                  opacity=0.9)
    cv_.paint(*cv_.ellipse(mu, mv, mw, lip_h, bend=smile), col.lip)
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


def _paint_hair(f: _Face) -> None:
    """Hair on top of the head down to the hairline (with fringe or side part), or the sides of a
    bald head."""
    cv_, p, hair, at = f.cv, f.p, f.col.hair, f.at
    if p.hair_style != "bald":
        hu2, hv2 = at(0.0, f.head_cv - 0.03, -0.05)
        sl, a = cv_.ellipse(hu2, hv2, p.head_a + p.hair_volume, f.cranium_b + p.hair_volume)
        if sl is not None:
            line = p.hairline + (0.12 if p.hair_style == "fringe" else 0.0)
            tilt = p.hair_part if p.hair_style == "side_part" else 0.0
            a *= cv_.below(sl, line - 0.5 * f.sp, tilt=tilt, sign=-1.0)
            cv_.paint(sl, a, hair)
        if p.hair_style == "fringe":
            fu, fv = at(0.0, p.hairline + 0.08, 0.2)
            cv_.paint(*cv_.ellipse(fu, fv - 0.5 * f.sp, p.head_a * 0.85, 0.14), hair)
    else:
        for side in (-1.0, 1.0):
            su, sv = at(side * p.head_a * 0.92, -0.25, -0.1)
            cv_.paint(*cv_.ellipse(su, sv, 0.08, 0.22), hair, opacity=0.8)


def _paint_glasses(f: _Face, sun: bool) -> None:
    """Glasses (faint lenses in a frame) or sunglasses (dark lenses), with the bridge."""
    cv_, p, u = f.cv, f.p, f.draw.uniform
    frame = f.draw.color(0, 120)
    lens_w, lens_h = u(0.13, 0.17), u(0.09, 0.12)
    for side in (-1.0, 1.0):
        gu, gv = f.at(side * p.eye_dx, p.eye_y, 0.35)
        lw = lens_w * f.cy
        sl, outer = cv_.ellipse(gu, gv, lw + 0.02, lens_h + 0.02)
        if sl is None:
            continue
        _, inner = cv_.ellipse(gu, gv, lw, lens_h, on=sl)
        if sun:
            cv_.paint(sl, outer, _SUN_LENS, opacity=0.92)
        else:
            cv_.paint(sl, inner, _LENS, opacity=0.15)
            cv_.paint(sl, outer * (1.0 - inner), frame)
    bu, bv = f.at(0.0, p.eye_y - 0.02, 0.4)
    cv_.paint(*cv_.rect(bu, bv, max(p.eye_dx - lens_w, 0.01) * f.cy + 0.01, 0.012), frame)


def _paint_occlusions(f: _Face) -> None:
    """Glasses 20 %, sunglasses 8 %, hat 15 %, face mask 8 %, a hand or bar across the face 20 %."""
    cv_, p, draw, u, at = f.cv, f.p, f.draw, f.draw.uniform, f.at
    r = draw.random()
    if r < 0.28:                               # glasses (0.2) or sunglasses (0.08)
        _paint_glasses(f, sun=r < 0.08)
    if draw.random() < 0.15:                   # hat
        color = draw.color()
        hu3, hv3 = at(0.0, f.head_cv - f.cranium_b * 0.55, 0.0)
        cv_.paint(*cv_.rect(hu3, hv3 - 0.22, p.head_a + 0.06, 0.32), color)
        cv_.paint(*cv_.ellipse(hu3, hv3 + 0.1, p.head_a + 0.28, 0.07), shade(color, 0.8))
    if draw.random() < 0.08:                   # face mask over mouth and nose
        sl, a = cv_.ellipse(*at(0.0, f.mouth_y - 0.05, 0.3), p.head_a * 0.92, 0.42)
        if sl is not None:
            a *= cv_.below(sl, f.nose_tip - 0.1)
            cv_.paint(sl, a, _MASKS[draw.integers(len(_MASKS))])
    if draw.random() < 0.2:                    # a hand or bar across the face
        color = draw.skin() if draw.random() < 0.5 else draw.color()
        cv_.paint(*cv_.rect(u(-0.6, 0.6), u(-0.4, 0.8), u(0.4, 1.0), u(0.06, 0.15),
                            rot=u(-1.2, 1.2)), color)


def _light_and_noise(f: _Face, head: tuple, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Directional lighting (following the head's curvature), colour tint and uniform pixel noise;
    returns the finished uint8 image [3, size, size]."""
    u, img = f.draw.uniform, f.cv.img
    head_sl, head_alpha, hu, hv = head
    lang = u(0, 2 * math.pi)
    lx, ly = np.float32(math.cos(lang)), np.float32(math.sin(lang))
    strength = u(0.0, 0.55)
    shade_ = np.float32(u(0.7, 1.15)) + np.float32(0.25 * strength) * (lx * g[None, :] + ly * g[:, None])
    if head_sl is not None:
        U, V = f.cv.local(head_sl, hu, hv, 0.0)
        nx = np.clip(U * np.float32(1.0 / f.p.head_a), -1, 1)
        ny = np.clip(V * np.float32(1.0 / f.cranium_b), -1, 1)
        shade_[head_sl] += np.float32(strength) * (lx * nx + ly * ny) * head_alpha
    tint = rgb(*(1.0 + u(-0.1, 0.1) for _ in range(3)))
    img *= shade_[None]
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


def render_image_array(seed: int, label: int, k: int, size: int) -> np.ndarray:
    """Render image ``k`` of identity ``label`` as a uint8 numpy array [3, size, size] (CHW)."""
    if not (MIN_SIZE <= size <= MAX_SIZE and label >= 0 and k >= 0 and seed >= 0):
        raise NoisyFRError(f"render_image: need seed, label, k >= 0 and size in "
                           f"[{MIN_SIZE}, {MAX_SIZE}], got seed={seed} label={label} k={k} "
                           f"size={size}")
    p = render_identity_params(int(seed), int(label))
    rng = np.random.default_rng(seed_sequence(seed, label, k + 1))
    f = _Face(p, _identity_colours(int(seed), int(label)), _Draws(rng), size)
    g = _paint_background(f)
    _paint_body(f)
    head = _paint_head(f)
    _paint_skin_marks(f)
    for side in (-1.0, 1.0):
        _paint_eye(f, side)
    _paint_nose(f)
    _paint_mouth(f)
    _paint_hair(f)
    _paint_occlusions(f)
    return _light_and_noise(f, head, g, rng)


def render_image(seed: int, label: int, k: int, size: int) -> torch.Tensor:
    """Render image ``k`` of identity ``label``: uint8 tensor [3, size, size]."""
    return torch.from_numpy(render_image_array(seed, label, k, size))
