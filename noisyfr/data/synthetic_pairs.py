"""Synthetic verification pairs: ``SyntheticPairs`` over unseen synthetic identities, and their sampling.

The ``synthetic-pairs:`` spec is parsed and validated in :mod:`noisyfr.data.synthetic`;
:func:`noisyfr.data.load_pairs` builds a :class:`SyntheticPairs` from it.
"""
from __future__ import annotations

import numpy as np

from noisyfr.data.render import MIN_SIZE, seed_sequence
from noisyfr.data.synthetic import (
    PAIRS_DEFAULTS,
    PAIRS_PREFIX,
    RenderedImages,
    check_pairs_params,
    pairs_available,
    parse_pairs_spec,
)
from noisyfr.data.verification import VerificationSet


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
    identity or image uses: those have keys ``(label,)`` and ``(label, k + 1)``) and sorted
    (LFW-like order). Each pair is stored as ``(a, b)`` with ``a < b``.
    """
    p = check_pairs_params(ids, per_id, 0, pairs, MIN_SIZE, seed, where="sample_pairs")
    ids, per_id, half = p["ids"], p["per_id"], p["pairs"] // 2
    n = ids * per_id
    rng = np.random.default_rng(seed_sequence(p["seed"], 2**32 - 1, 0))
    n_same, n_diff = pairs_available(ids, per_id)
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


class SyntheticPairs(RenderedImages, VerificationSet):
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
    def from_spec(cls, spec: str, **kwargs) -> SyntheticPairs:
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

    def image_identity(self, i: int) -> str:
        return f"id{int(self.labels[i]):04d}"

    @property
    def first_label(self) -> int:
        return self.first_id
