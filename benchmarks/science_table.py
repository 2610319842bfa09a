"""The science tables of docs/science.md from the reports of the science grids.

    python benchmarks/science_table.py LABEL=REPORT_DIR [LABEL=REPORT_DIR ...] [--out DIR]

Each REPORT_DIR is ``noisyfr analyze SWEEP --weight weight`` of one science grid
(experiments/configs/science_*.yaml): the share of the pull is the logged ``weight`` column,
|dL/dcos theta_y|, the quantity the counterfactual weights compute, so the actual and the
counterfactual shares are the same quantity. Printed (and written as CSV with ``--out``):

- regime: per noise rate and loss, the runs, the learned ones, the clean and noisy median theta_y, the clean
  samples' mean p under the run's own loss, the noisy share of the pull and held-out accuracy,
  at the last epoch, mean [95 % interval over seeds] (logit scale for quantities in [0, 1]);
- actual: per noise rate, ExpFace 0.7 minus each comparator in the same gradient mode, paired by seed at the
  last epoch (the report's tables/paired.csv); the primary row of each regime (the one the
  report marks: each config's ``analysis.primary``) reads its 95 % interval, every other row
  carries a Holm-adjusted p-value over all the secondary rows printed;
- counterfactual: per noise rate, the same difference with the geometry held fixed, on each run of either loss
  (tables/counterfactual.csv at the run's last epoch), mean [95 % t-interval over the runs],
  for the noisy share and its p channel and slope channel; Holm-adjusted over the rows printed;
- answer: one row per regime and noise rate, the rows above that answer the question: the clean
  mode (ExpFace 0.7 detached), the runs that learned, and ExpFace 0.7 minus the matched ArcFace
  (shape) in each gradient arm, actual and counterfactual (on ExpFace's own runs), and minus
  ArcFace 0.5 (strength and shape), detached.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from noisyfr.analysis.comparisons import holm, paired_p
from noisyfr.analysis.seeds import interval

EXPFACE = "expface s=32 m=0.7"
METRIC = "noisy_weight_share"
BOUNDED = {"noisy_weight_share", "heldout_accuracy", "mean_p_clean"}


def fmt(x: dict, digits: int = 3) -> str:
    if not np.isfinite(x["mean"]):
        return "-"
    if x["n"] < 2:
        return f"{x['mean']:.{digits}f} (n=1)"
    return f"{x['mean']:.{digits}f} [{x['lo']:.{digits}f}, {x['hi']:.{digits}f}]"


def sfmt(x: dict) -> str:
    """A signed difference with its interval: 4 decimals, or 2 significant digits below 5e-4."""
    if not np.isfinite(x["mean"]):
        return "-"
    f = "+.4f" if abs(x["mean"]) >= 5e-4 else "+.1e"
    return f"{x['mean']:{f}} [{x['lo']:{f}}, {x['hi']:{f}}]"


def read(tables: Path, name: str) -> pd.DataFrame:
    try:
        return pd.read_csv(tables / name)
    except pd.errors.EmptyDataError:  # a report with nothing to pair (one loss)
        return pd.DataFrame(columns=["metric", "loss_a", "loss_b", "loss", "counterfactual"])


def regime_rows(regime: str, tables: Path) -> list[dict]:
    rv = read(tables, "run_values.csv")
    rv = rv[rv["epoch_rule"] == "last"]
    cf = read(tables, "counterfactual.csv")
    last = cf.groupby("run")["epoch"].transform("max")
    own = cf[(cf["epoch"] == last) & cf["same_loss"].astype(bool)].set_index("run")["mean_p_clean"]
    rv = rv.assign(mean_p_clean=rv["run"].map(own))
    rows = []
    for (cond, loss), g in rv.groupby(["condition", "loss"], sort=True):
        row = {"regime": regime, "noise": noise_of(cond), "loss": loss, "runs": len(g),
               "learned": int(g["learned"].astype(bool).sum())}
        for col, digits in (("theta_clean_median_deg", 1), ("theta_noisy_median_deg", 1),
                            ("mean_p_clean", 3), (METRIC, 3), ("heldout_accuracy", 3)):
            row[col] = fmt(interval(g[col].to_numpy(float), bounded=col in BOUNDED), digits)
        rows.append(row)
    return rows


def noise_of(condition: str) -> str:
    """The noise part of the report's condition label (``closed=0.2 linear 64->64`` -> ``closed=0.2``)."""
    return str(condition).split(" ")[0]


def mode_of(label: str) -> str:
    """The gradient arm of a loss label: detached, exact, or exact with the remedy."""
    if label.endswith(" detached"):
        return "detached"
    return "exact, grad_floor=1" if " grad_floor=1 " in label else "exact"


def comparator_pairs(losses) -> list[tuple[str, str, str]]:
    """(arm, ExpFace label, comparator label) for every comparator in the same arm."""
    out = []
    for arm in ("detached", "exact", "exact, grad_floor=1"):
        mine = sorted(x for x in losses if mode_of(x) == arm)
        a = [x for x in mine if x.startswith(EXPFACE + " ")]
        out += [(arm, a[0], b) for b in mine if a and b != a[0]]
    return out


def geometry_of(label: str, trained: set) -> str:
    """The runs a counterfactual is read on: the loss's own, or for a loss given only as a
    counterfactual (not trained: a remedied arm read on a report of an older grid) the same
    loss's detached runs."""
    return label if label in trained else label.replace(" grad_floor=1 exact", " detached")


def actual_rows(regime: str, tables: Path) -> list[dict]:
    """The primary row is the one the report marks (the config's ``analysis.primary``)."""
    p = read(tables, "paired.csv")
    p = p[p["metric"] == METRIC]
    losses = set(p["loss_a"]) | set(p["loss_b"])
    rows = []
    for mode, a, b in comparator_pairs(losses):
        hit = p[((p["loss_a"] == a) & (p["loss_b"] == b)) | ((p["loss_a"] == b) & (p["loss_b"] == a))]
        for _, r in hit.iterrows():
            sign = 1.0 if r["loss_a"] == a else -1.0
            lo, hi = sorted((sign * r["diff_lo"], sign * r["diff_hi"]))
            llo, lhi = sorted((sign * r["learned_diff_lo"], sign * r["learned_diff_hi"]))
            primary = str(r.get("role", "")) == "primary"
            rows.append({"regime": regime, "noise": noise_of(r["condition"]), "mode": mode, "comparator": b,
                         "role": "primary" if primary else "secondary", "pairs": int(r["n_pairs"]),
                         "expface_minus_comparator": sfmt({"mean": sign * r["diff_mean"], "lo": lo, "hi": hi}),
                         "p_value": r["p_value"], "learned_pairs": int(r["n_pairs_learned"]),
                         "learned": sfmt({"mean": sign * r["learned_diff_mean"], "lo": llo, "hi": lhi})})
    return rows


def counterfactual_rows(regime: str, tables: Path) -> list[dict]:
    cf = read(tables, "counterfactual.csv")
    cf = cf[(cf["epoch"] == cf.groupby("run")["epoch"].transform("max")) & cf["available"].astype(bool)]
    rows = []
    trained = set(cf["loss"])
    for (cond, mode, a, b) in [(c, *t) for c in sorted(cf["condition"].unique())
                               for t in comparator_pairs(set(cf["counterfactual"]))]:
        for geometry in (geometry_of(a, trained), geometry_of(b, trained)):
            g = cf[(cf["loss"] == geometry) & (cf["condition"] == cond)]
            wide = {c: g.pivot_table(index="run", columns="counterfactual", values=c)
                    for c in ("noisy_share", "p_channel_share", "slope_channel_share")}
            row = {"regime": regime, "noise": noise_of(cond), "mode": mode, "comparator": b,
                   "geometry": geometry, "runs": len(wide["noisy_share"])}
            for c, w in wide.items():
                d = (w[a] - w[b]).to_numpy(float)
                row[c] = sfmt(interval(d))
                if c == "noisy_share":
                    row["p_value"] = paired_p(d)
            rows.append(row)
    return rows


def markdown(df: pd.DataFrame) -> str:
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def answer_rows(reg: pd.DataFrame, act: pd.DataFrame, cfr: pd.DataFrame) -> list[dict]:
    """The condensed table: per regime and noise rate, shape in each arm and strength."""
    rows = []
    for (regime, noise), r in reg.groupby(["regime", "noise"], sort=False):
        mine = r[r["loss"] == f"{EXPFACE} detached"]
        row = {"regime": regime, "noise": noise,
               "clean_mode_deg": mine["theta_clean_median_deg"].iloc[0] if len(mine) else "-",
               "learned": f"{int(r['learned'].sum())}/{int(r['runs'].sum())}"}
        a = act[(act["regime"] == regime) & (act["noise"] == noise)]
        c = cfr[(cfr["regime"] == regime) & (cfr["noise"] == noise)]
        for arm, short in (("detached", "detached"), ("exact", "exact"), ("exact, grad_floor=1", "remedied")):
            matched = [b for b in a.loc[a["mode"] == arm, "comparator"]
                       if b.startswith("arcface ") and " m=0.5 " not in b]
            hit = a[(a["mode"] == arm) & a["comparator"].isin(matched)]
            row[f"shape_{short}_actual"] = hit["expface_minus_comparator"].iloc[0] if len(hit) else "-"
            cf = c[(c["mode"] == arm) & c["comparator"].isin(matched) & c["geometry"].str.startswith(EXPFACE + " ")]
            row[f"shape_{short}_counterfactual"] = cf["noisy_share"].iloc[0] if len(cf) else "-"
        strong = a[(a["mode"] == "detached") & (a["comparator"] == "arcface s=32 m=0.5 detached")]
        row["strength_detached_actual"] = strong["expface_minus_comparator"].iloc[0] if len(strong) else "-"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="LABEL=REPORT_DIR")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    reg, act, cfr = [], [], []
    for item in args.reports:
        label, _, path = item.partition("=")
        tables = Path(path) / "tables"
        if not label or not (tables / "paired.csv").is_file():
            print(f"science_table: {item}: expected LABEL=REPORT_DIR with tables/paired.csv", file=sys.stderr)
            return 2
        reg += regime_rows(label, tables)
        act += actual_rows(label, tables)
        cfr += counterfactual_rows(label, tables)
    frames = {"regime": pd.DataFrame(reg), "actual": pd.DataFrame(act), "counterfactual": pd.DataFrame(cfr)}
    c = frames["counterfactual"]
    if len(c):
        c["p_holm"] = holm(c["p_value"].to_numpy(float))
    a = frames["actual"]
    if len(a):  # Holm over every secondary row of every regime; the primary reads its interval
        second = a["role"] == "secondary"
        a["p_holm"] = np.nan
        a.loc[second, "p_holm"] = holm(a.loc[second, "p_value"].to_numpy(float))
    if len(frames["regime"]) and len(a):
        frames["answer"] = pd.DataFrame(answer_rows(frames["regime"], a, c))
    for name, df in frames.items():
        print(f"\n## {name}\n")
        print(markdown(df) if len(df) else "(none)")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            df.to_csv(args.out / f"science_{name}.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
