"""Seaborn figures of the angle analysis, for notebooks and reports alike.

Every function takes tidy tables from :mod:`noisyfr.analysis.stats` (or the long angle table)
and returns a matplotlib ``Figure``; single-panel ones also draw onto a given ``ax=``. Nothing
here sets the matplotlib backend: a notebook shows the figures inline, and the report (and the
CLI, which picks Agg) writes them with :func:`save_figure`.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from noisyfr.io import atomic_path

NOISE_ORDER = ["clean", "closed", "open", "split", "merge"]
NOISE_PALETTE = {"clean": "#1f77b4", "closed": "#d62728", "open": "#ff7f0e", "split": "#2ca02c", "merge": "#9467bd"}
DPI = 90


def save_figure(fig: matplotlib.figure.Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG atomically (no metadata: same figure, same bytes), close it, return
    the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def _axes(ax, figsize):
    """``(figure, ax)``: the given axes' figure, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def pick_epochs(epochs, k: int = 4) -> list[int]:
    """Up to ``k`` epochs spread evenly from the first to the last."""
    epochs = sorted(set(int(e) for e in epochs))
    if len(epochs) <= k:
        return epochs
    idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, k)).astype(int))
    return [epochs[i] for i in idx]


def one_seed(data: pd.DataFrame) -> pd.DataFrame:
    """Keep the first run (by name) of each loss and condition, so facets show one run, not a pool."""
    first = data.groupby(["loss", "condition"])["run"].transform("min")
    return data[data["run"] == first]


def _span(lo: float, hi: float, step: float, least: float) -> tuple[float, float]:
    """``[lo, hi]`` rounded out to ``step`` degrees, at least ``least`` wide, inside [0, 180]."""
    lo, hi = max(0.0, step * np.floor(lo / step)), min(180.0, step * np.ceil(hi / step))
    if hi - lo < least:
        lo, hi = max(0.0, lo - step), min(180.0, hi + step)
    return lo, hi


def theta_distributions(hist: pd.DataFrame, condition: str, max_epochs: int = 4) -> matplotlib.figure.Figure:
    """Histograms (density per noise type) of theta_y: rows = loss, columns = epochs, colour = noise type.

    ``hist``: binned counts (columns ``run, loss, condition, epoch, noise, bin_left_deg, n``,
    :func:`noisyfr.analysis.engine.theta_histogram`), drawn as weights: no sample is plotted."""
    data = one_seed(hist[(hist["condition"] == condition) & (hist["n"] > 0)])
    epochs = pick_epochs(data["epoch"].unique(), max_epochs)
    data = data[data["epoch"].isin(epochs)]
    width = float(np.diff(np.unique(data["bin_left_deg"])).min()) if data["bin_left_deg"].nunique() > 1 else 0.5
    data = data.assign(theta_y_deg=data["bin_left_deg"] + width / 2)
    hue_order = [n for n in NOISE_ORDER if n in set(data["noise"])]
    # one bin grid for every facet, spanning the data (rounded out to 5 degrees) so narrow
    # distributions late in training are still resolved
    lo, hi = _span(data["bin_left_deg"].min(), data["bin_left_deg"].max() + width, 5.0, 10.0)
    g = sns.displot(data, x="theta_y_deg", weights="n", hue="noise", hue_order=hue_order,
                    palette=NOISE_PALETTE, row="loss", col="epoch", kind="hist", stat="density",
                    common_norm=False, element="step", bins=40, binrange=(lo, hi), height=2.2, aspect=1.3,
                    facet_kws={"sharey": False, "margin_titles": False})
    g.set_titles("{row_name}\nepoch {col_name}", size=8)
    g.set_axis_labels("theta_y (deg)", "density")
    g.figure.suptitle(f"theta_y by noise type over epochs ({condition})", y=1.04)
    return g.figure


def angle_2d(plane: pd.DataFrame, condition: str, threshold_deg: float | None = None) -> matplotlib.figure.Figure:
    """2-D histogram of angle to own centre (x) vs angle to nearest other centre (y) at the last epoch.

    ``plane``: cell counts (columns ``run, loss, condition, epoch, noise, x_left_deg,
    y_left_deg, n``, :func:`noisyfr.analysis.engine.angle_plane`), drawn as weights. Rows = loss,
    columns = noise type. The dashed diagonal is theta_y = theta_nearest: cells below it are
    closer to another class than to their label's. ``threshold_deg`` draws the 2-D region cuts
    (dotted) at that angle on both axes.
    """
    data = one_seed(plane[(plane["condition"] == condition) & (plane["n"] > 0)])
    last = data.groupby("run")["epoch"].transform("max")
    data = data[data["epoch"] == last]
    width = float(np.diff(np.unique(data["x_left_deg"])).min()) if data["x_left_deg"].nunique() > 1 else 1.0
    data = data.assign(theta_y_deg=data["x_left_deg"] + width / 2, theta_nearest_deg=data["y_left_deg"] + width / 2)
    col_order = [n for n in NOISE_ORDER if n in set(data["noise"])]
    both = pd.concat([data["x_left_deg"], data["y_left_deg"]])
    lo, hi = _span(both.min(), both.max() + width, 10.0, 20.0) if len(both) else (0.0, 180.0)
    g = sns.displot(data, x="theta_y_deg", y="theta_nearest_deg", weights="n", row="loss", col="noise",
                    col_order=col_order, kind="hist", bins=30, binrange=((lo, hi), (lo, hi)), height=2.4,
                    aspect=1.0, facet_kws={"margin_titles": False})
    g.set_titles("{row_name}\n{col_name}", size=8)
    for ax in g.axes.flat:
        ax.plot([lo, hi], [lo, hi], ls="--", lw=0.8, color="grey")
        if threshold_deg is not None:
            ax.axvline(threshold_deg, ls=":", lw=0.8, color="black")
            ax.axhline(threshold_deg, ls=":", lw=0.8, color="black")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    g.set_axis_labels("theta_y, own (deg)", "theta, nearest other (deg)")
    g.figure.suptitle(f"own vs nearest-other angle, last epoch ({condition})", y=1.04)
    return g.figure


def _per_condition_lines(data: pd.DataFrame, y: str, ylabel: str, ylim: tuple[float, float],
                         title: str, reference: str | float | None = None) -> matplotlib.figure.Figure:
    """One panel per noise condition in a row (shared y), one line per loss over epochs (mean +- sd
    over seeds); ``reference`` a dotted grey line: a constant, or a column averaged per loss."""
    conds = sorted(data["condition"].unique())
    fig, axes = plt.subplots(1, max(len(conds), 1), figsize=(3.4 * max(len(conds), 1), 3.0),
                             squeeze=False, sharey=True)
    if not conds:
        axes[0, 0].text(0.5, 0.5, "no noisy samples", ha="center", va="center")
    for ax, cond in zip(axes[0], conds):
        d = data[data["condition"] == cond]
        sns.lineplot(d, x="epoch", y=y, hue="loss", marker="o", errorbar="sd", ax=ax)
        if isinstance(reference, str):
            for _, dl in d.groupby("loss"):
                ax.plot(*zip(*dl.groupby("epoch")[reference].mean().items()), ls=":", color="grey", lw=1)
        elif reference is not None:
            ax.axhline(reference, ls=":", color="grey", lw=1)
        ax.set_title(cond, fontsize=9)
        ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def weight_share(epochs_tbl: pd.DataFrame, weight: str = "weight") -> matplotlib.figure.Figure:
    """Share of the total ``weight`` carried by noisy samples per epoch (mean +- sd over seeds).

    Dotted lines: the noisy fraction of samples (the share if every sample weighed the same).
    """
    return _per_condition_lines(epochs_tbl[epochs_tbl["n_noisy"] > 0], "noisy_weight_share",
                                f"noisy share of {weight}", (0, 1),
                                f"{weight} carried by noisy samples (dotted: noisy fraction of samples)",
                                reference="noisy_fraction")


def detection_auc(epochs_tbl: pd.DataFrame) -> matplotlib.figure.Figure:
    """Noisy-sample detection AUC of theta_y per epoch, one panel per noise condition."""
    data = epochs_tbl[(epochs_tbl["n_noisy"] > 0) & (epochs_tbl["n_noisy"] < epochs_tbl["n"])]
    return _per_condition_lines(data, "auc", "detection AUC (theta_y)", (0, 1.02),
                                "separability of noisy samples by theta_y", reference=0.5)


def weight_vs_theta(binned: pd.DataFrame, condition: str, curves: pd.DataFrame | None = None,
                    weight: str = "weight") -> matplotlib.figure.Figure:
    """Mean per-sample ``weight`` as a function of theta_y (binned), clean vs noisy, one panel per
    loss.

    When ``curves`` (columns ``loss, theta_deg, gradient``, in the units of ``weight``) has the
    loss, its analytic gradient magnitude is overlaid (grey, dashed).
    """
    data = binned[binned["condition"] == condition]
    losses = sorted(data["loss"].unique())
    fig, axes = plt.subplots(1, max(len(losses), 1), figsize=(3.6 * max(len(losses), 1), 3.0), squeeze=False)
    for ax, loss in zip(axes[0], losses):
        d = data[data["loss"] == loss]
        sns.lineplot(d, x="bin_centre_deg", y="weight_mean", hue="group", hue_order=["clean", "noisy"],
                     palette={"clean": NOISE_PALETTE["clean"], "noisy": NOISE_PALETTE["closed"]},
                     marker="o", errorbar="sd", ax=ax)
        ax.set_xlim(0, 180)
        ax.set_xlabel("theta_y (deg)")
        ax.set_ylabel(f"mean {weight}")
        ax.set_title(loss, fontsize=9)
        if curves is not None and not curves.empty and loss in set(curves["loss"]):
            c = curves[curves["loss"] == loss]
            ax.plot(c["theta_deg"], c["gradient"], ls="--", color="grey", lw=1.2, label="analytic")
            ax.legend(fontsize=7, loc="best")
        elif curves is not None:
            ax.text(0.02, 0.95, "no analytic curve", transform=ax.transAxes, fontsize=7, va="top", color="grey")
        ax.set_ylim(bottom=0)
    fig.suptitle(f"weight vs theta_y, last epoch ({condition})", fontsize=10)
    fig.tight_layout()
    return fig


def health(epochs_tbl: pd.DataFrame) -> matplotlib.figure.Figure:
    """Training health per epoch: rows = clean_true_accuracy, noisy_fit_given, noisy_fit_true;
    columns = noise condition; one line per loss (mean +- sd over seeds)."""
    metrics = ["clean_true_accuracy", "noisy_fit_given", "noisy_fit_true"]
    data = epochs_tbl.melt(id_vars=["loss", "condition", "epoch", "run"], value_vars=metrics,
                           var_name="metric", value_name="value").dropna(subset=["value"])
    conds = sorted(epochs_tbl["condition"].unique())
    fig, axes = plt.subplots(len(metrics), max(len(conds), 1), squeeze=False, sharex=True,
                             sharey=True, figsize=(3.4 * max(len(conds), 1), 2.2 * len(metrics)))
    for j, cond in enumerate(conds):
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            d = data[(data["condition"] == cond) & (data["metric"] == metric)]
            if len(d):
                sns.lineplot(d, x="epoch", y="value", hue="loss", marker="o", markersize=3,
                             errorbar="sd", ax=ax, legend=(i == 0 and j == len(conds) - 1))
            else:
                ax.text(0.5, 0.5, "no closed-set noise", ha="center", va="center", fontsize=8,
                        transform=ax.transAxes)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(cond if i == 0 else "", fontsize=9)
            ax.set_ylabel(metric if j == 0 else "", fontsize=8)
    if axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title=None)
    fig.suptitle("training health per epoch (plain cosine argmax)", fontsize=10)
    fig.tight_layout()
    return fig


def noise_estimate(estimates: pd.DataFrame, ax=None) -> matplotlib.figure.Figure:
    """The noise-rate estimate (``estimated_rate``) vs the true rate (``true_rate``), one point
    per run."""
    fig, ax = _axes(ax, (3.8, 3.4))
    sns.scatterplot(estimates, x="true_rate", y="estimated_rate", hue="loss", style="loss", s=50, ax=ax)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("true closed-set rate of the trained samples")
    ax.set_ylabel("estimated rate (held-out images)")
    ax.set_title("noise-rate estimate, best held-out epoch", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy(points: pd.DataFrame, ax=None) -> matplotlib.figure.Figure:
    """Verification accuracy vs total noise rate per loss (mean +- sd over seeds)."""
    fig, ax = _axes(ax, (4.6, 3.4))
    if points.empty or points["accuracy"].isna().all():
        ax.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center")
    else:
        sns.lineplot(points, x="noise_rate", y="accuracy", hue="loss", style="loss", markers=True, dashes=False,
                     errorbar="sd", ax=ax)
    ax.set_xlabel("noise rate")
    ax.set_ylabel("verification accuracy")
    ax.set_title("accuracy vs noise rate (mean +- sd over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def loss_curves_figure(df: pd.DataFrame,
                       fig: matplotlib.figure.Figure | None = None) -> matplotlib.figure.Figure:
    """The four panels of ``noisyfr curves`` (T, dT/dtheta, exact and detached gradient weights vs
    theta_y) for a table of :func:`noisyfr.losses.curves.curves`, drawn onto ``fig`` (cleared
    first) or onto a new 13 x 8.5 inch figure, which is returned. Not registered with pyplot."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        if fig is None:
            fig = matplotlib.figure.Figure(figsize=(13, 8.5))
        fig.clear()
        axes = fig.subplots(2, 2, sharex=True)
        names = list(dict.fromkeys(df["loss"]))
        palette = sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))
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
                ax.plot(th, np.cos(np.radians(th)), color="0.4", lw=1, ls=":", label="cos θ")
                handles, labels = ax.get_legend_handles_labels()
            ax.get_legend().remove()
        fig.legend(handles, labels, loc="center right", title="loss", frameon=False)
        fig.suptitle(f"Margin-loss curves (gradient weights: one sample, {nc} classes, "
                     f"non-target cos = {neg:g})")
        fig.tight_layout(rect=(0, 0, 0.86, 1))
    return fig
