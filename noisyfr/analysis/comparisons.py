"""Which paired comparison is the primary one, at which epoch pairs are read, and the Holm
correction of every other comparison.

A sweep config may carry an ``analysis`` section, written before the run and stored with the
sweep (``sweep.json``)::

    analysis:
      epoch: last            # or an epoch number N: both runs of every pair are read there
      primary: {metric: noisy_weight_share, condition: closed=0.4,
                a: expface s=32 m=0.7 detached, b: arcface s=32 m=0.5 detached}

``primary`` names the one comparison the grid was built to answer (loss labels and the
condition as the report prints them, a metric of :data:`noisyfr.analysis.seeds.METRICS`). Its
verdict reads its own 95 % interval. Every other paired comparison at that epoch belongs to one
family and carries a Holm-adjusted p-value (``p_holm``); its verdict reads ``p_holm < 0.05``.
Without a ``primary`` every comparison is in the family.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from noisyfr.errors import NoisyFRError

#: Keys of the ``analysis`` section and of its ``primary`` entry.
SECTION_KEYS = ("epoch", "primary")
PRIMARY_KEYS = ("metric", "a", "b", "condition")
#: Family-wise error rate of the Holm correction (and 1 - the level of the primary's interval).
ALPHA = 0.05


@dataclass
class AnalysisPlan:
    """The ``analysis`` section: ``epoch`` (``"last"`` or an epoch number) and ``primary``
    (``{metric, a, b, condition}`` or None)."""
    epoch: Any = "last"
    primary: dict | None = field(default=None)

    @property
    def paired_rule(self) -> str:
        """The ``epoch_rule`` of :func:`noisyfr.analysis.seeds.run_values` pairs are read at."""
        return "last" if self.epoch == "last" else "fixed"


def _err(key: str, msg: str) -> NoisyFRError:
    return NoisyFRError(f"analysis.{key}: {msg}")


def parse_analysis(section: Any) -> AnalysisPlan:
    """The checked ``analysis`` section of a sweep config (None: the defaults); a
    NoisyFRError naming the key for anything else."""
    from noisyfr.analysis.seeds import METRICS

    if section is None:
        return AnalysisPlan()
    if not isinstance(section, Mapping):
        raise NoisyFRError(f"analysis: expected a mapping with keys {', '.join(SECTION_KEYS)}, got {section!r}")
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise _err(unknown[0], f"unknown key (known: {', '.join(SECTION_KEYS)})")
    epoch = section.get("epoch", "last")
    if epoch != "last" and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise _err("epoch", f"expected 'last' or an epoch number >= 0, got {epoch!r}")
    primary = section.get("primary")
    if primary is not None:
        if not isinstance(primary, Mapping):
            raise _err("primary", f"expected a mapping with keys {', '.join(PRIMARY_KEYS)}, got {primary!r}")
        keys = set(primary)
        if keys != set(PRIMARY_KEYS):
            bad = sorted(keys - set(PRIMARY_KEYS)) or sorted(set(PRIMARY_KEYS) - keys)
            raise _err(f"primary.{bad[0]}", f"the primary comparison takes exactly {', '.join(PRIMARY_KEYS)}")
        for k in PRIMARY_KEYS:
            if not isinstance(primary[k], str) or not primary[k].strip():
                raise _err(f"primary.{k}", f"expected a non-empty string, got {primary[k]!r}")
        if primary["metric"] not in METRICS:
            raise _err("primary.metric", f"{primary['metric']!r} is not a paired metric "
                                         f"(one of {', '.join(METRICS)})")
        if primary["a"] == primary["b"]:
            raise _err("primary.b", "compares a loss with itself")
        primary = {k: str(primary[k]) for k in PRIMARY_KEYS}
    return AnalysisPlan(epoch=epoch, primary=primary)


def read_plan(src: Path) -> AnalysisPlan:
    """The ``analysis`` section stored with the sweep in ``src/sweep.json`` (the defaults for a
    single run or a sweep without one)."""
    from noisyfr.io import read_json

    path = Path(src) / "sweep.json"
    if not path.is_file():
        return AnalysisPlan()
    doc = read_json(path, "sweep state")
    raw = (doc.get("source") or {}).get("raw") if isinstance(doc, dict) else None
    section = raw.get("analysis") if isinstance(raw, dict) else None
    try:
        return parse_analysis(section)
    except NoisyFRError as exc:
        raise NoisyFRError(f"{path}: {exc}") from None


def paired_p(diffs) -> float:
    """Two-sided p-value of the paired t-test that the mean of ``diffs`` is 0 (NaN below 2
    finite values; 0 or 1 when the differences do not vary)."""
    d = np.asarray([x for x in diffs if x is not None and np.isfinite(x)], dtype=float)
    n = len(d)
    if n < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return float(2.0 * special.stdtr(n - 1, -abs(t)))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979) of ``pvalues``, in their order; NaN stays
    NaN and is not counted in the family. ``adjusted <= alpha`` rejects exactly the hypotheses
    Holm's procedure rejects at family-wise level alpha."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _is_primary(df: pd.DataFrame, primary: dict | None) -> np.ndarray:
    if primary is None or df.empty:
        return np.zeros(len(df), dtype=bool)
    same = (df["metric"] == primary["metric"]) & (df["condition"] == primary["condition"])
    fwd = (df["loss_a"] == primary["a"]) & (df["loss_b"] == primary["b"])
    rev = (df["loss_a"] == primary["b"]) & (df["loss_b"] == primary["a"])
    return (same & (fwd | rev)).to_numpy()


def mark(paired: pd.DataFrame, plan: AnalysisPlan) -> pd.DataFrame:
    """``paired`` (one epoch rule) with ``role`` (``primary`` / ``secondary``), ``p_value`` (from
    the column ``_diffs``, dropped), ``p_holm`` (Holm over the secondary rows; the primary's
    own p-value on its row) and ``family_size``; ``verdict`` of a secondary row reads
    ``p_holm < ALPHA``, of the primary its 95 % interval."""
    df = paired.copy()
    df["p_value"] = [paired_p(d) for d in df.pop("_diffs")]
    prim = _is_primary(df, plan.primary)
    df["role"] = np.where(prim, "primary", "secondary")
    sec = ~prim
    adj = np.full(len(df), math.nan)
    adj[sec] = holm(df.loc[sec, "p_value"].to_numpy())
    adj[prim] = df.loc[prim, "p_value"].to_numpy()
    df["p_holm"] = adj
    df["family_size"] = np.where(sec, int(np.isfinite(df.loc[sec, "p_value"]).sum()), 1)
    verdict = np.where(df["diff_mean"] > 0, "A > B", "A < B")
    significant = np.where(prim, (df["diff_lo"] > 0) | (df["diff_hi"] < 0), df["p_holm"] < ALPHA)
    df["verdict"] = np.where(significant & (df["n_pairs"] >= 2), verdict, "no difference")
    return df


def primary_found(paired: pd.DataFrame, plan: AnalysisPlan) -> bool:
    """Whether the planned primary comparison is a row of ``paired``."""
    return plan.primary is not None and bool(_is_primary(paired, plan.primary).any())


def doc_paired(doc, paired: pd.DataFrame, metrics: list[str],
               plan: AnalysisPlan) -> None:
    """The report's paired differences (a :class:`noisyfr.analysis.document.Document`), both runs
    of a pair at one epoch, the primary one first."""
    from noisyfr.analysis import seeds
    from noisyfr.analysis.document import format_number

    p = paired[paired["metric"].isin(metrics)].copy()
    p["difference A - B"] = seeds.interval_texts(p, "diff_mean", "diff_lo", "diff_hi", "n_pairs")
    p["learned pairs"] = seeds.interval_texts(p, "learned_diff_mean", "learned_diff_lo",
                                              "learned_diff_hi", "n_pairs_learned")
    p["p (Holm)"] = [format_number(x) for x in p["p_holm"]]
    p = p.sort_values("role", kind="stable")  # primary before secondary
    at = "its last epoch" if plan.epoch == "last" else f"epoch {plan.epoch} (`analysis.epoch`)"
    if plan.primary is None:
        named = ("No primary comparison was named in the sweep's `analysis.primary`: every "
                 "comparison is secondary.")
    elif primary_found(paired, plan):
        pr = plan.primary
        named = (f"**Primary** (named in the sweep config before the run): {pr['metric']}, "
                 f"{pr['a']} vs {pr['b']} at {pr['condition']}; its verdict reads its 95 % interval.")
    else:
        named = (f"The primary comparison named in `analysis.primary` ({plan.primary}) is not among "
                 "these runs: every comparison is secondary.")
    family = int(paired["family_size"].max()) if len(paired) else 0
    doc.p("Paired differences A - B between two losses over runs of the same seed (same noise "
          f"draw, same held-out split), both runs read at {at}, never each at its own best "
          f"epoch: mean [95 % t-interval over pairs] n. {named} Every other comparison is "
          "*secondary*: one family (every metric, condition and pair of `tables/paired.csv`, "
          f"{family} tests) with Holm-adjusted p-values of the paired t-test (`p (Holm)`); its "
          "verdict is `A > B` or `A < B` when the adjusted p is below 0.05. "
          "Each loss shaped its own geometry here; the counterfactual section below weights one "
          "geometry by every loss and splits the difference into its p channel and its slope "
          "channel.")
    doc.table(p[["role", "condition", "loss_a", "loss_b", "metric", "difference A - B", "p (Holm)",
                 "verdict", "learned pairs"]], "tables/paired.csv")
