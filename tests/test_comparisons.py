"""Paired comparisons: both runs at one epoch, the primary comparison named before the run, and
Holm's correction of every other one (checked against the step-down procedure itself)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import exit_status
from scipy import stats as sps

from noisyfr.analysis import comparisons, seeds
from noisyfr.errors import NoisyFRError


def _holm_rejects(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down procedure as he wrote it: test the smallest p against alpha / m, the
    next against alpha / (m - 1), ... and stop at the first that fails."""
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(len(p), dtype=bool)
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected[i] = True
    return rejected


def test_holm_adjusted_p_values_reject_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(4)
    for _ in range(200):
        p = np.concatenate([rng.uniform(0, 0.02, rng.integers(0, 4)), rng.uniform(0, 1, rng.integers(1, 8))])
        adj = comparisons.holm(p)
        assert (adj >= p - 1e-15).all() and (adj <= 1).all()
        for alpha in (0.01, 0.05, 0.2):
            assert np.array_equal(adj <= alpha, _holm_rejects(p, alpha))
    # a NaN is outside the family: it neither counts in m nor gets a value
    adj = comparisons.holm([0.01, math.nan, 0.04])
    assert math.isnan(adj[1]) and adj[0] == pytest.approx(0.02) and adj[2] == pytest.approx(0.04)


def test_paired_p_is_the_paired_t_test():
    d = np.array([0.01, 0.03, 0.02, 0.04])
    assert comparisons.paired_p(d) == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue)
    assert comparisons.paired_p([0.0, 0.0]) == 1.0 and math.isnan(comparisons.paired_p([0.1]))


def _runs(effects: dict, n_seeds: int = 6, last=None, rng=0) -> pd.DataFrame:
    """Run values of losses A, B, C at conditions x and y, last and held-out epoch rows; the
    held-out rows carry each run's own epoch and a large fake effect that pairs must not read."""
    rng = np.random.default_rng(rng)
    rows = []
    for seed in range(n_seeds):
        shared = rng.normal(0.4, 0.05)
        for cond in ("x", "y"):
            for loss in ("A", "B", "C"):
                base = shared + effects.get((loss, cond), 0.0) + rng.normal(0, 0.003)
                ep = (last or {}).get((loss, seed), 20)
                rows.append({"epoch_rule": "last", "epoch": ep, "loss": loss, "grad_mode": "exact",
                             "condition": cond, "seed": seed, "learned": True, "noisy_weight_share": base,
                             "auc": min(0.99, 0.8 + base / 10)})
                rows.append({"epoch_rule": "heldout", "epoch": 3 + seed + (loss == "A"), "loss": loss,
                             "grad_mode": "exact", "condition": cond, "seed": seed, "learned": True,
                             "noisy_weight_share": base + (0.3 if loss == "A" else 0.0), "auc": 0.9})
    return pd.DataFrame(rows)


def test_pairs_read_both_runs_at_the_same_epoch_never_at_each_runs_best():
    v = _runs({})
    p = seeds.paired_table(v)
    assert set(p["epoch_rule"]) == {"last"}      # no pair at each run's own held-out epoch
    ab = p[(p["loss_a"] == "A") & (p["loss_b"] == "B") & (p["metric"] == "noisy_weight_share")]
    assert (ab["diff_mean"].abs() < 0.02).all()  # the held-out rows' +0.3 is not read
    # runs of different lengths: their pair is not at one epoch, so it is left out and counted
    v = _runs({}, last={("A", 0): 15, ("A", 1): 15})
    p = seeds.paired_table(v)
    ab = p[(p["loss_a"] == "A") & (p["loss_b"] == "B")]
    assert (ab["n_pairs"] == 4).all() and (ab["n_unpaired"] == 2).all()
    bc = p[(p["loss_a"] == "B") & (p["loss_b"] == "C")]
    assert (bc["n_pairs"] == 6).all() and (bc["n_unpaired"] == 0).all()


def test_a_fixed_epoch_pairs_the_rows_read_there():
    v = _runs({})
    fixed = v[v["epoch_rule"] == "last"].assign(epoch_rule="fixed", epoch=7,
                                                noisy_weight_share=lambda d: d["noisy_weight_share"]
                                                + np.where(d["loss"] == "C", 0.1, 0.0))
    plan = comparisons.AnalysisPlan(epoch=7)
    p = seeds.paired_table(pd.concat([v, fixed]), plan)
    assert set(p["epoch_rule"]) == {"fixed"}
    ac = p[(p["loss_a"] == "A") & (p["loss_b"] == "C") & (p["metric"] == "noisy_weight_share")].iloc[0]
    assert ac["diff_mean"] == pytest.approx(-0.1, abs=0.01)


def test_primary_reads_its_interval_the_rest_are_holm_corrected():
    # A - B = +0.006 at x: a paired interval excludes 0, but not after correcting for 12 tests
    v = _runs({("A", "x"): 0.006, ("C", "y"): 0.05}, n_seeds=6, rng=2)
    plain = seeds.paired_table(v)
    assert set(plain["role"]) == {"secondary"}
    assert plain["family_size"].iloc[0] == int(plain["p_value"].notna().sum()) == 12
    ab = plain[(plain["loss_a"] == "A") & (plain["loss_b"] == "B") & (plain["condition"] == "x")
               & (plain["metric"] == "noisy_weight_share")].iloc[0]
    assert ab["diff_lo"] > 0                           # uncorrected: A > B
    assert ab["p_holm"] > 0.05 and ab["verdict"] == "no difference"
    big = plain[(plain["loss_a"] == "B") & (plain["loss_b"] == "C") & (plain["condition"] == "y")
                & (plain["metric"] == "noisy_weight_share")].iloc[0]
    assert big["p_holm"] < 0.05 and big["verdict"] == "A < B"     # a real effect survives
    adj = comparisons.holm(plain["p_value"].to_numpy())
    assert np.allclose(plain["p_holm"], adj)
    # the same comparison named primary before the run: it reads its own interval
    plan = comparisons.parse_analysis({"primary": {"metric": "noisy_weight_share", "condition": "x",
                                                   "a": "B", "b": "A"}})
    p = seeds.paired_table(v, plan)
    prim = p[p["role"] == "primary"]
    assert len(prim) == 1 and prim.iloc[0]["verdict"] == "A > B"
    assert prim.iloc[0]["p_holm"] == prim.iloc[0]["p_value"]
    assert (p.loc[p["role"] == "secondary", "family_size"] == 11).all()
    assert comparisons.primary_found(p, plan)


@pytest.mark.parametrize("section,match", [
    ([1], r"^analysis: expected a mapping"),
    ({"epochs": 3}, r"^analysis\.epochs: unknown key"),
    ({"epoch": -1}, r"^analysis\.epoch: expected 'last' or an epoch number"),
    ({"epoch": True}, r"^analysis\.epoch:"),
    ({"primary": {"metric": "auc", "a": "x"}}, r"^analysis\.primary\.\w+: the primary comparison takes exactly"),
    ({"primary": {"metric": "speed", "a": "x", "b": "y", "condition": "c"}}, r"^analysis\.primary\.metric: 'speed'"),
    ({"primary": {"metric": "auc", "a": "x", "b": "x", "condition": "c"}}, r"^analysis\.primary\.b: compares"),
    ({"primary": {"metric": "auc", "a": "x", "b": 3, "condition": "c"}},
     r"^analysis\.primary\.b: expected a non-empty"),
])
def test_a_bad_analysis_section_names_its_key(section, match):
    with pytest.raises(NoisyFRError, match=match):
        comparisons.parse_analysis(section)


def test_sweep_refuses_a_bad_analysis_section_before_anything_runs(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("data: {train: 'synthetic:ids=4,per_id=8,size=32,seed=0', image_size: 32}\n"
                   "model: {backbone: small_cnn, embedding_dim: 32}\n"
                   "loss: {name: arcface}\noptim: {epochs: 1, batch_size: 8}\n"
                   "grid: {seed: [0, 1]}\nanalysis: {epoch: later}\n")
    out = tmp_path / "out"
    code = exit_status(["sweep", str(cfg), "--out", str(out), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "analysis.epoch" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_plan_is_read_from_the_stored_sweep(tmp_path):
    assert comparisons.read_plan(tmp_path) == comparisons.AnalysisPlan()
    (tmp_path / "sweep.json").write_text(json.dumps({"source": {"raw": {"analysis": {"epoch": 5}}}}))
    assert comparisons.read_plan(tmp_path).paired_rule == "fixed"
    (tmp_path / "sweep.json").write_text(json.dumps({"source": {"raw": {"analysis": {"epoch": "x"}}}}))
    with pytest.raises(NoisyFRError, match="sweep.json: analysis.epoch"):
        comparisons.read_plan(tmp_path)


def test_the_report_names_the_primary_and_reads_pairs_at_the_fixed_epoch(tmp_path):
    from fabricate import make_synthetic_sweep

    from noisyfr.analysis.report import write_report

    src = make_synthetic_sweep(tmp_path / "sweep", closed_rates=(0.2,), seeds=(0, 1, 2), epochs=3)
    primary = {"metric": "noisy_weight_share", "condition": "closed=0.2",
               "a": "expface s=64 m=0.7 exact", "b": "arcface s=64 m=0.5 exact"}
    (src / "sweep.json").write_text(json.dumps({"source": {"raw": {"analysis": {"epoch": 2, "primary": primary}}}}))
    md = write_report(src, tmp_path / "report", figures=False).read_text()
    paired = pd.read_csv(tmp_path / "report" / "tables" / "paired.csv")
    assert set(paired["epoch_rule"]) == {"fixed"}
    values = pd.read_csv(tmp_path / "report" / "tables" / "run_values.csv")
    assert set(values.loc[values["epoch_rule"] == "fixed", "epoch"]) == {2}
    prim = paired[paired["role"] == "primary"]
    assert len(prim) == 1 and prim.iloc[0]["metric"] == "noisy_weight_share"
    assert (paired.loc[paired["role"] == "secondary", "family_size"] == len(paired) - 1).all()
    assert "**Primary** (named in the sweep config before the run)" in md
    assert "both runs read at epoch 2 (`analysis.epoch`)" in md
    # a primary that names no loss of the sweep is said to be missing, not silently dropped
    primary["a"] = "sphereface"
    (src / "sweep.json").write_text(json.dumps({"source": {"raw": {"analysis": {"primary": primary}}}}))
    md = write_report(src, tmp_path / "report2", figures=False).read_text()
    assert "is not among these runs" in md
