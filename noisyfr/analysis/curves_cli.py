"""``noisyfr curves``: similarity and gradient curves of margin losses as a PNG and a CSV.

The numbers come from :func:`noisyfr.losses.curves.curves`, the figure from
:func:`noisyfr.analysis.plots.loss_curves_figure`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path
from noisyfr.losses.curves import (DEFAULT_LOSSES, MAX_CELLS, MAX_CLASSES, MAX_POINTS, check_settings,
                                   curves)
from noisyfr.numeric import int_arg, real_arg

DPI = 120


def plot_curves(df: pd.DataFrame, path) -> Path:
    """Draw the four curves (T, dT/dtheta, exact and detached weights) into a PNG, atomically."""
    from noisyfr.analysis.plots import loss_curves_figure, save_figure

    return save_figure(loss_curves_figure(df), path, dpi=DPI)

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr curves --losses arcface,cosface,expface --out curves.png']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``noisyfr curves``."""
    parser.add_argument("--losses", default=",".join(DEFAULT_LOSSES),
                        help="comma-separated loss names (default: %(default)s)")
    parser.add_argument("--out", default="curves.png",
                        help="PNG to write; the numbers go beside it as .csv (default: %(default)s)")
    parser.add_argument("--points", type=int_arg(lo=2, hi=MAX_POINTS), default=361,
                        help=f"number of theta values in [0, pi], at most {MAX_POINTS} "
                             "(default: %(default)s)")
    parser.add_argument("--classes", type=int_arg(lo=2, hi=MAX_CLASSES), default=1000,
                        help=f"classes in the gradient-weight reference setting, at most {MAX_CLASSES}; "
                             f"points x classes at most {MAX_CELLS} (default: %(default)s)")
    parser.add_argument("--neg-cos", type=real_arg(lo=-1.0, hi=1.0), default=0.0,
                        help="non-target cosine in the reference setting, in [-1, 1] (default: %(default)s)")


def run(args) -> int:
    """Compute the curves, write the CSV and the PNG (both atomically)."""
    from noisyfr.outputs import check_output, csv_safe

    names = [n.strip() for n in str(args.losses).split(",") if n.strip()]
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise NoisyFRError(f"--out {args.out}: must end in .png")
    check_settings(args.points, args.classes, args.neg_cos, names=("--points", "--classes", "--neg-cos"),
                   where="")
    check_output(out)
    check_output(out.with_suffix(".csv"), what="--out (its CSV)")
    df = curves(names, points=args.points, num_classes=args.classes, neg_cos=args.neg_cos)
    csv = out.with_suffix(".csv")
    with atomic_path(csv) as tmp:  # the PNG is drawn inside: if it fails, no CSV either
        csv_safe(df).to_csv(tmp, index=False, float_format="%.10g")
        plot_curves(df, out)
    print(f"wrote {out} and {csv} ({len(names)} losses x {args.points} points)")
    return 0
