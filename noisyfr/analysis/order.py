"""The order statistics of the engine's fine histogram: which bins hold the medians and the
quantile region's threshold (the narrow scan then fetches those bins' rows, so they are exact),
and the size of the mixture's sample. Split out of :mod:`noisyfr.analysis.engine`, which
re-exports these names.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: theta_y values per epoch the Gaussian-mixture reference is fitted to: every sample up to
#: this many, else every k-th sample index (k = samples / this, rounded up).
SAMPLE_ROWS = 2048


#: the groups whose order statistics the report needs: (name, noise types or None for all)
ORDER_GROUPS = (("clean", ("clean",)), ("noisy", None), ("all", None))


def group_counts(h: pd.DataFrame, group: str) -> pd.Series:
    """Fine-bin counts of one epoch's histogram rows for ``group``: clean, noisy (any type but
    clean) or all."""
    if group == "clean":
        h = h[h["noise"] == "clean"]
    elif group == "noisy":
        h = h[h["noise"] != "clean"]
    return h.groupby("yb")["n"].sum()


def rank_bins(counts: pd.Series, q: float) -> list[tuple[int, int]]:
    """``[(bin, rank inside the bin)]`` of the order statistics numpy's linear ``q`` quantile
    interpolates between (one or two)."""
    counts = counts[counts > 0].sort_index()
    n = int(counts.sum())
    if n == 0:
        return []
    pos = q * (n - 1)
    cum = np.cumsum(counts.to_numpy())
    out = []
    for k in sorted({math.floor(pos), math.ceil(pos)}):
        i = int(np.searchsorted(cum, k, side="right"))
        out.append((int(counts.index[i]), int(k - (cum[i] - counts.iloc[i]))))
    return out


def _group_bins(gid: np.ndarray, yb: np.ndarray, n: np.ndarray, take: np.ndarray, groups: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero counts per (group, bin) of the rows ``take``, sorted by group and bin:
    ``(bins, counts, start of each group, cumulative counts)``."""
    width = int(yb.max()) + 2 if len(yb) else 1
    key, inv = np.unique(gid[take] * width + (yb[take] + 1), return_inverse=True)
    counts = np.bincount(inv.ravel(), n[take], minlength=len(key))
    keep = counts > 0
    key, counts = key[keep], counts[keep]
    starts = np.searchsorted(key // width, np.arange(groups + 1))
    return key % width - 1, counts, starts, np.cumsum(counts)


def order_bins(hist: pd.DataFrame, keys: list[str], quantile: float) -> pd.DataFrame:
    """The fine bins (keys, epoch, yb) that hold the medians of the clean and the noisy samples
    and the ``quantile`` threshold of the clean ones (of all where none is clean): per group of
    keys and epoch, the bins :func:`rank_bins` finds in :func:`group_counts`, with numpy over
    every group at once."""
    cols = keys + ["epoch"]
    if hist.empty:
        return pd.DataFrame(columns=cols + ["yb"])
    gid = hist.groupby(cols, sort=True, dropna=False).ngroup().to_numpy(dtype=np.int64)
    groups = int(gid.max()) + 1
    first = np.unique(gid, return_index=True)[1]
    yb = hist["yb"].to_numpy(dtype=np.int64)
    n = hist["n"].to_numpy(dtype=np.float64)
    clean = hist["noise"].to_numpy() == "clean"
    by = {"clean": _group_bins(gid, yb, n, clean, groups), "noisy": _group_bins(gid, yb, n, ~clean, groups),
          "all": _group_bins(gid, yb, n, np.ones(len(hist), dtype=bool), groups)}
    rows, bins = [], []
    for g in range(groups):
        has_clean = by["clean"][2][g + 1] > by["clean"][2][g]
        for group, q in (("clean", 0.5), ("noisy", 0.5), ("clean" if has_clean else "all", quantile)):
            b, _, starts, cum = by[group]
            lo, hi = starts[g], starts[g + 1]
            if hi == lo:
                continue
            base = cum[lo - 1] if lo else 0
            pos = q * (int(cum[hi - 1] - base) - 1)
            found = [int(b[lo + np.searchsorted(cum[lo:hi] - base, k, side="right")])
                     for k in sorted({math.floor(pos), math.ceil(pos)})]
            # every bin between the two order statistics: the threshold may fall in one that
            # holds no sample of the group but samples of another
            span = np.arange(min(found), max(found) + 1)
            rows.append(np.full(len(span), first[g]))
            bins.append(span)
    if not rows:
        return pd.DataFrame(columns=cols + ["yb"])
    at = np.concatenate(rows)
    out = hist[cols].iloc[at].reset_index(drop=True)
    out["yb"] = np.concatenate(bins)
    return out.drop_duplicates().reset_index(drop=True)
