"""``noisyfr analyze RUN_OR_SWEEP_DIR --out REPORT_DIR``: the angle/weighting analysis report."""
from __future__ import annotations

import argparse

from noisyfr.analysis import stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``analyze`` options."""
    parser.add_argument("input", metavar="RUN_OR_SWEEP_DIR",
                        help="a training run directory or a sweep directory (results.* + trials/)")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for report.md/html, figures, tables")
    parser.add_argument("--quantile", type=float, default=stats.DEFAULT_CENTRE_QUANTILE,
                        help="centre region = theta_y <= this quantile of clean theta_y (default %(default)s)")
    parser.add_argument("--bins", type=int, default=stats.DEFAULT_BINS,
                        help="theta_y bins over [0, 180] deg for weight-vs-angle (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="Gaussian-mixture seed (default %(default)s)")
    parser.add_argument("--metric", default=None,
                        help="accuracy column of the sweep results (default: first of final_val_accuracy, "
                             "val_accuracy, accuracy, best_val_accuracy)")
    parser.add_argument("--no-figures", action="store_true", help="write tables and report text only (no PNGs)")


def run(args: argparse.Namespace) -> int:
    """Write the report and print its path."""
    from noisyfr.analysis.report import write_report

    path = write_report(args.input, args.out, quantile=args.quantile, bins=args.bins, seed=args.seed,
                        metric=args.metric, figures=not args.no_figures)
    print(path)
    return 0
