"""``noisyfr curves``: similarity and gradient curves of margin losses as a PNG and a CSV.

The numbers come from :func:`noisyfr.losses.curves.curves`, the figure from
:func:`noisyfr.analysis.plots.loss_curves_figure`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from noisyfr import numeric
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path
from noisyfr.numeric import DEFAULT_CURVE_LOSSES as DEFAULT_LOSSES
from noisyfr.numeric import DEFAULT_MATCH_TOL as DEFAULT_TOL
from noisyfr.numeric import MAX_CURVE_CELLS as MAX_CELLS
from noisyfr.numeric import MAX_CURVE_CLASSES as MAX_CLASSES
from noisyfr.numeric import MAX_CURVE_POINTS as MAX_POINTS
from noisyfr.numeric import int_arg, real_arg

if TYPE_CHECKING:
    import pandas as pd

DPI = 120


def plot_curves(df: pd.DataFrame, path) -> Path:
    """Draw the four curves (T, dT/dtheta, exact and detached weights) into a PNG, atomically."""
    from noisyfr.analysis.plots import loss_curves_figure, save_figure

    return save_figure(loss_curves_figure(df), path, dpi=DPI)

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr curves --losses arcface,cosface,expface --out curves.png',
            'noisyfr curves --match expface:m=0.7 --at 30,45,60,80']


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
    parser.add_argument("--match", metavar="LOSS[:KEY=VALUE,...]", action="append",
                        help="print the ArcFace and CosFace margins whose target logit equals this "
                             "loss's at each --at angle, and the angle bands where they differ by "
                             "more than --tol; writes no file (repeatable)")
    parser.add_argument("--at", default="45", metavar="DEG[,DEG...]",
                        help="matching angles in degrees, in [0, 180] (default: %(default)s)")
    parser.add_argument("--tol", type=real_arg(lo=0.0, lo_open=True), default=DEFAULT_TOL,
                        help="target-logit difference (before s) that counts as differing "
                             "(default: %(default)s)")


def run(args) -> int:
    """Compute the curves, write the CSV and the PNG (both atomically); with ``--match``, print
    the matched margins instead."""
    from noisyfr.losses.curves import check_settings, curves  # torch: the curves are computed by autograd
    from noisyfr.outputs import check_output, csv_safe

    if args.match:
        return print_matches(args.match, args.at, args.tol)

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


def print_matches(specs: list[str], at: str, tol: float) -> int:
    """Print :func:`noisyfr.losses.matching.matching_table` for the ``--match`` specs."""
    from noisyfr.losses.matching import matching_table, parse_loss_spec

    losses = [parse_loss_spec(t) for t in specs]
    angles = [numeric.real(item.strip(), f"--at {item.strip()!r}", lo=0.0, hi=180.0)
              for item in str(at).split(",")]
    df = matching_table(losses, angles, tol)
    print(f"matched margins (target logit equal at theta0; bands: |T_L - T_matched| > {tol:g})")
    for r in df.itertuples():
        arc = "no match" if r.arcface_m != r.arcface_m else f"{r.arcface_m:.4f} rad"
        cos = "no match" if r.cosface_m != r.cosface_m else f"{r.cosface_m:.4f}"
        print(f"{r.loss} at {r.theta0_deg:g} deg: T = {r.T:.4f}; arcface m = {arc} "
              f"(differs at {r.arcface_band}); cosface m = {cos} (differs at {r.cosface_band})")
    return 0
