"""``noisyfr demo`` (what ``make demo`` runs): the main job on the embedded synthetic default.

Sweeps the shipped config ``demo`` (``experiments/configs/demo.yaml``: arcface, cosface, expface x
closed-set noise {0, 0.4} on synthetic identities, CPU, no download) into ``runs/demo``; then writes
its analysis report to ``runs/demo/report``. Running it again finishes an interrupted demo, or just
rewrites the results of a finished one.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from noisyfr.errors import NoisyFRError

#: a shipped config's name (noisyfr.shipped) or a path
DEFAULT_CONFIG = "demo"
DEFAULT_OUT = "runs/demo"

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr demo --out runs/demo']


#: (metric, what it is) printed by :func:`conclusions`
_PRINTED = (("heldout_accuracy", "held-out identification accuracy"),
            ("auc_closed", "detection AUC of closed-set noisy samples from theta_y"),
            ("noisy_weight_share", "noisy share of grad_norm"),
            ("noisy_unit_pull_share", "noisy share of unit_pull"))


def conclusions(tables: Path) -> list[str]:
    """What the demo can and cannot conclude, from its report's tables: learned runs per cell on
    held-out evidence, the cells' intervals over seeds and the paired differences between
    losses, each with its caveat."""
    import pandas as pd

    cells = pd.read_csv(tables / "cells.csv")
    try:
        paired = pd.read_csv(tables / "paired.csv")
    except pd.errors.EmptyDataError:  # no two losses shared a seed
        paired = pd.DataFrame()
    runs = pd.read_csv(tables / "runs.csv")
    from noisyfr.analysis.seeds import cell_text

    lines = ["", "== what the demo shows (cells: runs at their best held-out epoch; pairs: both runs at "
             "one epoch; mean [95 % interval over seeds] n)"]
    ev = runs["learned_on"].value_counts().to_dict() if "learned_on" in runs else {}
    lines.append(f"learned: {int(runs['learned'].sum())} of {len(runs)} runs (evidence: "
                 + ", ".join(f"{k} {n}" for k, n in sorted(ev.items())) + ")")
    text = cell_text(cells, [m for m, _ in _PRINTED])
    for _, r in text.iterrows():
        if not r["all runs"].startswith("-") and not (r["condition"] == "clean" and "share" in r["metric"]):
            lines.append(f"  {r['loss']:<30} {r['condition']:<10} {r['metric']:<21} {r['all runs']:<27} "
                         f"runs (learned) {r['runs (learned)']}")
    n_seeds = int(runs["seed"].nunique()) if "seed" in runs else 1
    if len(paired):
        # pairs are read at one epoch for both runs (the last, or the config's analysis.epoch)
        p = paired[paired["epoch_rule"].isin(("last", "fixed")) & (paired["metric"] == "noisy_weight_share")
                   & (paired["condition"] != "clean")]
        for _, r in p.iterrows():
            lines.append(f"  paired ({r['epoch_rule']} epoch) {r['loss_a']} - {r['loss_b']} at {r['condition']}: "
                         f"{r['diff_mean']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}] "
                         f"n={int(r['n_pairs'])}: {r['verdict']}")
    lines += counterfactual_lines(tables)
    lines += [
        "can conclude: whether each loss learns under 40 % closed-set noise on held-out images, and "
        "how well theta_y separates noisy from clean samples, with intervals over "
        f"{n_seeds} seed(s).",
        "cannot conclude: which loss gives noisy samples less pull in the published regime. The "
        "counterfactual shares above hold one run's geometry fixed (no seed variance, but not what "
        "a run of the other loss reaches), and where the clean p is near 0 no loss can differ "
        f"through p; {n_seeds} seed(s) give wide intervals to the paired differences. For that "
        "question run experiments/configs/science.yaml (docs/science.md)."]
    return lines


def counterfactual_lines(tables: Path) -> list[str]:
    """The counterfactual noisy shares at the noisiest condition (tables/counterfactual.csv):
    per geometry (the trained loss) and loss weighting it, mean [min, max] over the runs."""
    import pandas as pd

    from noisyfr.analysis.counterfactual import summary

    path = tables / "counterfactual.csv"
    try:
        s = summary(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return []
    s = s[s["condition"] != "clean"]
    if s.empty:
        return ["  counterfactual shares: not available (no lse_neg in the angle logs)"]
    lines = ["  counterfactual noisy share on each run's own geometry (last epoch; p channel, slope "
             "channel; mean p of clean samples):"]
    for _, r in s.iterrows():
        lines.append(f"    {r['condition']:<10} geometry {r['loss']:<28} as {r['counterfactual']:<28} "
                     f"{r['noisy_share']:.4f} [{r['noisy_share_min']:.4f}, {r['noisy_share_max']:.4f}] "
                     f"(p {r['p_channel_share']:.4f}, slope {r['slope_channel_share']:.4f}; "
                     f"p clean {r['mean_p_clean']:.3f})")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr demo`` (all optional)."""
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"sweep YAML or a shipped config's name (default {DEFAULT_CONFIG})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--no-report", action="store_true", help="skip the analysis report")
    parser.add_argument("--address", help="run on an existing Ray cluster ('auto' or HOST:PORT)")


def run(args: argparse.Namespace) -> int:
    """Run the demo sweep, then its analysis report."""
    from noisyfr.analysis import write_report
    from noisyfr.shipped import config_path
    from noisyfr.tune import load_sweep, run_sweep
    from noisyfr.tune.spec import STATE_FILE

    t0 = time.time()
    config = config_path(args.config, "demo config")
    spec = load_sweep(config, sweep_dir=args.out)
    resume = (spec.sweep_dir / STATE_FILE).exists()
    if resume:
        print(f"noisyfr demo: continuing the sweep in {spec.sweep_dir} (delete it to start afresh)")
    try:
        run_sweep(spec, resume=resume, address=args.address, inputs=[config])
    except NoisyFRError as exc:
        if resume and "differs" in str(exc):
            raise NoisyFRError(f"{exc} (the demo config changed: delete {spec.sweep_dir})") from None
        raise
    print(f"results: {spec.sweep_dir / 'results.csv'}  summary: {spec.sweep_dir / 'summary.md'}")
    if not args.no_report:
        report_dir = spec.sweep_dir / "report"
        write_report(spec.sweep_dir, report_dir)
        print(f"report: {report_dir}")
        print("\n".join(conclusions(report_dir / "tables")))
    print(f"noisyfr demo: done in {time.time() - t0:.0f} s")
    return 0
