"""Pure noise functions (noisyfr.noise.draw): exact stratified counts, flips, partners, draws."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics.pairwise import cosine_similarity

from noisyfr.noise import draw as nz


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.25, 0.29, 0.3, 0.5, 0.77, 1.0])
def test_stratified_counts_exact_total_and_floor_or_ceil(rate):
    sizes = _rng(1).integers(0, 40, size=300)
    counts = nz.stratified_counts(sizes, rate, _rng(2))
    n = int(sizes.sum())
    assert counts.sum() == round(rate * n)
    # each identity gets floor(rate * n_i) or one more (exact rational arithmetic as the reference)
    from fractions import Fraction
    r = Fraction(rate).limit_denominator(10**6)
    lo = np.array([math.floor(r * int(s)) for s in sizes])
    assert np.all((counts == lo) | (counts == lo + 1))
    assert np.all(counts <= sizes) and np.all(counts >= 0)


def test_stratified_counts_remainder_goes_to_largest_fractions():
    sizes = np.array([10, 7, 3, 9, 4, 6])  # rate 0.25 -> 2.5 1.75 .75 2.25 1 1.5 (sum 9.75 -> 10)
    counts = nz.stratified_counts(sizes, 0.25, _rng(0))
    assert counts.sum() == 10
    floors = np.array([2, 1, 0, 2, 1, 1])
    extra = counts - floors
    assert extra.sum() == 3
    # fractional parts: .5 .75 .75 .25 0 .5 ; sum floors = 7, remainder 3 -> the two .75 and one .5
    assert extra[1] == 1 and extra[2] == 1
    assert extra[0] + extra[5] == 1 and extra[3] == 0 and extra[4] == 0


def test_stratified_counts_ties_broken_by_seed_deterministically():
    sizes = np.full(50, 3)  # rate 0.5 -> 1.5 each: every identity ties
    a = nz.stratified_counts(sizes, 0.5, _rng(7))
    b = nz.stratified_counts(sizes, 0.5, _rng(7))
    c = nz.stratified_counts(sizes, 0.5, _rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.sum() == round(0.5 * 150) == c.sum()


def test_stratified_counts_reference_scales_to_remaining_samples():
    sizes = np.array([8, 8, 4])  # 20 selectable of a 40-sample dataset
    counts = nz.stratified_counts(sizes, 0.25, _rng(0), reference=40)
    assert counts.sum() == 10
    assert list(counts) == [4, 4, 2]  # proportional to the selectable sizes
    with pytest.raises(ValueError):
        nz.stratified_counts(sizes, 0.6, _rng(0), reference=40)  # 24 > 20 available


def test_select_per_group_exact_counts_and_eligibility():
    labels = np.repeat(np.arange(20), 15)
    rng = _rng(3)
    eligible = rng.random(len(labels)) < 0.7
    sizes = np.bincount(labels[eligible], minlength=20)
    counts = sizes // 3
    mask = nz.select_per_group(labels, counts, _rng(4), eligible)
    assert not np.any(mask & ~eligible)
    assert np.array_equal(np.bincount(labels[mask], minlength=20), counts)


def test_select_per_group_is_uniform_within_identity():
    labels = np.repeat(np.arange(4), 10)
    counts = np.array([3, 3, 3, 3])
    hits = np.zeros(len(labels))
    rng = _rng(5)
    trials = 2000
    for _ in range(trials):
        hits += nz.select_per_group(labels, counts, rng)
    # each sample is chosen with probability 3/10
    res = stats.chisquare(hits.reshape(4, 10), axis=None)
    assert res.pvalue > 1e-3
    assert np.allclose(hits / trials, 0.3, atol=0.05)


def test_stratified_select_total_and_per_identity():
    labels = np.repeat(np.arange(40), 10)
    mask = nz.stratified_select(labels, 0.3, _rng(0))
    assert mask.sum() == 120
    assert np.all(np.bincount(labels[mask], minlength=40) == 3)


def test_symmetric_flip_is_uniform_over_other_labels():
    c = 7
    labels = np.full(70000, 3)
    new = nz.symmetric_flip(labels, _rng(0), c)
    assert not np.any(new == labels)
    freq = np.bincount(new, minlength=c)
    assert freq[3] == 0
    others = np.delete(freq, 3)
    assert stats.chisquare(others).pvalue > 1e-3


def test_pairwise_partners_single_cycle_derangement():
    p = nz.pairwise_partners(25, _rng(1))
    assert np.all(p != np.arange(25))
    assert sorted(p) == list(range(25))  # a bijection
    seen, k = set(), 0
    while k not in seen:  # one cycle through all identities
        seen.add(k)
        k = p[k]
    assert len(seen) == 25
    assert np.array_equal(p, nz.pairwise_partners(25, _rng(1)))
    with pytest.raises(ValueError):
        nz.pairwise_partners(1, _rng(0))


def test_nearest_partners_matches_sklearn_cosine():
    feats = _rng(2).normal(size=(300, 16))
    sim = cosine_similarity(feats)
    np.fill_diagonal(sim, -np.inf)
    expected = sim.argmax(axis=1)
    assert np.array_equal(nz.nearest_partners(feats), expected)
    assert np.array_equal(nz.nearest_partners(feats, chunk=37), expected)  # chunking does not matter


def test_draw_outliers_without_then_with_replacement():
    d = nz.draw_outliers(10, 6, _rng(0))
    assert len(set(d.tolist())) == 6 and d.min() >= 0 and d.max() < 10
    d = nz.draw_outliers(10, 25, _rng(0))
    assert sorted(d[:10].tolist()) == list(range(10))  # the pool is used up first
    assert len(d) == 25 and d.max() < 10
    with pytest.raises(ValueError):
        nz.draw_outliers(0, 3, _rng(0))


def test_split_mask_moves_half_of_each_chosen_identity():
    labels = np.repeat(np.arange(6), [9, 4, 1, 7, 2, 5])
    mask = nz.split_mask(labels, np.array([0, 3, 5]), _rng(0), 6)
    assert list(np.bincount(labels[mask], minlength=6)) == [4, 0, 0, 3, 0, 2]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "x", True])
def test_noise_spec_rejects_bad_rates_naming_the_key(bad):
    from noisyfr.errors import NoisyFRError
    from noisyfr.noise import NoiseSpec, cli_flag

    with pytest.raises(NoisyFRError, match=r"data\.noise\.closed"):
        NoiseSpec.from_mapping({"closed": bad})
    with pytest.raises(NoisyFRError, match="--closed"):
        NoiseSpec.from_mapping({"closed": bad}, name=cli_flag)


def test_noise_spec_one_spelling_and_seed():
    from noisyfr.errors import NoisyFRError
    from noisyfr.noise import NoiseSpec

    spec = NoiseSpec.from_mapping({"closed": 0.4, "closed_mode": "pairwise"})
    assert spec.seed is None and spec.with_seed(7).seed == 7 and spec.replace(seed=3).with_seed(7).seed == 3
    assert NoiseSpec.from_mapping(spec.to_dict()) == spec
    with pytest.raises(NoisyFRError, match=r"data\.noise\.clozed: unknown noise key"):
        NoiseSpec.from_mapping({"clozed": 0.1})
    with pytest.raises(NoisyFRError, match="sum to 1.2"):
        NoiseSpec(closed=0.6, open=0.6, holdout_ids=2)
    with pytest.raises(NoisyFRError, match="outlier source"):
        NoiseSpec(open=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.closed = 0.1
