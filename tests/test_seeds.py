"""Results over seeds: t-intervals and logit-scale intervals of bounded quantities, paired
differences at one epoch with a primary comparison and Holm's correction, the epoch chosen
without ground truth, and the noise-rate estimate's controls (answers known)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from noisyfr.analysis import seeds, stats


# ----------------------------------------------------------------------------- intervals
def test_interval_matches_the_closed_form_t_quantile():
    x = [0.40, 0.46, 0.52]
    got = seeds.interval(x)
    mean, sd = np.mean(x), np.std(x, ddof=1)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}, tabulated
    assert got["n"] == 3 and got["mean"] == pytest.approx(mean)
    assert got["lo"] == pytest.approx(mean - half) and got["hi"] == pytest.approx(mean + half)
    one = seeds.interval([0.5, float("nan")])
    assert one["n"] == 1 and math.isnan(one["lo"]) and one["mean"] == 0.5


def test_bounded_interval_is_the_logit_t_interval_and_never_leaves_the_unit_interval():
    x = [0.99, 0.93, 0.936]                     # an AUC whose t-interval leaves [0, 1]
    t = seeds.interval(x)
    assert t["hi"] > 1.0                        # 0.952 [0.870, 1.034]: the old interval
    got = seeds.interval(x, bounded=True)
    mean, sd = np.mean(x), np.std(x, ddof=1)
    z, half = np.log(mean / (1 - mean)), 4.302652729911275 * sd / math.sqrt(3) / (mean * (1 - mean))
    assert got["mean"] == t["mean"]              # the mean does not change
    assert got["lo"] == pytest.approx(1 / (1 + np.exp(-(z - half))))
    assert got["hi"] == pytest.approx(1 / (1 + np.exp(-(z + half))))
    assert 0 < got["lo"] < mean < got["hi"] < 1
    # far from the bounds and with a small spread it is the t-interval
    near = seeds.interval([0.50, 0.51, 0.49, 0.505], bounded=True)
    plain = seeds.interval([0.50, 0.51, 0.49, 0.505])
    assert near["lo"] == pytest.approx(plain["lo"], abs=2e-4) and near["hi"] == pytest.approx(plain["hi"], abs=2e-4)
    # on a bound: every value there, a point
    assert seeds.interval([1.0, 1.0, 1.0], bounded=True)["lo"] == 1.0
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        seeds.interval([0.5, 1.2], bounded=True)
    assert seeds.metric_interval("auc", x)["hi"] == got["hi"]
    assert seeds.metric_interval("theta_gap_deg", x)["hi"] == t["hi"]


@pytest.mark.parametrize("a,b,n", [(50.0, 0.8, 3), (20.0, 1.5, 10), (2.0, 30.0, 3)])
def test_bounded_interval_covers_the_true_mean_where_the_t_interval_leaves_the_bounds(a, b, n):
    """Seeds drawn from a Beta near a bound: the logit interval stays in [0, 1] and covers the
    true mean about 95 % of the time (simulated); the t-interval leaves [0, 1] in many draws."""
    rng = np.random.default_rng(11)
    mu, sims = a / (a + b), 1500
    cover = leaves = 0
    for _ in range(sims):
        x = rng.beta(a, b, n)
        iv = seeds.interval(x, bounded=True)
        assert 0.0 <= iv["lo"] <= iv["mean"] <= iv["hi"] <= 1.0
        cover += iv["lo"] <= mu <= iv["hi"]
        t = seeds.interval(x)
        leaves += t["lo"] < 0 or t["hi"] > 1
    assert 0.91 <= cover / sims <= 0.98
    assert leaves > 0


def test_cells_of_bounded_metrics_use_the_logit_interval():
    v = pd.DataFrame({"epoch_rule": "last", "loss": "A", "condition": "closed=0.4", "seed": [0, 1, 2],
                      "learned": True, "auc": [0.99, 0.93, 0.936], "theta_gap_deg": [20.0, 25.0, 30.0]})
    cells = seeds.cell_table(v).set_index("metric")
    assert cells.loc["auc", "hi"] < 1.0 and cells.loc["auc", "mean"] == pytest.approx(0.952)
    assert cells.loc["theta_gap_deg", "lo"] == pytest.approx(seeds.interval([20.0, 25.0, 30.0])["lo"])


def _values(diff: float, shared_sd: float, own_sd: float, n_seeds: int = 5, rng=0,
            grad_mode=("exact", "exact"), learned_b=True) -> pd.DataFrame:
    """Two losses over seeds: a value per seed shared by both (the noise draw), plus a small
    per-run term, and A = B + diff."""
    rng = np.random.default_rng(rng)
    shared = rng.normal(0.4, shared_sd, n_seeds)
    rows = []
    for seed in range(n_seeds):
        for loss, mode, d, ok in (("A", grad_mode[0], diff, True), ("B", grad_mode[1], 0.0, learned_b)):
            rows.append({"epoch_rule": "last", "epoch": 12, "loss": loss, "grad_mode": mode,
                         "condition": "closed=0.4", "seed": seed, "learned": ok,
                         "noisy_weight_share": shared[seed] + d + rng.normal(0, own_sd)})
    return pd.DataFrame(rows)


def test_paired_differences_find_what_unpaired_intervals_miss():
    v = _values(diff=0.02, shared_sd=0.05, own_sd=0.002)
    cells = seeds.cell_table(v)
    a = cells[cells["loss"] == "A"].iloc[0]
    b = cells[cells["loss"] == "B"].iloc[0]
    assert a["lo"] < b["hi"] and b["lo"] < a["hi"]          # the cell intervals overlap
    p = seeds.paired_table(v).iloc[0]
    assert p["verdict"] == "A > B" and p["diff_lo"] > 0 and p["n_pairs"] == 5
    assert p["diff_mean"] == pytest.approx(0.02, abs=0.005)


def test_no_difference_is_reported_as_such_and_no_verdict_is_attached_to_the_grad_mode():
    v = _values(diff=0.0, shared_sd=0.05, own_sd=0.01, grad_mode=("detached", "detached"))
    p = seeds.paired_table(v).iloc[0]
    assert p["diff_lo"] < 0 < p["diff_hi"] and p["verdict"] == "no difference"
    # two detached losses whose shares differ are read as differing: nothing is equal by construction
    d = seeds.paired_table(_values(diff=0.02, shared_sd=0.05, own_sd=0.002,
                                   grad_mode=("detached", "detached"))).iloc[0]
    assert d["verdict"] == "A > B" and "equal_by_construction" not in d.index


def test_cells_give_all_runs_and_learned_runs_apart():
    v = _values(diff=0.0, shared_sd=0.01, own_sd=0.01, learned_b=False)
    b = seeds.cell_table(v).query("loss == 'B'").iloc[0]
    assert b["n"] == 5 and b["n_learned"] == 0 and math.isnan(b["learned_mean"])
    p = seeds.paired_table(v).iloc[0]
    assert p["n_pairs"] == 5 and p["n_pairs_learned"] == 0


def test_epoch_is_chosen_by_held_out_accuracy_never_by_the_noise_labels():
    m = pd.DataFrame({"epoch": [1, 2, 3, 4], "heldout_accuracy": [0.2, 0.7, 0.7, 0.6],
                      "val_accuracy": [0.9, np.nan, np.nan, 0.5]})
    assert seeds.select_epoch(m, [1, 2, 3, 4]) == (3, "heldout")       # latest of ties
    assert seeds.select_epoch(m.drop(columns="heldout_accuracy"), [1, 2, 3, 4]) == (1, "val")
    assert seeds.select_epoch(pd.DataFrame({"epoch": [1, 2]}), [1, 2]) == (2, "last")


# ----------------------------------------------------------------------------- estimator controls
def _fabricated(rate: float, num_ids: int = 40, per_id: int = 60, seed: int = 0):
    """Angles with the structure of trained runs: each class's clean samples at their own
    distance from the centre (medians 49-79 degrees, as measured in the demo), unrelated centres
    near 90 degrees, closed-set noisy samples near their true class and unrelated to their label."""
    rng = np.random.default_rng(seed)
    centre = np.radians(np.linspace(49, 79, num_ids))
    n = num_ids * per_id
    true = np.repeat(np.arange(num_ids), per_id)
    noisy = rng.random(n) < rate
    given = np.where(noisy, (true + rng.integers(1, num_ids, n)) % num_ids, true)
    own = rng.normal(centre[true], np.radians(5))                           # angle to the true centre
    unrelated = rng.normal(np.radians(89), np.radians(2.5), (n, num_ids - 1)).min(axis=1)
    theta_y = np.where(noisy, rng.normal(np.radians(89), np.radians(2.5), n), own)
    theta_nearest = np.where(noisy, np.minimum(own, unrelated), unrelated)
    return np.clip(theta_y, 0, np.pi), np.clip(theta_nearest, 0, np.pi), noisy, given


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
def test_noise_rate_estimate_passes_its_controls_where_the_mixture_fails(rate):
    theta_y, theta_nearest, noisy, _ = _fabricated(rate)
    est = stats.disagreement_rate(theta_y, theta_nearest)
    if rate == 0.0:
        assert est <= 0.03
        # the mixture over theta_y sees two modes in clean data whose classes differ
        assert stats.bimodal_noise_rate(theta_y)["estimate"] > 0.2
    else:
        assert abs(est - noisy.mean()) <= 0.05


def test_noise_rate_estimate_bias_is_the_documented_one():
    theta_y, theta_nearest, noisy, _ = _fabricated(0.4, seed=1)
    # memorise a third of the noisy samples: they move to their given centre
    fit = noisy & (np.arange(len(noisy)) % 3 == 0)
    theta_y = np.where(fit, np.radians(60), theta_y)
    est = stats.disagreement_rate(theta_y, theta_nearest)
    clean_error = np.mean(theta_nearest[~noisy] < theta_y[~noisy])
    noisy_fit_given = np.mean(theta_y[noisy] <= theta_nearest[noisy])   # predicted as the wrong label
    assert noisy_fit_given > 0.2
    rate = noisy.mean()
    predicted = rate + (1 - rate) * clean_error - rate * noisy_fit_given
    assert est == pytest.approx(predicted, abs=1e-12)
    assert est < rate - 0.05       # memorisation hides noise from it: the control would fail
    with pytest.raises(Exception, match="shape"):
        stats.disagreement_rate(theta_y[:3], theta_nearest)


def test_convention_table_measures_the_change_between_gradient_modes():
    rng = np.random.default_rng(3)
    rows = []
    for seed in range(4):
        base = rng.normal(0.4, 0.05)
        for name in ("arcface", "expface"):
            for mode in ("exact", "detached"):
                effect = -0.05 if (name == "expface" and mode == "exact") else 0.0
                rows.append({"epoch_rule": "last", "loss": f"{name} {mode}", "loss_name": name,
                             "grad_mode": mode, "condition": "closed=0.4", "seed": seed, "learned": True,
                             "noisy_weight_share": base + effect + rng.normal(0, 0.002)})
    tab = seeds.convention_table(pd.DataFrame(rows)).iloc[0]
    assert (tab["loss_a"], tab["loss_b"]) == ("arcface", "expface")
    assert tab["exact_lo"] > 0 and tab["change_lo"] > 0 and tab["n_change"] == 4
    assert tab["detached_lo"] < 0 < tab["detached_hi"]
    assert tab["change"] == pytest.approx(0.05, abs=0.01)
