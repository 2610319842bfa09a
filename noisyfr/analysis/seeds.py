"""Results over seeds: every run at a stated epoch, intervals per cell, paired differences.

Seeds are the unit of replication: a cell (loss x noise condition) has one value per run, and
its mean comes with a 95 % interval over the runs (n = seeds; :func:`interval`). A quantity
bounded by [0, 1] (accuracies, AUCs, shares, rates: :data:`BOUNDED`) gets a logit-scale
t-interval, which never leaves [0, 1]; an unbounded one (a difference, an angle gap) the
Student-t interval, with n = 3 mean +- 4.30 sd / sqrt(3): wide, and said so rather than hidden.
Every cell is given twice,
over all runs and over the runs that learned, because averaging only the runs that passed a gate
tied to the outcome biases the mean.

Two losses are compared through *paired* differences: the runs of one condition and one seed
share the noise draw (the sweep's manifest of that seed) and the held-out split, so the
difference of a metric within each pair cancels the variance they share; its mean and 95 %
interval over the pairs say whether A differs from B. Both runs of a pair are read at the same
epoch: the last (``epoch_rule = last``) or the one the sweep's ``analysis.epoch`` fixes
(``fixed``), never each run's own best held-out epoch. One comparison may be named primary
before the run; every other one carries a Holm correction (:mod:`noisyfr.analysis.comparisons`).
How much of a weight difference comes from p and how much from the slope dT/dcos is not read
here: the counterfactual p- and slope-channel shares on one logged geometry are
(:mod:`noisyfr.analysis.counterfactual`).

No epoch is chosen with the ground truth: each run is read at its last epoch and at the epoch of
its best held-out accuracy (:func:`run_values`). A maximum over epochs taken with the noise
labels appears only as ``oracle_*``.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import special

from noisyfr.analysis import comparisons
from noisyfr.angle_log import heldout_noise_rate

#: Metrics of a run that the cell and paired tables summarise (those present are used).
METRICS = ("heldout_accuracy", "reference_heldout_accuracy", "val_accuracy", "val_reference_accuracy",
           "clean_true_accuracy", "noisy_fit_given",
           "auc", "auc_closed", "auc_open", "noisy_weight_share", "noisy_unit_pull_share",
           "weight_share_per_fraction",
           "theta_gap_deg", "estimated_rate", "estimate_error", "disagreement_error")
#: Metrics bounded by [0, 1]: their intervals over seeds are taken on the logit scale.
BOUNDED = frozenset({"heldout_accuracy", "val_accuracy", "clean_true_accuracy", "noisy_fit_given",
                     "auc", "auc_closed", "auc_open", "noisy_weight_share", "noisy_unit_pull_share",
                     "estimated_rate", "precision", "recall", "noise_left", "clean_lost",
                     "accuracy"})
#: Epoch rules of :func:`run_values`: ``fixed`` only where ``analysis.epoch`` names an epoch.
EPOCH_RULES = ("last", "heldout", "fixed")
#: Epoch rules at which both runs of a pair are read at the same epoch.
PAIRED_RULES = ("last", "fixed")
LEVEL = 0.95


def interval(values, level: float = LEVEL, bounded: bool = False) -> dict:
    """Mean, sample sd, n and the two-sided 95 % interval of the mean of the finite ``values``
    (``lo``/``hi`` NaN with fewer than 2 values).

    Unbounded (default): the Student-t interval, mean +- t(n-1) sd / sqrt(n). ``bounded``
    (values in [0, 1]): the same t-interval on the logit scale around the logit of the mean, its
    standard error carried by the delta method, and transformed back: logistic(logit(mean) +-
    t(n-1) sd / (sqrt(n) mean (1 - mean))). It lies inside (0, 1) and contains the mean, is
    close to the t-interval when the mean is far from the bounds, and is [mean, mean] when the
    mean sits on a bound (every value there). The mean is the plain mean in both cases."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": sd, "lo": math.nan, "hi": math.nan}
    t = float(special.stdtrit(n - 1, 0.5 + level / 2))
    if not bounded:
        half = t * sd / math.sqrt(n)
        return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}
    if x.min() < -1e-9 or x.max() > 1.0 + 1e-9:
        raise ValueError(f"a bounded interval needs values in [0, 1], got {x.min():g} .. {x.max():g}")
    x = np.clip(x, 0.0, 1.0)  # rounding only
    mean = float(x.mean())
    if mean <= 0.0 or mean >= 1.0:
        return {"n": n, "mean": mean, "sd": sd, "lo": mean, "hi": mean}
    centre = math.log(mean / (1.0 - mean))
    half = t * sd / math.sqrt(n) / (mean * (1.0 - mean))
    return {"n": n, "mean": mean, "sd": sd, "lo": float(special.expit(centre - half)),
            "hi": float(special.expit(centre + half))}


def metric_interval(metric: str, values, level: float = LEVEL) -> dict:
    """:func:`interval` of the values of ``metric``, on the logit scale for :data:`BOUNDED`."""
    return interval(values, level, bounded=metric in BOUNDED)


def select_epoch(metrics: pd.DataFrame, epochs: list[int]) -> tuple[int, str]:
    """The epoch a run is read at without the ground truth: its best ``heldout_accuracy`` (the
    latest of ties), else its best ``val_accuracy`` among evaluated epochs, else its last epoch;
    and the rule used (``heldout``, ``val`` or ``last``)."""
    last = max(epochs)
    for col, rule in (("heldout_accuracy", "heldout"), ("val_accuracy", "val")):
        if col in metrics.columns and "epoch" in metrics.columns:
            m = metrics[metrics["epoch"].isin(epochs)]
            v = pd.to_numeric(m[col], errors="coerce")
            if v.notna().any():
                best = v.max()
                return int(m.loc[v == best, "epoch"].max()), rule
    return last, "last"


def run_values(runs, epoch_table: pd.DataFrame, rtab: pd.DataFrame,
               epoch: int | str = "last") -> pd.DataFrame:
    """Every run twice, at its last epoch (``epoch_rule = last``) and at its selected epoch
    (``epoch_rule = heldout``, see :func:`select_epoch`; ``selected_by`` names the rule that
    applied), and a third time at ``epoch`` when it is a number (``epoch_rule = fixed``; a run
    that did not log that epoch has no such row): its settings, ``learned``, the epoch's statistics from ``epoch_table``
    (:func:`noisyfr.analysis.stats.epoch_stats`) and metrics.csv values, the noise-rate estimate
    from the held-out images (``estimated_rate``,
    :func:`noisyfr.train.heldout.heldout_noise_rate`, NaN without them) with its error against
    the closed-set fraction of the samples trained on (``estimate_error``), and the oracle best
    AUC over epochs (chosen with the noise labels: an oracle, never a result)."""
    rows = []
    flags = dict(zip(rtab["run"], rtab["learned"].astype(bool)))
    evidence = dict(zip(rtab["run"], rtab.get("learned_on", pd.Series("train", index=rtab.index))))
    for r in runs:
        ep = epoch_table[epoch_table["run"] == r.name]
        if ep.empty:
            continue
        epochs = sorted(int(e) for e in ep["epoch"])
        oracle = float(ep["auc"].max()) if ep["auc"].notna().any() else math.nan
        chosen, rule = select_epoch(r.metrics, epochs)
        reads = [("last", max(epochs)), ("heldout", chosen)]
        if epoch != "last" and int(epoch) in epochs:
            reads.append(("fixed", int(epoch)))
        for name, at in reads:
            row = ep[ep["epoch"] == at].iloc[0].to_dict()
            m = r.metrics[r.metrics["epoch"] == at] if "epoch" in r.metrics.columns else r.metrics.iloc[0:0]
            for col in ("heldout_accuracy", "heldout_given_accuracy", "val_accuracy",
                        "reference_heldout_accuracy", "val_reference_accuracy"):  # the last two: features runs
                row[col] = float(pd.to_numeric(m[col], errors="coerce").iloc[-1]) \
                    if col in m.columns and len(m) else math.nan
            # the noise-rate estimate of the summaries: from the held-out images
            row["estimated_rate"] = heldout_noise_rate(row["heldout_accuracy"],
                                                       row["heldout_given_accuracy"], r.num_classes)
            row["estimate_error"] = row["estimated_rate"] - row.get("closed_fraction", math.nan)
            row.update(loss_name=r.loss_name, grad_mode=r.loss_settings.get("grad_mode"),
                       learned=flags.get(r.name, False), learned_on=evidence.get(r.name, "train"),
                       epoch_rule=name, selected_by=rule if name == "heldout" else "last",
                       oracle_best_auc=oracle)
            rows.append(row)
    out = pd.DataFrame(rows)
    if len(out) and "noisy_fraction" in out.columns:
        out["weight_share_per_fraction"] = out["noisy_weight_share"] / out["noisy_fraction"].where(
            out["noisy_fraction"] > 0)
    return out


def _metrics(df: pd.DataFrame) -> list[str]:
    return [m for m in METRICS if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]


def cell_table(values: pd.DataFrame) -> pd.DataFrame:
    """Per epoch rule, loss, condition and metric: n, mean and 95 % interval over all runs, and
    over the runs that learned (``n_learned``, ``learned_mean``, ``learned_lo``, ``learned_hi``).
    A cell none of whose runs learned has ``n_learned = 0``: a result, shown as such."""
    rows = []
    if values.empty:
        return pd.DataFrame()
    for (rule, loss, cond), g in values.groupby(["epoch_rule", "loss", "condition"], sort=True):
        ok = g[g["learned"].astype(bool)]
        for m in _metrics(values):
            a = metric_interval(m, pd.to_numeric(g[m], errors="coerce"))
            b = metric_interval(m, pd.to_numeric(ok[m], errors="coerce"))
            rows.append({"epoch_rule": rule, "loss": loss, "condition": cond, "metric": m,
                         "n_runs": len(g), "n": a["n"], "mean": a["mean"], "lo": a["lo"], "hi": a["hi"],
                         "n_learned": b["n"], "learned_mean": b["mean"], "learned_lo": b["lo"],
                         "learned_hi": b["hi"]})
    return pd.DataFrame(rows)


def paired_table(values: pd.DataFrame, plan: comparisons.AnalysisPlan | None = None) -> pd.DataFrame:
    """Per condition, pair of losses (A, B) and metric, at the epoch rule of ``plan``
    (``last``, or ``fixed`` = ``analysis.epoch``; :data:`PAIRED_RULES`): the differences A - B
    within runs of the same seed (same noise draw and split) read at the same epoch, their mean
    and 95 % t-interval (``n_pairs``), over all pairs and over pairs where both runs learned.
    A pair whose two runs were read at different epochs (runs of different lengths) is left out
    and counted in ``n_unpaired``. ``role``, ``p_value``, ``p_holm``, ``family_size`` and
    ``verdict`` (``A > B``, ``A < B`` or ``no difference``) come from
    :func:`noisyfr.analysis.comparisons.mark`: the primary comparison reads its own interval,
    every other one its Holm-adjusted p-value."""
    plan = plan or comparisons.AnalysisPlan()
    rows = []
    if values.empty or "seed" not in values.columns:
        return pd.DataFrame()
    rule = plan.paired_rule
    for cond, g in values[values["epoch_rule"] == rule].groupby("condition", sort=True):
        losses = sorted(g["loss"].unique())
        for a, b in itertools.combinations(losses, 2):
            ga = g[g["loss"] == a].set_index("seed")
            gb = g[g["loss"] == b].set_index("seed")
            shared = sorted(set(ga.index) & set(gb.index))
            seeds = [s for s in shared if int(ga.loc[s, "epoch"]) == int(gb.loc[s, "epoch"])]
            if not seeds:
                continue
            both = [s for s in seeds if bool(ga.loc[s, "learned"]) and bool(gb.loc[s, "learned"])]
            for m in _metrics(values):
                d = pd.to_numeric(ga.loc[seeds, m], errors="coerce") - pd.to_numeric(gb.loc[seeds, m], errors="coerce")
                x = interval(d.to_numpy())
                y = interval(d.loc[both].to_numpy()) if both else interval([])
                rows.append({"epoch_rule": rule, "condition": cond, "loss_a": a, "loss_b": b,
                             "metric": m, "n_pairs": x["n"], "diff_mean": x["mean"],
                             "diff_lo": x["lo"], "diff_hi": x["hi"], "verdict": "",
                             "n_pairs_learned": y["n"], "learned_diff_mean": y["mean"],
                             "learned_diff_lo": y["lo"], "learned_diff_hi": y["hi"],
                             "n_unpaired": len(shared) - len(seeds), "_diffs": d.to_numpy()})
    if not rows:
        return pd.DataFrame()
    return comparisons.mark(pd.DataFrame(rows), plan)


def convention_table(values: pd.DataFrame, rule: str = "last") -> pd.DataFrame:
    """Does a difference between two losses depend on the gradient convention? Per condition,
    pair of loss *names* run in two grad modes, and metric: the paired difference A - B within
    each mode (over the seeds both modes share), and its change between the modes
    (``exact`` minus ``detached`` per seed, a difference of differences) with 95 % intervals;
    every run read at the epoch ``rule`` (``last`` or ``fixed``: the same epoch for every run)."""
    rows = []
    v = values[values["epoch_rule"] == rule] if len(values) else values
    if v.empty or "grad_mode" not in v.columns:
        return pd.DataFrame()
    for cond, g in v.groupby("condition", sort=True):
        names = sorted(n for n, m in g.groupby("loss_name")["grad_mode"].nunique().items() if m > 1)
        for a, b in itertools.combinations(names, 2):
            for m in _metrics(v):
                per_mode = {}
                for mode in ("exact", "detached"):
                    ga = g[(g["loss_name"] == a) & (g["grad_mode"] == mode)].set_index("seed")[m]
                    gb = g[(g["loss_name"] == b) & (g["grad_mode"] == mode)].set_index("seed")[m]
                    per_mode[mode] = (pd.to_numeric(ga, errors="coerce")
                                      - pd.to_numeric(gb, errors="coerce")).dropna()
                seeds_both = sorted(set(per_mode["exact"].index) & set(per_mode["detached"].index))
                ex, de = interval(per_mode["exact"]), interval(per_mode["detached"])
                dd = interval((per_mode["exact"].loc[seeds_both] - per_mode["detached"].loc[seeds_both]).to_numpy())
                rows.append({"epoch_rule": rule, "condition": cond, "loss_a": a, "loss_b": b, "metric": m,
                             "exact_diff": ex["mean"], "exact_lo": ex["lo"], "exact_hi": ex["hi"], "n_exact": ex["n"],
                             "detached_diff": de["mean"], "detached_lo": de["lo"], "detached_hi": de["hi"],
                             "n_detached": de["n"], "change": dd["mean"], "change_lo": dd["lo"],
                             "change_hi": dd["hi"], "n_change": dd["n"]})
    return pd.DataFrame(rows)


def format_interval(mean: float, lo: float, hi: float, n: int, digits: int = 3) -> str:
    """``0.456 [0.449, 0.462] n=3`` (``-`` without a value, no interval below n = 2)."""
    if not (isinstance(mean, float) and math.isfinite(mean)):
        return f"- n={n}"
    if not (isinstance(lo, float) and math.isfinite(lo)):
        return f"{mean:.{digits}f} n={n}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] n={n}"


def interval_texts(df: pd.DataFrame, mean: str, lo: str, hi: str, n: str, digits: int = 3) -> list[str]:
    """:func:`format_interval` for every row of ``df``, from the named columns."""
    return [format_interval(m, a, b, int(k), digits) for m, a, b, k in zip(df[mean], df[lo], df[hi], df[n])]


def heldout_estimates(values: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`run_values` at the held-out-chosen epoch that have a noise-rate estimate."""
    if values.empty:
        return values
    return values[(values["epoch_rule"] == "heldout") & values["estimated_rate"].notna()]


def cell_text(cells: pd.DataFrame, metrics: list[str], rule: str = "heldout") -> pd.DataFrame:
    """One row per loss, condition and metric (in the order of ``metrics``) with the interval over
    all runs and over the learned runs as text, for Markdown tables and the demo's printout."""
    if cells.empty:
        return pd.DataFrame()
    c = cells[(cells["epoch_rule"] == rule) & cells["metric"].isin(metrics)].copy()
    c["_order"] = c["metric"].map({m: i for i, m in enumerate(metrics)})
    c = c.sort_values(["loss", "condition", "_order"])
    return pd.DataFrame({
        "loss": c["loss"], "condition": c["condition"], "metric": c["metric"],
        "runs (learned)": [f"{a} ({b})" for a, b in zip(c["n_runs"], c["n_learned"])],
        "all runs": interval_texts(c, "mean", "lo", "hi", "n"),
        "learned runs": interval_texts(c, "learned_mean", "learned_lo", "learned_hi", "n_learned"),
    }).reset_index(drop=True)
