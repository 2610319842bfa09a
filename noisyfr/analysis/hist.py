"""Dense arrays of one pass's aggregates (:class:`~noisyfr.analysis.engine.Parts`), and the
statistics that read them: exact order statistics, the binned AUC and its bound, sums per
noise type. One row (``g``) per keys + epoch, one column per noise type present, one bin per
fine histogram bin. Vectorised over every epoch of a run at once; the size is bounded by the
bins, not by the samples.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from noisyfr.analysis import engine
from noisyfr.analysis.engine import Parts

#: radians per fine bin
WIDTH = math.pi / engine.FINE_BINS


class Dense:
    """The aggregates of ``p`` as arrays: ``index`` (keys + epoch per row g, in sorted order),
    ``types`` (noise types present), ``H``/``W``/``WC`` [g, type, bin] (counts, weight sums and
    counts of logged weights of the fine histogram) and the cells summed per g and type
    (:meth:`cell`)."""

    def __init__(self, p: Parts):
        self.parts = p
        cols = p.keys + ["epoch"]
        self.cols = cols
        self.index = (p.cells[cols].drop_duplicates().sort_values(cols, kind="stable")
                      .reset_index(drop=True))
        self._mi = pd.MultiIndex.from_frame(self.index)
        # one run (the report's case): the epoch alone finds the row
        self._epochs = (self.index["epoch"].to_numpy(dtype=np.int64)
                        if self.index["epoch"].is_unique and self.index["epoch"].is_monotonic_increasing
                        else None)
        self.types = engine.noise_order(p.cells["noise"].unique())
        self._tix = {t: i for i, t in enumerate(self.types)}
        self.clean = self._tix.get("clean")
        G, T, B = len(self.index), len(self.types), engine.FINE_BINS
        h = p.hist
        gi, ti = self.gid(h), self.tid(h)
        yb = h["yb"].to_numpy(dtype=np.int64)
        ok = (gi >= 0) & (yb >= 0)
        flat = (gi * T + ti) * B + yb
        size = G * T * B
        self.H = np.bincount(flat[ok], h["n"].to_numpy(dtype=float)[ok], size).reshape(G, T, B)
        self.W = np.bincount(flat[ok], np.nan_to_num(h["wsum"].to_numpy(dtype=float))[ok], size).reshape(G, T, B)
        self.WC = np.bincount(flat[ok], h["wcount"].to_numpy(dtype=float)[ok], size).reshape(G, T, B)
        self._cells = {}
        self._cell_ids = None
        self.rows = None
        self.fetched: set[int] = set()
        if p.rows is not None:
            r = p.rows
            order_key = self.gid(r) * B + r["yb"].to_numpy(dtype=np.int64)
            sort = np.lexsort((r["theta_y"].to_numpy(dtype=np.float64), order_key))
            self.rows = {"key": order_key[sort], "theta": r["theta_y"].to_numpy(dtype=np.float64)[sort],
                         "t": self.tid(r)[sort], "w": r["w"].to_numpy(dtype=float)[sort]}
            self.fetched = set(np.unique(order_key).tolist())

    def gid(self, df: pd.DataFrame) -> np.ndarray:
        """Row g of each row of an aggregate table (-1 where none)."""
        if self._epochs is not None and len(self._epochs):
            e = df["epoch"].to_numpy(dtype=np.int64)
            g = np.searchsorted(self._epochs, e)
            g = np.minimum(g, len(self._epochs) - 1)
            return np.where(self._epochs[g] == e, g, -1)
        return self._mi.get_indexer(pd.MultiIndex.from_frame(df[self.cols]))

    def tid(self, df: pd.DataFrame) -> np.ndarray:
        """Type column of each row of an aggregate table."""
        codes, names = pd.factorize(df["noise"])  # each distinct name looked up once
        if (codes < 0).any():  # a missing name: as before (NaN, which no integer holds)
            return df["noise"].map(self._tix).to_numpy(dtype=np.int64)
        return np.array([self._tix[n] for n in names], dtype=np.int64)[codes]

    def cell_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`gid` and :meth:`tid` of the cells table (found once for every column)."""
        if self._cell_ids is None:
            self._cell_ids = (self.gid(self.parts.cells), self.tid(self.parts.cells))
        return self._cell_ids

    def cell(self, col: str) -> np.ndarray:
        """[g, type] sums of a cells column (NaN where every row of a g and type is NULL)."""
        if col not in self._cells:
            c = self.parts.cells
            gi, ti = self.cell_ids()
            v = c[col].to_numpy(dtype=float)
            out = np.zeros((len(self.index), len(self.types)))
            seen = np.zeros_like(out)
            np.add.at(out, (gi, ti), np.nan_to_num(v))
            np.add.at(seen, (gi, ti), ~np.isnan(v))
            self._cells[col] = np.where(seen > 0, out, np.nan)
        return self._cells[col]

    def mask(self, group: str) -> np.ndarray:
        """Boolean over types: ``clean``, ``noisy`` (every type but clean), ``all`` or one type."""
        names = np.array(self.types, dtype=object)
        if group == "all":
            return np.ones(len(names), bool)
        if group == "noisy":
            return names != "clean"
        return names == group

    def counts(self, group: str) -> np.ndarray:
        """[g, bin] counts of ``group``."""
        return self.H[:, self.mask(group), :].sum(axis=1)

    def quantile(self, group: str, q: float) -> np.ndarray:
        """[g] numpy's linear ``q`` quantile of ``group``'s theta_y, radians: exact from the
        fetched rows of the order statistics' bins, interpolated inside the bin where they are
        missing. NaN where the group is empty."""
        c = self.counts(group)
        n = c.sum(axis=1)
        cum = np.cumsum(c, axis=1)
        pos = q * (n - 1)
        out = np.full(len(n), np.nan)
        want = self.mask(group)
        for g in np.flatnonzero(n > 0):
            vals = []
            for k in sorted({math.floor(pos[g]), math.ceil(pos[g])}):
                b = int(np.searchsorted(cum[g], k, side="right"))
                j = int(k - (cum[g, b] - c[g, b]))
                vals.append(self._order_value(g, b, j, want, c[g, b]))
            out[g] = vals[0] + (pos[g] - math.floor(pos[g])) * (vals[-1] - vals[0])
        return out

    def _order_value(self, g: int, b: int, j: int, want: np.ndarray, count: float) -> float:
        """The ``j``-th smallest theta of the wanted types in bin ``b`` of row ``g``."""
        if g * engine.FINE_BINS + b in self.fetched:
            theta = self._bin_rows(g, b, want)[0]
            if j < len(theta):
                return float(theta[j])
        return (b + (j + 0.5) / count) * WIDTH  # not fetched: placed by rank inside the bin

    def _bin_rows(self, g: int, b: int, want: np.ndarray | None = None):
        """``(theta, type, w)`` of the fetched rows of bin ``b`` of row ``g`` (sorted by theta)."""
        key = g * engine.FINE_BINS + b
        r = self.rows
        lo, hi = np.searchsorted(r["key"], [key, key + 1])
        theta, t, w = r["theta"][lo:hi], r["t"][lo:hi], r["w"][lo:hi]
        if want is not None:
            keep = want[t]
            theta, t, w = theta[keep], t[keep], w[keep]
        return theta, t, w

    def auc(self, noisy: str = "noisy") -> tuple[np.ndarray, np.ndarray]:
        """[g] ROC AUC of theta for ``noisy`` (a group or a type) against the clean samples, a
        pair in one bin counted as a tie, and its bound (half the share of pairs sharing a bin:
        the most the exact AUC can differ). NaN where a side is empty."""
        c0, c1 = self.counts("clean"), self.counts(noisy)
        n0, n1 = c0.sum(axis=1), c1.sum(axis=1)
        below = np.cumsum(c0, axis=1) - c0
        den = n0 * n1
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (c1 * (below + 0.5 * c0)).sum(axis=1) / den
            bound = 0.5 * (c0 * c1).sum(axis=1) / den
        bad = den == 0
        auc[bad], bound[bad] = np.nan, np.nan
        return auc, bound

    def split(self, t: np.ndarray):
        """Per type, [g, type] count, weight sum and logged-weight count of theta_y <= ``t[g]``
        (the bins below t's and the fetched rows of t's own bin; where they are missing the
        bin goes to the side of its centre)."""
        G, T, B = self.H.shape
        below = [np.zeros((G, T)) for _ in range(3)]
        for g in range(G):
            if not t[g] == t[g]:
                for a in below:
                    a[g] = np.nan
                continue
            b = bin_of(t[g])
            for a, src in zip(below, (self.H, self.W, self.WC)):
                a[g] = src[g, :, :b].sum(axis=1)
            if g * B + b in self.fetched:
                theta, ty, w = self._bin_rows(g, b)
                inside = theta <= t[g]
                np.add.at(below[0][g], ty[inside], 1.0)
                np.add.at(below[1][g], ty[inside], np.nan_to_num(w[inside]))
                np.add.at(below[2][g], ty[inside], ~np.isnan(w[inside]))
            elif (b + 0.5) * WIDTH <= t[g]:
                for a, src in zip(below, (self.H, self.W, self.WC)):
                    a[g] += src[g, :, b]
        return below


def bin_of(theta: float) -> int:
    """The fine bin of an angle, by the engine's own formula."""
    return min(max(math.floor(theta * (engine.FINE_BINS / math.pi)), 0), engine.FINE_BINS - 1)


def dense(p: Parts) -> Dense:
    """The :class:`Dense` arrays of ``p`` (built once per Parts)."""
    d = getattr(p, "_dense", None)
    if d is None:
        d = Dense(p)
        object.__setattr__(p, "_dense", d)
    return d


def dense_dominant(p: Parts, d: Dense) -> Dense:
    """The arrays of the theta_dominant histogram (``d`` itself where it equals theta_y)."""
    if p.dominant is None:
        return d
    q = Parts(p.keys, p.cells, p.dominant.assign(wsum=np.nan, wcount=0), p.wbins, None, p.weight,
              p.region_deg, p.bins)
    return Dense(q)
