"""Similarity and gradient curves of margin losses (``noisyfr curves``).

For a loss, over theta_y in [0, pi]:

- ``target_logit`` T(theta): the target logit before scaling;
- ``dT_dtheta``: its derivative (autograd), and ``dT_dcos`` = -dT/dtheta / sin(theta);
- ``weight_exact`` / ``weight_detached``: |dL/dcos(theta_y)| of the cross-entropy of one sample in
  each gradient mode at the reference setting: ``num_classes`` classes (default 1000), every
  non-target cosine equal to ``neg_cos`` (default 0, i.e. orthogonal centres), computed by autograd
  through the loss itself. ``p_y`` is the softmax probability of the target class there.

Derivatives are taken at theta clamped to [1e-6, pi - 1e-6]; the weights go through the losses'
own clamp of cos to [-1 + 1e-6, 1 - 1e-6], so the exact weight is 0 at theta = 0 and pi.
Stateful losses are shown in their reference state: SphereFace annealed (lambda = lambda_min),
CurricularFace with t = 0, AdaFace with norm = running mean (z = 0), MagFace at the mid-range norm,
BoundaryFace before its start epoch.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from noisyfr.errors import NoisyFRError
from noisyfr.losses import LOSSES, build_loss

DEFAULT_LOSSES = ("arcface", "cosface", "sphereface", "expface")
COLUMNS = ["loss", "theta", "theta_deg", "target_logit", "dT_dtheta", "dT_dcos", "p_y",
           "weight_exact", "weight_detached", "s", "num_classes", "neg_cos"]


def _reference_loss(name: str, grad_mode: str, params: dict):
    loss = build_loss(name, grad_mode=grad_mode, **params).double().eval()
    if hasattr(loss, "set_iteration"):  # SphereFace: annealed state, lambda = lambda_min
        loss.set_iteration(10 ** 12)
    return loss


def loss_curves(name: str, points: int = 361, num_classes: int = 1000, neg_cos: float = 0.0,
                params: dict | None = None) -> pd.DataFrame:
    """Curves of one registered loss as a DataFrame with :data:`COLUMNS` (one row per theta)."""
    if name not in LOSSES:
        raise NoisyFRError(f"unknown loss {name!r}: choose from {', '.join(sorted(LOSSES))}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise NoisyFRError(f"curves: invalid points={points!r}: must be an integer >= 2")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise NoisyFRError(f"curves: invalid num_classes={num_classes!r}: must be an integer >= 2")
    if not -1.0 <= float(neg_cos) <= 1.0:
        raise NoisyFRError(f"curves: invalid neg_cos={neg_cos!r}: must be in [-1, 1]")
    params = dict(params or {})
    params.pop("grad_mode", None)
    theta = torch.linspace(0.0, math.pi, points, dtype=torch.float64)
    ref = _reference_loss(name, "exact", params)
    norms = None
    if getattr(ref, "needs_norms", False):
        norms = torch.full((points,), float(ref.reference_norm), dtype=torch.float64)
    with torch.no_grad():
        target = ref.target_logit(theta, norms)
    theta_e = theta.clamp(1e-6, math.pi - 1e-6).requires_grad_(True)
    (d_theta,) = torch.autograd.grad(ref.target_logit(theta_e, norms).sum(), theta_e)
    d_cos = -d_theta / torch.sin(theta_e.detach())
    labels = torch.zeros(points, dtype=torch.long)
    cols = {}
    for mode in ("exact", "detached"):
        loss = _reference_loss(name, mode, params)
        cos = torch.full((points, num_classes), float(neg_cos), dtype=torch.float64)
        cos[:, 0] = torch.cos(theta)
        cos.requires_grad_(True)
        out = loss.compute(cos, labels, norms=norms)
        F.cross_entropy(out.logits, out.labels, reduction="sum").backward()
        cols[mode] = cos.grad[:, 0].abs()
        if mode == "exact":
            p_y = torch.softmax(out.logits.detach(), dim=1)[:, 0]
    return pd.DataFrame({
        "loss": name,
        "theta": theta.numpy(),
        "theta_deg": torch.rad2deg(theta).numpy(),
        "target_logit": target.numpy(),
        "dT_dtheta": d_theta.numpy(),
        "dT_dcos": d_cos.numpy(),
        "p_y": p_y.numpy(),
        "weight_exact": cols["exact"].numpy(),
        "weight_detached": cols["detached"].numpy(),
        "s": float(ref.s),
        "num_classes": num_classes,
        "neg_cos": float(neg_cos),
    }, columns=COLUMNS)


def curves(losses=DEFAULT_LOSSES, points: int = 361, num_classes: int = 1000,
           neg_cos: float = 0.0, params: dict | None = None) -> pd.DataFrame:
    """Curves of several losses stacked (long format); ``params`` maps loss name -> kwargs."""
    losses = list(losses)
    if not losses:
        raise NoisyFRError("curves: --losses is empty")
    params = params or {}
    return pd.concat([loss_curves(n, points, num_classes, neg_cos, params.get(n)) for n in losses],
                     ignore_index=True)


def plot_curves(df: pd.DataFrame, path) -> Path:
    """Draw the four curves (T, dT/dtheta, exact and detached weights) into a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from noisyfr.io import atomic_path

    sns.set_theme(style="whitegrid", context="notebook")
    names = list(dict.fromkeys(df["loss"]))
    palette = sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharex=True)
    nc, neg = int(df["num_classes"].iloc[0]), float(df["neg_cos"].iloc[0])
    panels = [("target_logit", "T(θ): target logit before scaling"),
              ("dT_dtheta", "dT/dθ"),
              ("weight_exact", "|dL/dcos θ_y|, exact gradient"),
              ("weight_detached", "|dL/dcos θ_y|, detached margin")]
    for ax, (col, title) in zip(axes.flat, panels):
        sns.lineplot(data=df, x="theta_deg", y=col, hue="loss", style="loss", hue_order=names,
                     style_order=names, palette=palette, ax=ax, linewidth=1.8)
        ax.set_title(title)
        ax.set_xlabel("θ_y (degrees)")
        ax.set_ylabel("")
        ax.set_xlim(0, 180)
        ax.set_xticks(range(0, 181, 30))
        if col == "target_logit":
            th = df["theta_deg"].drop_duplicates().sort_values()
            ax.plot(th, [math.cos(math.radians(t)) for t in th], color="0.4", lw=1, ls=":",
                    label="cos θ")
            handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="center right", title="loss", frameon=False)
    fig.suptitle(f"Margin-loss curves (gradient weights: one sample, {nc} classes, "
                 f"non-target cos = {neg:g})")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``noisyfr curves``."""
    parser.add_argument("--losses", default=",".join(DEFAULT_LOSSES),
                        help="comma-separated loss names (default: %(default)s)")
    parser.add_argument("--out", default="curves.png",
                        help="PNG to write; the numbers go beside it as .csv (default: %(default)s)")
    parser.add_argument("--points", type=int, default=361,
                        help="number of theta values in [0, pi] (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=1000,
                        help="classes in the gradient-weight reference setting (default: %(default)s)")
    parser.add_argument("--neg-cos", type=float, default=0.0,
                        help="non-target cosine in the reference setting (default: %(default)s)")


def run(args) -> int:
    """Compute the curves, write the CSV and the PNG (both atomically)."""
    from noisyfr.io import atomic_path

    names = [n.strip() for n in str(args.losses).split(",") if n.strip()]
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise NoisyFRError(f"--out {args.out}: must end in .png")
    df = curves(names, points=args.points, num_classes=args.classes, neg_cos=args.neg_cos)
    csv = out.with_suffix(".csv")
    with atomic_path(csv) as tmp:  # the PNG is drawn inside: if it fails, no CSV either
        df.to_csv(tmp, index=False, float_format="%.10g")
        plot_curves(df, out)
    print(f"wrote {out} and {csv} ({len(names)} losses x {args.points} points)")
    return 0
