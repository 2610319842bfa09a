"""Pure label-noise functions: ``(labels, rng, options) -> noisy labels / chosen samples``.

Everything here is vectorised numpy (no per-sample Python loops), so a 5.8M-sample / 85k-identity
label set takes well under a second per step. Nothing here reads or writes files;
:func:`noisyfr.noise.inject` wires these functions together.

Conventions
-----------
- ``labels`` is an int64 array [N] with values in ``0 .. num_classes-1``.
- ``rng`` is a :class:`numpy.random.Generator`; the same generator state gives the same result.
- Exact stratified counts (:func:`stratified_counts`): a rate ``r`` over ``N`` samples hits exactly
  ``round(r * N)`` samples (Python/numpy rounding, half to even). Identity ``i`` with ``n_i`` samples
  gets ``floor(r * n_i)``; the remainder ``round(r * N) - sum(floor)`` goes one each to the
  identities with the largest fractional part ``r * n_i - floor(r * n_i)``, ties broken by a random
  permutation drawn from ``rng``.
"""
from __future__ import annotations

import numpy as np

# Added before flooring so that e.g. 0.29 * 100 = 28.999999999999996 floors to 29.
_EPS = 1e-9


def exact_count(rate: float, n: int) -> int:
    """Number of samples a ``rate`` hits among ``n``: ``round(rate * n)`` (half to even)."""
    return int(round(float(rate) * int(n)))


def stratified_counts(sizes: np.ndarray, rate: float, rng: np.random.Generator, *,
                      reference: int | None = None) -> np.ndarray:
    """Per-group counts for an exact, identity-stratified selection.

    ``sizes[i]`` is the number of selectable samples of identity ``i``. The total is
    ``round(rate * reference)`` (``reference`` defaults to ``sizes.sum()``; pass the full dataset
    size when some samples are no longer selectable, e.g. already hit by another noise type, so
    that the rate keeps meaning "fraction of the whole dataset"). Each identity's quota is
    proportional to its size, ``q_i = rate * reference / sizes.sum() * sizes[i]`` (which is
    ``rate * sizes[i]`` when everything is selectable); it gets ``floor(q_i)``, and the remainder
    goes one by one to the largest fractional parts, ties broken by a permutation drawn from
    ``rng``. Returns int64 counts with ``0 <= counts <= sizes`` and ``counts.sum() == total``.

    Raises ValueError when the total exceeds ``sizes.sum()``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    selectable = int(sizes.sum())
    ref = selectable if reference is None else int(reference)
    total = exact_count(rate, ref)
    tiebreak = rng.permutation(len(sizes))  # always drawn: keeps the rng stream independent of rate
    if total > selectable:
        raise ValueError(f"rate {rate} needs {total} samples but only {selectable} are available")
    if total == 0 or selectable == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    factor = float(rate) * (ref / selectable) if ref != selectable else float(rate)
    quota = sizes * factor
    floors = np.minimum(np.floor(quota + _EPS).astype(np.int64), sizes)
    frac = quota - floors
    remainder = total - int(floors.sum())
    if remainder > 0:
        # Largest fractional part first; ties in random (seeded) order; only groups with room.
        order = np.lexsort((tiebreak, -frac))
        order = order[floors[order] < sizes[order]]
        floors[order[:remainder]] += 1
    elif remainder < 0:  # only possible through float rounding: take from the smallest fractions
        order = np.lexsort((tiebreak, frac))
        order = order[floors[order] > 0]
        floors[order[:-remainder]] -= 1
    return floors


def select_per_group(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator,
                     eligible: np.ndarray | None = None) -> np.ndarray:
    """Choose ``counts[l]`` samples uniformly at random among the eligible samples of each label ``l``.

    Returns a bool mask [N]. Vectorised: one random key per eligible sample, one sort by
    ``(label, key)``, then each sample's rank inside its label is compared with the count.
    """
    return select_rounds(labels, [counts], rng, eligible) == 1


def select_rounds(labels: np.ndarray, rounds: list[np.ndarray], rng: np.random.Generator,
                  eligible: np.ndarray | None = None) -> np.ndarray:
    """Several disjoint per-label selections from one random order: int8 codes [N].

    ``rounds[k][l]`` samples of label ``l`` get code ``k + 1`` (0: not chosen). The eligible
    samples of each label are put in a uniformly random order (one sort of ``label + key``); the
    first ``rounds[0][l]`` get code 1, the next ``rounds[1][l]`` code 2, and so on. Each round is
    therefore a uniform random subset of what the earlier rounds left.
    """
    labels = np.asarray(labels)
    k = len(rounds[0]) if rounds else 0
    if eligible is None:
        idx = None
        lab = labels
    else:
        idx = np.flatnonzero(eligible)
        lab = labels[idx]
    # keys in [label, label + 0.5): never rounds up into the next label's range
    key = rng.random(len(lab))
    key *= 0.5
    key += lab
    order = np.argsort(key)
    del key
    # The sorted order holds label 0's samples first, then label 1's, ...: position p of label l
    # has rank p - start(l) inside its label. Round r takes ranks [lo_r(l), hi_r(l)), so the code
    # of every sorted position is one np.repeat over (label, round) runs; one scatter puts the
    # codes back in sample order (no per-sample gathers of labels or ranks).
    group_sizes = np.bincount(lab, minlength=k)
    g = len(group_sizes)
    runs = np.zeros((g, len(rounds) + 1), dtype=np.int64)  # per label: round 1, ..., rest
    for r, counts in enumerate(rounds):
        counts = np.asarray(counts, dtype=np.int64)
        runs[:, r] = np.pad(counts, (0, g - len(counts)))
    runs[:, -1] = group_sizes - runs[:, :-1].sum(axis=1)
    if np.any(runs[:, -1] < 0):
        raise ValueError("select_rounds: counts exceed the number of eligible samples of a label")
    values = np.tile(np.append(np.arange(1, len(rounds) + 1), 0).astype(np.int8), g)
    sorted_codes = np.repeat(values, runs.reshape(-1))
    codes = np.zeros(len(labels), dtype=np.int8)
    codes[order if idx is None else idx[order]] = sorted_codes
    return codes


def stratified_select(labels: np.ndarray, rate: float, rng: np.random.Generator, *,
                      num_classes: int | None = None, eligible: np.ndarray | None = None,
                      reference: int | None = None) -> np.ndarray:
    """Bool mask of exactly ``round(rate * reference)`` samples, stratified by label.

    ``reference`` defaults to the number of samples ``N``; only ``eligible`` samples can be chosen
    (see :func:`stratified_counts` for how counts are spread over identities).
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = int(num_classes if num_classes is not None else (labels.max() + 1 if len(labels) else 0))
    lab = labels if eligible is None else labels[eligible]
    sizes = np.bincount(lab, minlength=k)
    counts = stratified_counts(sizes, rate, rng, reference=len(labels) if reference is None else reference)
    return select_per_group(labels, counts, rng, eligible)


def symmetric_flip(labels: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """New labels drawn uniformly among the ``num_classes - 1`` labels other than each sample's own."""
    if num_classes < 2:
        raise ValueError(f"symmetric noise needs at least 2 identities, got {num_classes}")
    labels = np.asarray(labels, dtype=np.int64)
    return (labels + rng.integers(1, num_classes, size=len(labels))) % num_classes


def pairwise_partners(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A fixed partner per identity, ``partner[i] != i``: one random cycle through all identities.

    A random permutation ``p`` is drawn and ``p[k]`` flips to ``p[k+1]`` (the last to the first),
    so every identity has exactly one partner and is the partner of exactly one other.
    """
    if num_classes < 2:
        raise ValueError(f"pairwise noise needs at least 2 identities, got {num_classes}")
    perm = rng.permutation(num_classes)
    partner = np.empty(num_classes, dtype=np.int64)
    partner[perm] = np.roll(perm, -1)
    return partner


def nearest_partners(features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each row of ``features`` [C, d], the index of the most cosine-similar *other* row.

    Rows are L2-normalised (an all-zero row has similarity 0 to everything); ties go to the lowest
    index. Computed in chunks of ``chunk`` rows so 85k identities fit in memory.
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"nearest noise needs features [C>=2, d], got shape {feats.shape}")
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = feats / np.where(norms > 0, norms, 1.0)
    out = np.empty(len(feats), dtype=np.int64)
    for start in range(0, len(feats), chunk):
        sim = feats[start:start + chunk] @ feats.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf
        out[start:start + chunk] = np.argmax(sim, axis=1)
    return out


def choose_identities(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct identities drawn without replacement from ``candidates`` (in draw order)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if n > len(candidates):
        raise ValueError(f"needs {n} identities but only {len(candidates)} are available")
    return candidates[rng.permutation(len(candidates))[:n]]


def split_mask(labels: np.ndarray, identities: np.ndarray, rng: np.random.Generator,
               num_classes: int) -> np.ndarray:
    """Samples to move to a new label when splitting ``identities``: ``floor(n_i / 2)`` of each, at random."""
    counts = np.zeros(num_classes, dtype=np.int64)
    sizes = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    counts[identities] = sizes[identities] // 2
    return select_per_group(labels, counts, rng)


def draw_outliers(pool_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` outlier indices from ``0 .. pool_size-1``: without replacement while the pool lasts,
    then with replacement."""
    if pool_size <= 0:
        raise ValueError("the outlier pool is empty")
    first = rng.permutation(pool_size)[: min(n, pool_size)]
    if n <= pool_size:
        return first.astype(np.int64)
    return np.concatenate([first, rng.integers(0, pool_size, size=n - pool_size)]).astype(np.int64)
