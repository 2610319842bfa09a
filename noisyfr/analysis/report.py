"""Write the angle/weighting analysis report (Markdown + HTML, PNG figures, CSV tables).

``write_report(run_or_sweep_dir, out_dir)`` loads every run below the input (see
:mod:`noisyfr.analysis.load`), computes the statistics of :mod:`noisyfr.analysis.stats`, draws
the figures of :mod:`noisyfr.analysis.plots` and writes ``out_dir/report.md``, ``report.html``,
``figures/*.png`` and ``tables/*.csv``. Every file is written atomically.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from noisyfr.analysis import load, plots, stats
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path, atomic_write

GMM_TOLERANCE = 0.05


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "-"
        if float(v).is_integer() and abs(v) >= 1:
            return str(int(v))
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats with 3 decimals, NaN as '-')."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "/") for v in row) + " |")
    return "\n".join(lines)


def _curves_module(losses: dict[str, dict], num_classes: int) -> pd.DataFrame | None:
    """Overlay curves from ``noisyfr.losses.curves.loss_curves`` (None when that module is missing)."""
    try:
        from noisyfr.losses.curves import loss_curves
    except ImportError:
        return None
    frames = []
    for loss, params in losses.items():
        params = dict(params)
        mode = params.get("grad_mode", "exact")
        try:
            df = loss_curves(loss, points=181, num_classes=num_classes, params=params)
        except Exception:  # unknown loss or parameters: no curve for it
            continue
        col = "weight_detached" if mode == "detached" else "weight_exact"
        frames.append(pd.DataFrame({"loss": loss, "theta_deg": df["theta_deg"].astype(float),
                                    "gradient": df[col].astype(float).abs()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["loss", "theta_deg", "gradient"])


def _own_curve(loss: str, params: dict, num_classes: int) -> pd.DataFrame | None:
    import torch

    from noisyfr.losses import build_loss

    try:
        mod = build_loss(loss, **params)
        theta = torch.linspace(0.02, math.pi - 0.02, 180, dtype=torch.float64, requires_grad=True)
        target = mod.target_logit(theta)
        (dt_dtheta,) = torch.autograd.grad(target.sum(), theta)
    except Exception:  # unknown loss, parameters or a loss needing feature norms: no curve
        return None
    th = theta.detach()
    s = float(getattr(mod, "s", 1.0))
    if getattr(mod, "grad_mode", "exact") == "detached":  # margin applied under no_grad: dT/dcos = 1
        dt_dcos = torch.ones_like(th)
    else:
        dt_dcos = dt_dtheta / (-torch.sin(th))
    # softmax probability of the target with the other num_classes-1 centres at 90 degrees (cos = 0)
    p = torch.sigmoid(s * target.detach() - math.log(max(num_classes - 1, 1)))
    grad = (s * (1 - p) * dt_dcos.abs()).numpy()
    if not np.isfinite(grad).all():
        return None
    return pd.DataFrame({"loss": loss, "theta_deg": np.degrees(th.numpy()), "gradient": grad})


def run_curves(runs) -> pd.DataFrame | None:
    """:func:`analytic_curves` for the losses of ``runs`` with their configs' loss parameters and the
    manifests' number of classes (first run of each loss)."""
    params: dict[str, dict] = {}
    for r in runs:
        sec = r.config.get("loss") if isinstance(r.config.get("loss"), dict) else {}
        params.setdefault(r.loss, {k: v for k, v in sec.items() if k != "name"})
    num_classes = next((int(r.manifest_meta["num_classes"]) for r in runs
                        if isinstance(r.manifest_meta.get("num_classes"), int)), 0)
    if num_classes < 2:
        num_classes = max(int(r.angles["label"].max()) + 1 for r in runs)
    return analytic_curves(params, num_classes=max(num_classes, 2))


def analytic_curves(losses: dict[str, dict], num_classes: int = 2, use_module: bool = True) -> pd.DataFrame | None:
    """Analytic per-sample gradient magnitude vs theta_y per loss: columns ``loss, theta_deg, gradient``.

    Taken from ``noisyfr.losses.curves.loss_curves`` (``weight_exact``, or ``weight_detached`` for
    ``grad_mode="detached"``) when that module is importable; otherwise computed here from
    ``build_loss(name, **params).target_logit`` by autograd as
    ``s * (1 - p) * |dT/dcos theta|`` (``dT/dcos = 1`` for ``grad_mode="detached"``) with ``p`` the softmax probability of the target when the
    other ``num_classes - 1`` centres are at 90 degrees. Losses that cannot be built (unknown name,
    bad parameters, losses needing feature norms) are left out; None when no loss has a curve.
    """
    if use_module:
        from_module = _curves_module(losses, num_classes)
        if from_module is not None:
            return from_module if not from_module.empty else None
    frames = [c for c in (_own_curve(n, p, num_classes) for n, p in losses.items()) if c is not None]
    return pd.concat(frames, ignore_index=True) if frames else None


class _Doc:
    """Blocks rendered to both Markdown and HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, df: pd.DataFrame, csv_name: str | None = None):
        self.blocks.append(("table", df, csv_name))

    def img(self, rel: str, caption: str):
        self.blocks.append(("img", rel, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append(markdown_table(b[1]) if len(b[1]) else "_(empty)_")
                if b[2]:
                    out.append(f"CSV: [{b[2]}]({b[2]})")
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n_{b[2]}_")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
               "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
               "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
               "img{max-width:100%}figcaption{font-style:italic;font-size:13px}</style>",
               "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                text = html.escape(b[1])
                text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
                text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
                text = re.sub(r"\*([^*]+)\*", r"<i>\1</i>", text)
                out.append(f"<p>{text}</p>")
            elif b[0] == "table":
                out.append(b[1].to_html(index=False, na_rep="-", float_format=lambda v: _fmt(float(v)),
                                        border=0) if len(b[1]) else "<p><i>(empty)</i></p>")
                if b[2]:
                    out.append(f"<p>CSV: <a href=\"{html.escape(b[2])}\">{html.escape(b[2])}</a></p>")
            elif b[0] == "img":
                out.append(f"<figure><img src=\"{html.escape(b[1])}\" alt=\"{html.escape(b[2])}\">"
                           f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def summary_table(ep: pd.DataFrame, reg: pd.DataFrame, est: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """The report's headline table: per loss and condition, last epoch, mean over seeds.

    How far apart clean and noisy samples sit (mean theta_y, gap in degrees, detection AUC) and
    what share of the gradient the noisy ones get (vs their fraction of samples), plus the
    periphery's weight share, the periphery/centre weight-per-sample ratio, the bimodal noise-rate
    estimate and the accuracy.
    """
    last = stats.last_epoch(ep)
    ratio = stats.periphery_ratio(stats.last_epoch(reg))
    periph = stats.last_epoch(reg)
    periph = periph[periph["region"] == "periphery"][["run", "weight_share", "share_of_noisy"]].rename(
        columns={"weight_share": "periphery_weight_share", "share_of_noisy": "noisy_in_periphery"})
    e = stats.last_epoch(est)[["run", "estimated_rate", "mode_separation_sd"]]
    df = (last.merge(ratio[["run", "periphery_to_centre_weight"]], on="run", how="left")
          .merge(periph, on="run", how="left").merge(e, on="run", how="left"))
    values = ["noisy_fraction", "theta_clean_mean_deg", "theta_noisy_mean_deg", "theta_gap_deg", "auc",
              "noisy_weight_share", "periphery_weight_share", "noisy_in_periphery", "periphery_to_centre_weight",
              "estimated_rate", "mode_separation_sd"]
    out = df.groupby(["loss", "condition"], sort=True)[values].mean().reset_index()
    out.insert(2, "n_seeds", df.groupby(["loss", "condition"], sort=True)["run"].nunique().to_numpy())
    out["weight_share_per_fraction"] = out["noisy_weight_share"] / out["noisy_fraction"].where(out["noisy_fraction"] > 0)
    if not acc.empty:
        out = out.merge(acc[["loss", "condition", "accuracy_mean", "accuracy_std"]], on=["loss", "condition"],
                        how="left")
    return out


def write_report(run_or_sweep_dir: str | Path, out_dir: str | Path, quantile: float = stats.DEFAULT_CENTRE_QUANTILE,
                 bins: int = stats.DEFAULT_BINS, seed: int = 0, metric: str | None = None,
                 figures: bool = True) -> Path:
    """Analyse a run or sweep directory and write ``out_dir/report.md`` (+ html, figures, tables).

    ``quantile`` defines the centre region (theta_y at or below that quantile of the clean samples'
    theta_y, per run and epoch), ``bins`` the number of theta_y bins over [0, 180] degrees,
    ``seed`` the Gaussian-mixture seed, ``metric`` the sweep results' accuracy column;
    ``figures=False`` skips drawing the PNGs (tables and report text only; the report still
    references the figure files). Returns the path of report.md.
    """
    src = Path(run_or_sweep_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NoisyFRError(f"{out}: --out exists and is not a directory")
    if bins < 2:
        raise NoisyFRError(f"bins {bins}: need at least 2")
    runs = load.load_runs(src)
    angles = load.long_angles(runs)
    results_path = load.find_results(src)
    results = load.load_results(results_path) if results_path else None

    steps = tqdm(total=8, desc="analyze", disable=None)
    rtab = stats.runs_table(runs)
    ep = stats.epoch_stats(angles)
    steps.update()
    types = stats.noise_type_stats(angles)
    reg = stats.region_stats(angles, quantile)
    ratio = stats.periphery_ratio(reg)
    binned = stats.binned_weight(angles, bins=bins)
    steps.update()
    est = stats.noise_rate_estimates(angles, seed=seed)
    steps.update()
    points = stats.accuracy_points(results, rtab, metric=metric)
    acc = stats.accuracy_table(points)
    summary = summary_table(ep, reg, est, acc)
    curves = run_curves(runs)

    tables = {"summary.csv": summary, "runs.csv": rtab, "epoch_stats.csv": ep, "noise_types.csv": types,
              "regions.csv": reg, "periphery_ratio.csv": ratio, "weight_by_theta.csv": binned,
              "noise_rate_estimates.csv": est, "accuracy.csv": acc, "accuracy_points.csv": points}
    for name, df in tables.items():
        _write_csv(df, out / "tables" / name)
    steps.update()

    conditions = sorted(angles["condition"].unique())
    if figures:
        for cond in conditions:
            s = _slug(cond)
            plots.theta_distributions(angles, cond, out / "figures" / f"theta_hist_{s}.png")
            plots.angle_2d(angles, cond, out / "figures" / f"angle2d_{s}.png")
            plots.weight_vs_theta(binned, cond, out / "figures" / f"weight_vs_theta_{s}.png", curves=curves)
        steps.update()
        plots.weight_share(ep, out / "figures" / "noisy_weight_share.png")
        plots.detection_auc(ep, out / "figures" / "detection_auc.png")
        plots.noise_estimate(stats.last_epoch(est), out / "figures" / "noise_rate_estimate.png")
        plots.accuracy(points, out / "figures" / "accuracy.png")
        steps.update()
    else:
        steps.update(2)

    doc = _Doc()
    doc.h(1, "noisyfr angle analysis")
    losses = sorted(angles["loss"].unique())
    doc.p(f"Source: `{src}` - {len(runs)} run(s), losses {', '.join(losses)}; noise conditions "
          f"{', '.join(conditions)}; epochs {int(angles['epoch'].min())}-{int(angles['epoch'].max())}; "
          f"{'sweep results: `' + results_path.name + '`' if results_path else 'no sweep results table (accuracy from metrics.csv)'}.")
    doc.p("Angles are theta_y = angle between a sample's embedding and its *labelled* class centre; "
          "weight = |dL/dcos theta_y| logged per sample by the trainer. A sample is *noisy* when its manifest "
          "noise type is not `clean`. Tables give the last epoch of each run, averaged over seeds.")
    doc.h(2, "Summary: how far apart clean and noisy samples sit, and the noisy share of the gradient")
    doc.p("`theta_gap_deg` = mean theta_y(noisy) - mean theta_y(clean); `auc` = detection AUC of theta_y; "
          "`noisy_weight_share` = noisy samples' share of the total weight, to compare with `noisy_fraction` "
          "(`weight_share_per_fraction` > 1: a noisy sample pulls harder than a clean one); "
          f"`periphery_to_centre_weight` = mean weight of a peripheral sample / of a central one (centre = theta_y "
          f"<= the {quantile:g} quantile of clean theta_y): below 1 the loss down-weights the periphery, as ExpFace intends.")
    sep_cols = ["loss", "condition", "n_seeds", "noisy_fraction", "theta_clean_mean_deg", "theta_noisy_mean_deg",
                "theta_gap_deg", "auc", "estimated_rate", "mode_separation_sd"]
    w_cols = ["loss", "condition", "noisy_fraction", "noisy_weight_share", "weight_share_per_fraction",
              "noisy_in_periphery", "periphery_weight_share", "periphery_to_centre_weight", "accuracy_mean",
              "accuracy_std"]
    doc.p("**How far apart** (angles in degrees):")
    doc.table(summary[[c for c in sep_cols if c in summary.columns]])
    doc.p("**What share of the gradient** the noisy samples get, and how the loss weights the periphery:")
    doc.table(summary[[c for c in w_cols if c in summary.columns]], "tables/summary.csv")

    doc.h(2, "1. Angle distributions")
    doc.p("Per noise condition: density of theta_y by noise type over epochs (one run per loss), and the 2-D "
          "histogram of the angle to the own centre vs the angle to the nearest other centre at the last epoch "
          "(open-set / Type-I noise sits far from both; split / Type-II noise near both).")
    for cond in conditions:
        s = _slug(cond)
        doc.h(3, f"Condition {cond}")
        doc.img(f"figures/theta_hist_{s}.png", f"theta_y histograms, {cond}")
        doc.img(f"figures/angle2d_{s}.png", f"own vs nearest-other angle, {cond}")
    type_last = stats.last_epoch(types)
    type_tab = type_last.groupby(["loss", "condition", "noise"], sort=True)[
        ["n", "theta_y_mean_deg", "theta_nearest_mean_deg", "weight_mean", "weight_share"]].mean().reset_index()
    doc.p("Per noise type, last epoch (mean over seeds); `weight_share` sums to 1 over the types of a run.")
    doc.table(type_tab, "tables/noise_types.csv")

    doc.h(2, "2. Weighting")
    doc.img("figures/noisy_weight_share.png", "share of gradient weight carried by noisy samples per epoch")
    for cond in conditions:
        doc.img(f"figures/weight_vs_theta_{_slug(cond)}.png", f"mean weight vs theta_y, {cond}")
    if curves is None:
        doc.p("Analytic gradient curves: none of the losses could be built, overlay omitted.")
    else:
        missing = sorted(set(angles["loss"]) - set(curves["loss"]))
        doc.p("Grey dashed: the loss's analytic |dL/dcos theta_y| (same units) for a sample whose other class "
              "centres are all at 90 degrees"
              + (f"; no analytic curve for {', '.join(missing)}." if missing else "."))
    doc.p(f"Centre vs periphery: per run and epoch the centre is theta_y <= the {quantile:g} quantile of the clean "
          "samples' theta_y (so that share of clean samples is central by construction), the periphery the rest. "
          "Per region: share of the total weight (`weight_share`, the two regions sum to 1), share of all noisy "
          "samples found there (`share_of_noisy`), mean weight per sample.")
    reg_last = stats.last_epoch(reg)
    reg_tab = reg_last.groupby(["loss", "condition", "region"], sort=True)[
        ["threshold_deg", "n", "noisy_fraction", "share_of_noisy", "weight_share", "noisy_weight_share",
         "weight_mean"]].mean().reset_index()
    doc.table(reg_tab, "tables/regions.csv")

    doc.h(2, "3. Separability")
    doc.img("figures/detection_auc.png", "noisy-sample detection AUC from theta_y per epoch")
    doc.p("Bimodal noise-rate estimate (after Hu et al., CVPR 2019): Gaussian mixtures with 1 and 2 components "
          f"(`sklearn.mixture.GaussianMixture`, seed {seed}) are fitted to theta_y of each run and epoch; when the "
          "2-component fit lowers the BIC by >= 10 and its modes are apart by Ashman's D (`mode_separation_sd`) > 2 "
          "the distribution is `bimodal` and the weight of the high-angle "
          "component estimates the noise rate, otherwise the estimate is 0. Expected accuracy: within "
          f"{GMM_TOLERANCE:g} of the true rate when the two modes are well separated (`mode_separation_sd` > 3) and "
          "there are >= 1000 samples; with overlapping modes the estimate is not reliable.")
    est_tab = stats.last_epoch(est).groupby(["loss", "condition"], sort=True)[
        ["true_rate", "estimated_rate", "abs_error", "bimodal", "mode_low_deg", "mode_high_deg", "mode_separation_sd"]
    ].mean().reset_index()
    doc.table(est_tab, "tables/noise_rate_estimates.csv")
    doc.img("figures/noise_rate_estimate.png", "estimated vs true noise rate")

    doc.h(2, "4. Accuracy")
    doc.p("Verification accuracy per loss and noise condition, mean and sd over seeds"
          + (f" (sweep results, column `{metric}`)." if metric else "."))
    acc_show = acc.copy()
    if not acc_show.empty:
        acc_show["accuracy"] = [f"{m:.4f} ± {s:.4f}" if isinstance(s, float) and not math.isnan(s) else _fmt(m)
                                for m, s in zip(acc_show["accuracy_mean"], acc_show["accuracy_std"])]
    if points.empty or points["accuracy"].isna().all():
        doc.p("No verification accuracy was recorded (the runs' configs have no `data.val` pairs, or the sweep "
              "has no completed trial): the table and plot are empty.")
    doc.table(acc_show, "tables/accuracy.csv")
    doc.img("figures/accuracy.png", "accuracy vs noise rate")

    doc.h(2, "Files")
    doc.p("Tables (CSV): " + ", ".join(f"`tables/{n}`" for n in tables) + ". Figures (PNG) in `figures/`.")

    with atomic_write(out / "report.md", "w", encoding="utf-8") as fh:
        fh.write(doc.markdown())
    with atomic_write(out / "report.html", "w", encoding="utf-8") as fh:
        fh.write(doc.html(f"noisyfr analysis: {src.name}"))
    steps.update(2)
    steps.close()
    return out / "report.md"
