"""``noisyfr analyze RUN_OR_SWEEP_DIR [--out REPORT_DIR]``: the angle/weighting analysis report
(``--out`` defaults to ``RUN_OR_SWEEP_DIR/report``)."""
from __future__ import annotations

import argparse

from noisyfr.analysis import options
from noisyfr.angle_log import DEFAULT_LEARNED_ACCURACY, WEIGHT_COLUMNS
from noisyfr.numeric import int_arg, real_arg

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr analyze runs/demo --weight grad_norm',
            'noisyfr analyze runs/demo --counterfactual arcface:m=0.405,grad_mode=detached']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``analyze`` options."""
    parser.add_argument("input", metavar="RUN_OR_SWEEP_DIR",
                        help="a training run directory or a sweep directory (results.* + trials/)")
    parser.add_argument("--out", metavar="REPORT_DIR",
                        help="folder for report.md/html, figures, tables (default RUN_OR_SWEEP_DIR/report)")
    parser.add_argument("--quantile", type=real_arg(lo=0.0, hi=1.0, lo_open=True, hi_open=True),
                        default=options.DEFAULT_CENTRE_QUANTILE,
                        help="centre region = theta_y <= this quantile of clean theta_y, in (0, 1) "
                             "(default %(default)s)")
    parser.add_argument("--bins", type=int_arg(lo=2, hi=options.MAX_BINS), default=options.DEFAULT_BINS,
                        help=f"theta_y bins over [0, 180] deg for weight-vs-angle, 2 to {options.MAX_BINS} "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int_arg(lo=0, hi=options.MAX_MIXTURE_SEED), default=0,
                        help="Gaussian-mixture seed, in [0, 2**32) (default %(default)s)")
    parser.add_argument("--metric", default=None,
                        help="accuracy column of the sweep results (default: first of final_val_accuracy, "
                             "val_accuracy, accuracy, best_val_accuracy)")
    parser.add_argument("--weight", default=options.DEFAULT_WEIGHT,
                        metavar="{" + ",".join(WEIGHT_COLUMNS) + "}",
                        help="per-sample weight used for shares: grad_norm (||dL/df||), unit_pull "
                             "(|f| ||(I - x x^T) dL/df||, the tangential pull on the unit embedding: "
                             "comparable across losses and feature norms), weight (|dL/dcos theta|) or "
                             "weight_theta (|dL/dtheta|) (default %(default)s)")
    parser.add_argument("--region-deg", type=real_arg(lo=0.0, hi=180.0, lo_open=True, hi_open=True),
                        default=options.DEFAULT_REGION_DEG, metavar="DEG",
                        help="angle of the fixed and 2-D regions, in (0, 180) (default %(default)s)")
    parser.add_argument("--learned-threshold", type=real_arg(lo=0.0, hi=1.0), default=DEFAULT_LEARNED_ACCURACY,
                        metavar="ACC", help="a run learned when its last epoch's clean-sample accuracy "
                                            "reaches this, in [0, 1] (default %(default)s)")
    parser.add_argument("--counterfactual", action="append", default=[], metavar="LOSS[:KEY=VALUE,...]",
                        help="also weight every run's logged geometry by this loss setting (repeatable; "
                             "s defaults to the run's), beside the runs' own losses: "
                             "tables/counterfactual.csv, e.g. arcface:m=0.405,grad_mode=detached")
    parser.add_argument("--no-figures", action="store_true", help="write tables and report text only (no PNGs)")


def run(args: argparse.Namespace) -> int:
    """Write the report and print its path."""
    from pathlib import Path

    from noisyfr.analysis.report import write_report

    extra = []
    if args.counterfactual:  # checked as building each loss would, without torch for a built-in one
        from noisyfr.targets import parse_loss_spec

        extra = [{"name": n, **p} for n, p in (parse_loss_spec(t, "--counterfactual") for t in args.counterfactual)]
    out = args.out if args.out is not None else Path(args.input) / "report"
    path = write_report(args.input, out, quantile=args.quantile, bins=args.bins, seed=args.seed,
                        metric=args.metric, figures=not args.no_figures, weight=args.weight,
                        region_deg=args.region_deg, learned_threshold=args.learned_threshold,
                        extra_losses=extra)
    print(path)
    return 0
