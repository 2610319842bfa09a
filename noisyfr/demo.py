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

    lines = ["", "== what the demo shows (runs read at their best held-out epoch; mean [95 % interval "
             "over seeds] n)"]
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
        p = paired[(paired["epoch_rule"] == "heldout") & (paired["metric"] == "noisy_weight_share")
                   & (paired["condition"] != "clean")]
        for _, r in p.iterrows():
            built = " (equal by construction: both detached)" if r["equal_by_construction"] else ""
            lines.append(f"  paired {r['loss_a']} - {r['loss_b']} at {r['condition']}: "
                         f"{r['diff_mean']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}] "
                         f"n={int(r['n_pairs'])}: {r['verdict']}{built}")
    lines += [
        "can conclude: whether each loss learns under 40 % closed-set noise on held-out images, and "
        "how well theta_y separates noisy from clean samples, with intervals over "
        f"{n_seeds} seed(s).",
        f"cannot conclude: which loss gives noisy samples less pull. All its losses use grad_mode "
        "detached, whose target weight is s (1 - p) for every loss, so their weight shares are equal "
        f"by construction; and {n_seeds} seed(s) give wide intervals. For that question run "
        "experiments/configs/science.yaml (exact and detached gradients, 3 seeds; docs/science.md)."]
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
