"""What a cleaning rule recovers, in percentage points, paired by seed (``noisyfr loop``).

Per loss, condition, seed and accuracy the loop has three runs that share the noise draw, the
held-out images and the initialisation: the run on the noisy labels, the run on the rule's
cleaned labels and the oracle's run (exactly the noisy samples removed). The comparisons are
paired differences over seeds, in percentage points (pp), each with its 95 % t-interval:

- ``rule - noisy``: what cleaning with the rule gains;
- ``oracle - rule``: what it leaves on the table;
- ``oracle - noisy``: what there was to gain.

A *recovered fraction* is a ratio, and the mean of per-seed ratios has no finite moments when
the denominator (the oracle's gain) can come near 0. So it is given only where the oracle's gain
is identified (its interval excludes 0), as the ratio of the mean gains with its Fieller
interval (:func:`fieller`); elsewhere it reads "not identified".
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import special

#: The references of the loop (the same names as :mod:`noisyfr.loop.run`).
NOISY, ORACLE = "noisy", "oracle"
#: Accuracy column -> short name used in column names.
ACCURACIES = (("heldout_accuracy", "heldout"), ("val_accuracy", "val"))
LEVEL = 0.95
NOT_IDENTIFIED = "not identified"


def paired_gains(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per run of the loop) with, per accuracy, ``gain_<acc>_pp`` = 100 (acc -
    acc of the noisy run of the same loss, condition and seed) and ``to_oracle_<acc>_pp`` = 100
    (acc of the oracle run - acc); NaN where a reference is missing."""
    table = table.copy()
    keys = ["loss", "condition", "seed"]
    idx = pd.MultiIndex.from_frame(table[keys])
    for acc, short in ACCURACIES:
        if acc not in table:
            table[acc] = math.nan
        value = pd.to_numeric(table[acc], errors="coerce").to_numpy(dtype=float)
        ref = {}
        for rule in (NOISY, ORACLE):
            rows = table[table["rule"] == rule]
            s = pd.Series(pd.to_numeric(rows[acc], errors="coerce").to_numpy(dtype=float),
                          index=pd.MultiIndex.from_frame(rows[keys]))
            ref[rule] = s[~s.index.duplicated()].reindex(idx).to_numpy(dtype=float)
        table[f"gain_{short}_pp"] = 100.0 * (value - ref[NOISY]) + 0.0   # + 0.0: no -0.0
        table[f"to_oracle_{short}_pp"] = 100.0 * (ref[ORACLE] - value) + 0.0
    return table


def fieller(num, den, level: float = LEVEL) -> dict:
    """The ratio of the means of paired samples ``num`` / ``den`` (finite pairs only) and its
    Fieller interval: the values R for which the paired t-test of mean(num - R den) = 0 is not
    rejected at ``level``. ``identified`` is whether the interval of mean(den) excludes 0; only
    then is the interval a bounded one (``lo``/``hi``; NaN otherwise, and below 2 pairs)."""
    x, y = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    out = {"n": n, "ratio": math.nan, "lo": math.nan, "hi": math.nan, "identified": False}
    if n < 2:
        return out
    mx, my = float(x.mean()), float(y.mean())
    vxx, vyy = float(x.var(ddof=1)) / n, float(y.var(ddof=1)) / n
    vxy = float(np.cov(x, y, ddof=1)[0, 1]) / n
    t2 = float(special.stdtrit(n - 1, 0.5 + level / 2)) ** 2
    out["ratio"] = mx / my if my != 0 else math.nan
    a = my * my - t2 * vyy          # > 0 exactly when the t-interval of mean(den) excludes 0
    if a <= 0:
        return out
    b = -2.0 * (mx * my - t2 * vxy)
    c = mx * mx - t2 * vxx
    root = math.sqrt(max(b * b - 4 * a * c, 0.0))
    out.update(lo=(-b - root) / (2 * a), hi=(-b + root) / (2 * a), identified=True)
    return out


def _interval(values) -> dict:
    from noisyfr.analysis.seeds import interval

    return interval(values)


def recovery_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per loss, condition, rule (not the references) and accuracy: ``n`` pairs and the mean
    and 95 % interval of ``rule_minus_noisy_pp``, ``oracle_minus_rule_pp`` and
    ``oracle_minus_noisy_pp`` over seeds, and ``recovered`` (the ratio of the mean gains) with
    its Fieller interval where the oracle's gain is identified (``identified``)."""
    t = paired_gains(table)
    rows = []
    order = list(dict.fromkeys(t["rule"]))
    for (loss, cond), cell in t.groupby(["loss", "condition"], sort=False):
        oracle = cell[cell["rule"] == ORACLE].set_index("seed")
        for rule in [r for r in order if r not in (NOISY, ORACLE) and r in set(cell["rule"])]:
            g = cell[cell["rule"] == rule].set_index("seed")
            seeds = sorted(set(g.index) & set(oracle.index))
            for acc, short in ACCURACIES:
                gain = g.loc[seeds, f"gain_{short}_pp"].to_numpy(dtype=float)
                left = g.loc[seeds, f"to_oracle_{short}_pp"].to_numpy(dtype=float)
                top = oracle.loc[seeds, f"gain_{short}_pp"].to_numpy(dtype=float)
                row = {"loss": loss, "condition": cond, "rule": rule, "accuracy": acc}
                for name, v in (("rule_minus_noisy_pp", gain), ("oracle_minus_rule_pp", left),
                                ("oracle_minus_noisy_pp", top)):
                    iv = _interval(v)
                    row.update({name: iv["mean"], f"{name}_lo": iv["lo"], f"{name}_hi": iv["hi"]})
                    row["n"] = iv["n"]
                f = fieller(gain, top)
                row.update(identified=f["identified"], recovered=f["ratio"] if f["identified"] else math.nan,
                           recovered_lo=f["lo"], recovered_hi=f["hi"])
                rows.append(row)
    return pd.DataFrame(rows)


def _pp(mean: float, lo: float, hi: float, n: int) -> str:
    if not math.isfinite(mean):
        return f"- n={n}"
    if not math.isfinite(lo):
        return f"{mean:+.1f} n={n}"
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}] n={n}"


def markdown_lines(table: pd.DataFrame) -> list[str]:
    """The recovery table of ``loop.md``, with how to read it."""
    r = recovery_table(table)
    lines = ["## What each rule recovers, in percentage points", "",
             "Paired by seed (the runs of one seed share the noise draw, the held-out images and the "
             "initialisation): mean [95 % t-interval over seeds] n, in percentage points of the "
             "accuracy. *rule - noisy*: what cleaning gains; *oracle - rule*: what it leaves; "
             "*oracle - noisy*: what there was to gain. *recovered*: the ratio of the mean gains "
             "(rule - noisy) / (oracle - noisy) with its Fieller interval, given only where the "
             "oracle's gain interval excludes 0; elsewhere the ratio is *not identified* (a mean of "
             "per-seed ratios with a denominator near 0 has no finite moments).", ""]
    if r.empty:
        return lines + ["No rule has a paired noisy and oracle run.", ""]
    lines.append("| loss | condition | rule | accuracy | rule - noisy (pp) | oracle - rule (pp) | "
                 "oracle - noisy (pp) | recovered |")
    lines.append("|" + "---|" * 8)
    for _, x in r.iterrows():
        n = int(x["n"])
        rec = (f"{x['recovered']:.2f} [{x['recovered_lo']:.2f}, {x['recovered_hi']:.2f}]"
               if x["identified"] else NOT_IDENTIFIED)
        lines.append(f"| {x['loss']} | {x['condition']} | {x['rule']} | {x['accuracy']} | "
                     + " | ".join(_pp(x[k], x[f"{k}_lo"], x[f"{k}_hi"], n) for k in
                                  ("rule_minus_noisy_pp", "oracle_minus_rule_pp", "oracle_minus_noisy_pp"))
                     + f" | {rec} |")
    return lines + [""]
