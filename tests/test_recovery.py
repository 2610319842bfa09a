"""The cleaning loop's recovery in percentage points: paired gains, the Fieller interval of a
ratio of mean gains (checked by inverting the paired t-test it is defined by), and "not
identified" where the oracle's gain is not."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from noisyfr.analysis import recovery


def _p(num, den, r):
    """p-value of the paired t-test that mean(num - r den) = 0."""
    return sps.ttest_1samp(np.asarray(num) - r * np.asarray(den), 0.0).pvalue


def test_fieller_interval_is_the_inverted_paired_t_test():
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(60):
        n = int(rng.integers(3, 12))
        den = rng.normal(5.0, 2.0, n)                     # an oracle gain of about 5 pp
        num = 0.6 * den + rng.normal(0, 1.0, n)
        f = recovery.fieller(num, den)
        lo, hi = sps.t.interval(0.95, n - 1, loc=den.mean(), scale=sps.sem(den))
        assert f["identified"] == (lo > 0 or hi < 0) and f["n"] == n
        if not f["identified"]:
            continue
        checked += 1
        assert f["ratio"] == pytest.approx(num.mean() / den.mean())
        assert f["lo"] < f["ratio"] < f["hi"]
        assert _p(num, den, f["lo"]) == pytest.approx(0.05, abs=1e-6)
        assert _p(num, den, f["hi"]) == pytest.approx(0.05, abs=1e-6)
        assert _p(num, den, f["ratio"]) > 0.05
        assert _p(num, den, f["lo"] - 0.01) < 0.05 < _p(num, den, f["lo"] + 0.01)
    assert checked >= 40


def test_a_ratio_whose_denominator_is_not_identified_has_no_interval():
    den = np.array([0.5, -0.4, 0.3])                      # the oracle's gain interval holds 0
    f = recovery.fieller([0.2, 0.1, -0.3], den)
    assert not f["identified"] and math.isnan(f["lo"]) and math.isnan(f["hi"])
    lo, hi = sps.t.interval(0.95, 2, loc=den.mean(), scale=sps.sem(den))
    assert lo < 0 < hi
    assert not recovery.fieller([1.0], [2.0])["identified"]


def _loop_table(gains: dict[str, list[float]], oracle: list[float], base=0.6) -> pd.DataFrame:
    rows = []
    for seed, top in enumerate(oracle):
        rows.append({"loss": "L", "condition": "c", "seed": seed, "rule": "noisy",
                     "heldout_accuracy": base + 0.01 * seed, "val_accuracy": base})
        rows.append({"loss": "L", "condition": "c", "seed": seed, "rule": "oracle",
                     "heldout_accuracy": base + 0.01 * seed + top, "val_accuracy": base + top / 2})
        for rule, g in gains.items():
            rows.append({"loss": "L", "condition": "c", "seed": seed, "rule": rule,
                         "heldout_accuracy": base + 0.01 * seed + g[seed], "val_accuracy": base})
    return pd.DataFrame(rows)


def test_paired_gains_are_percentage_points_against_the_same_seed():
    t = recovery.paired_gains(_loop_table({"r": [0.02, 0.03, 0.01]}, [0.05, 0.06, 0.04]))
    r = t[t["rule"] == "r"].set_index("seed")
    assert r["gain_heldout_pp"].tolist() == pytest.approx([2.0, 3.0, 1.0])
    assert r["to_oracle_heldout_pp"].tolist() == pytest.approx([3.0, 3.0, 3.0])
    n = t[t["rule"] == "noisy"]
    assert (n["gain_heldout_pp"] == 0).all() and not np.signbit(n["gain_heldout_pp"]).any()


def test_recovery_table_gives_pp_differences_and_a_ratio_only_where_identified():
    oracle = [0.05, 0.06, 0.055, 0.05]
    t = _loop_table({"good": [0.04, 0.05, 0.045, 0.04], "none": [0.0, 0.01, -0.01, 0.0]}, oracle)
    tab = recovery.recovery_table(t).set_index(["rule", "accuracy"])
    good = tab.loc[("good", "heldout_accuracy")]
    assert good["n"] == 4
    assert good["rule_minus_noisy_pp"] == pytest.approx(4.375)
    assert good["oracle_minus_rule_pp"] == pytest.approx(1.0)
    assert good["oracle_minus_noisy_pp"] == pytest.approx(5.375)
    assert good["rule_minus_noisy_pp_lo"] < 4.375 < good["rule_minus_noisy_pp_hi"]
    assert good["identified"] and good["recovered"] == pytest.approx(4.375 / 5.375)
    assert good["recovered_lo"] < good["recovered"] < good["recovered_hi"]
    # the verification accuracy: the rule gains nothing, the oracle half as much: still identified
    assert tab.loc[("good", "val_accuracy"), "recovered"] == pytest.approx(0.0, abs=1e-12)
    # an oracle that gains nothing on average: no ratio
    flat = _loop_table({"r": [0.01, -0.01, 0.0]}, [0.02, -0.02, 0.001])
    row = recovery.recovery_table(flat).set_index(["rule", "accuracy"]).loc[("r", "heldout_accuracy")]
    assert not row["identified"] and math.isnan(row["recovered"])
    md = "\n".join(recovery.markdown_lines(flat))
    assert "| L | c | r | heldout_accuracy |" in md and recovery.NOT_IDENTIFIED in md
