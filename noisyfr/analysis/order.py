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


def order_bins(hist: pd.DataFrame, keys: list[str], quantile: float) -> pd.DataFrame:
    """The fine bins (keys, epoch, yb) that hold the medians of the clean and the noisy samples
    and the ``quantile`` threshold of the clean ones (of all where none is clean)."""
    out = []
    for key, h in hist.groupby(keys + ["epoch"], sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        clean = group_counts(h, "clean")
        wanted = [("clean", 0.5), ("noisy", 0.5), ("clean" if clean.sum() > 0 else "all", quantile)]
        for group, q in wanted:
            found = [b for b, _ in rank_bins(group_counts(h, group), q)]
            # every bin between the two order statistics: the threshold may fall in one that
            # holds no sample of the group but samples of another
            for b in range(min(found, default=0), max(found, default=-1) + 1):
                out.append((*key, b))
    return pd.DataFrame(out, columns=keys + ["epoch", "yb"]).drop_duplicates()


