"""The geometry table of a regime: per loss, grad mode, head and noise rate, the clean and noisy
median theta_y, held-out accuracy beside its reference, detection AUC and noisy fit, each a mean
with its 95 % interval over seeds (docs/feature_regimes.md).

Reads the run values of a report (``REPORT/tables/run_values.csv``, written by ``noisyfr analyze``)
at one stated epoch rule (``last``: every run's last epoch, no choice made). Intervals are the
report's own (:func:`noisyfr.analysis.seeds.interval`): a proportion (accuracy, AUC, fit) on the
logit scale, inside its bounds; an angle the plain t-interval.

    python -m noisyfr.analysis.regime_table runs/lfw_features/report [--rule last] > table.md
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from noisyfr.analysis.seeds import interval
from noisyfr.errors import NoisyFRError

#: (column of run_values.csv, header, kind, digits): kind ``p`` a proportion, ``deg`` an angle.
COLUMNS = (
    ("theta_clean_median_deg", "clean median theta (deg)", "deg", 1),
    ("theta_noisy_median_deg", "noisy median theta (deg)", "deg", 1),
    ("heldout_accuracy", "held-out accuracy", "p", 3),
    ("reference_heldout_accuracy", "class-means reference", "p", 3),
    ("auc", "detection AUC", "p", 3),
    ("noisy_fit_given", "noisy fit", "p", 3),
)


def bounded_interval(values, kind: str) -> tuple[float, float, float, int]:
    """``(mean, lo, hi, n)`` of the finite ``values`` by :func:`noisyfr.analysis.seeds.interval`:
    bounded (logit scale) for a proportion (``kind = "p"``), the plain t-interval for an angle;
    lo/hi NaN below 2 values."""
    x = interval(values, bounded=kind == "p")
    return x["mean"], x["lo"], x["hi"], x["n"]


def _text(mean: float, lo: float, hi: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "-"
    if not math.isfinite(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def regime_table(report_dir: str | Path, rule: str = "last") -> pd.DataFrame:
    """One row per (condition, loss): ``n`` seeds and a ``mean [lo, hi]`` text per column of
    :data:`COLUMNS`, at the epoch rule ``rule`` (``last`` or ``heldout``)."""
    path = Path(report_dir) / "tables" / "run_values.csv"
    if not path.is_file():
        raise NoisyFRError(f"{report_dir}: no tables/run_values.csv (run noisyfr analyze first)")
    values = pd.read_csv(path)
    values = values[values["epoch_rule"] == rule]
    if values.empty:
        raise NoisyFRError(f"{path}: no runs at epoch rule {rule!r}")
    rows = []
    for (cond, loss), g in values.groupby(["condition", "loss"], sort=True):
        row = {"condition": cond, "loss": loss, "n": len(g)}
        for col, head, kind, digits in COLUMNS:
            vals = pd.to_numeric(g[col], errors="coerce") if col in g.columns else pd.Series(dtype=float)
            mean, lo, hi, _ = bounded_interval(vals.to_numpy(), kind)
            row[head] = _text(mean, lo, hi, digits)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for _, r in table.iterrows()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noisyfr.analysis.regime_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="a report folder of noisyfr analyze")
    parser.add_argument("--rule", default="last", choices=("last", "heldout"))
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(markdown(regime_table(args.report, args.rule)))
    except NoisyFRError as exc:
        print(f"regime_table: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
