"""The kappa-to-angle table of a class-cluster sweep (``experiments/configs/clusters.yaml``).

    .venv/bin/python benchmarks/clusters_kappa.py runs/clusters [--csv OUT.csv]

For every run of the sweep (a ``synthetic-features:`` training set; the sweep must be finished):
the clean-mode angle (median theta_y of the clean samples, in degrees, at the run's last epoch),
the noisy samples' median theta_y, the held-out accuracy at the last epoch and the ``learned``
flag, read through the analysis views (:func:`noisyfr.analysis.views.open`). Then one row per
kappa x noise condition: mean and 95 % Student-t interval over the seeds (clipped to the angle's
bounds [0, 180] and the accuracy's [0, 1]) and the generator's own angle
``arccos A_d(kappa)`` (:func:`noisyfr.data.clusters.mean_cosine`) beside it. No epoch is chosen:
every run is read at its last epoch. Prints a Markdown table; ``--csv`` writes the per-run values.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import yaml

from noisyfr.analysis import views
from noisyfr.analysis.seeds import interval
from noisyfr.data import clusters

QUERY = """
SELECT a.run,
       degrees(median(a.theta_y) FILTER (WHERE NOT a.is_noisy)) AS clean_deg,
       degrees(median(a.theta_y) FILTER (WHERE a.is_noisy)) AS noisy_deg
FROM angles a JOIN runs r USING (run)
WHERE a.epoch = r.epochs
GROUP BY a.run
"""


def run_table(sweep: Path) -> pd.DataFrame:
    """One row per run: kappa, dim, ids, noise condition, seed, the angles, held-out accuracy, learned."""
    con = views.open(sweep)
    angles = con.sql(QUERY).df()
    runs = con.sql("SELECT run, path, condition, seed, epochs, learned FROM runs").df()
    last = con.sql("SELECT e.run, e.heldout_accuracy FROM epochs e JOIN runs r USING (run) "
                   "WHERE e.epoch = r.epochs").df()
    df = runs.merge(angles, on="run").merge(last, on="run", how="left")
    params = [clusters.parse_spec(yaml.safe_load((Path(p) / "config.yaml").read_text())["data"]["train"])
              for p in df["path"]]
    for key in ("kappa", "dim", "ids"):
        df[key] = [p[key] for p in params]
    return df.drop(columns=["path"]).sort_values(["kappa", "condition", "seed"], ascending=[False, True, True])


def _cell(values, lo: float, hi: float, digits: int) -> str:
    it = interval(values)
    if it["n"] == 0:
        return "-"
    if it["n"] < 2:
        return f"{it['mean']:.{digits}f} (n=1)"
    return (f"{it['mean']:.{digits}f} [{max(lo, it['lo']):.{digits}f}, "
            f"{min(hi, it['hi']):.{digits}f}]")


def summary(df: pd.DataFrame) -> str:
    """The Markdown table: one row per kappa x condition."""
    lines = ["| kappa | generator angle (deg) | noise | seeds | learned | clean median theta_y (deg) "
             "| noisy median theta_y (deg) | held-out accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for (kappa, cond), g in df.groupby(["kappa", "condition"], sort=False):
        gen = math.degrees(math.acos(float(clusters.mean_cosine(kappa, int(g["dim"].iloc[0])))))
        lines.append(f"| {kappa:g} | {gen:.1f} | {cond} | {len(g)} | {int(g['learned'].sum())} "
                     f"| {_cell(g['clean_deg'], 0, 180, 1)} | {_cell(g['noisy_deg'], 0, 180, 1)} "
                     f"| {_cell(g['heldout_accuracy'], 0, 1, 3)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--csv", type=Path)
    args = ap.parse_args(argv)
    df = run_table(args.sweep)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(summary(df))


if __name__ == "__main__":
    main()
