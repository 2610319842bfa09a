"""Drawing primitives of the synthetic-face renderer: anti-aliased ellipses and rectangles on a canvas.

A :class:`Canvas` holds a planar RGB float32 image and the canonical face coordinates ``(u, v)`` of
every pixel (after roll, scale and shift); shapes are evaluated on those coordinate grids, each
restricted to its bounding box. Per-pixel work uses only exactly rounded float32 arithmetic, so the
same calls give the same pixels on every machine.
"""
from __future__ import annotations

import math

import numpy as np

_VIEW = 1.22       # canonical half-extent shown at scale 1
_V_CENTRE = 0.06   # canonical v at the image centre (faces sit slightly high)


def unit(x: np.ndarray) -> np.ndarray:
    """Clip ``x`` to [0, 1] in place (two bare ufunc calls: cheaper than ``np.clip`` on small arrays)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def rgb(*rgb) -> np.ndarray:
    """A colour as a float32 [3, 1, 1] array (broadcasts over planar [3, h, w] image regions)."""
    return np.array(rgb, dtype=np.float32).reshape(3, 1, 1)


def shade(color, f: float) -> np.ndarray:
    """``color`` darkened by the factor ``f`` <= 1."""
    return np.asarray(color, dtype=np.float32) * np.float32(f)


class Canvas:
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

    def local(self, sl, cu, cv, rot):
        """Coordinates (U, V) on the window ``sl`` relative to (cu, cv), rotated by ``rot``."""
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
            return sl, unit(d)
        U, V = self.local(sl, cu, cv, rot)
        if bend:
            V += bend * U * U
        np.square(U, out=U)
        U *= c / (a * a)
        np.square(V, out=V)
        V *= c / (b * b)
        np.subtract(c0, U, out=U)
        U -= V
        return sl, unit(U)

    def rect(self, cu, cv, hw, hh, rot=0.0):
        """(slices, alpha) of an anti-aliased rectangle of half sizes (hw, hh) rotated by ``rot``."""
        sl = self.window(cu, cv, math.hypot(hw, hh))
        if sl is None:
            return None, None
        U, V = self.local(sl, cu, cv, rot)
        k = np.float32(self.k)
        a = unit((np.float32(hw) - np.abs(U)) * k + np.float32(0.5))
        a *= unit((np.float32(hh) - np.abs(V)) * k + np.float32(0.5))
        return sl, a

    def below(self, sl, v0, tilt=0.0, sign=1.0):
        """Alpha of the half-plane ``sign * (v - v0 - tilt*u) > 0`` on the window ``sl``."""
        d = (self.v[sl] - np.float32(v0) - np.float32(tilt) * self.u[sl]) * np.float32(sign * self.k)
        d += np.float32(0.5)
        return unit(d)

    def paint(self, sl, alpha, color, opacity=1.0):
        """Blend ``color`` [3, 1, 1] into the window ``sl`` with coverage ``alpha`` x ``opacity``."""
        if sl is None or opacity <= 0.0:
            return
        if opacity != 1.0:
            alpha = alpha * np.float32(opacity)
        region = self.img[:, sl[0], sl[1]]
        delta = color - region        # color: float32 [3, 1, 1]
        delta *= alpha
        region += delta
