"""The text of the analysis report, one function per section (header, conclusions over seeds,
training health, summary, distributions, weighting, separability, cleaning rules, the angle
convention, gradient modes, accuracy): each writes its section of a :class:`Document` from the
tables of :func:`noisyfr.analysis.report.tables`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from noisyfr.analysis import comparisons, seeds, stats
from noisyfr.analysis.document import Document, format_number
from noisyfr.names import slug

if TYPE_CHECKING:
    from noisyfr.analysis.report import _Options


def doc_header(doc: Document, src: Path, runs, results_path, t, o: _Options) -> None:
    rtab = t["runs.csv"]
    n_ok = int(rtab["learned"].sum())
    doc.h(1, "noisyfr angle analysis")
    doc.p(f"Source: `{src}` - {len(runs)} run(s); loss settings (name, scale s, margin m, "
          f"grad_mode): {'; '.join(sorted(rtab['loss'].unique()))}; noise conditions "
          f"{', '.join(sorted(rtab['condition'].unique()))}; "
          + (f"sweep results: `{results_path.name}`." if results_path
             else "no sweep results table (accuracy from metrics.csv)."))
    on = rtab["learned_on"].value_counts().to_dict() if "learned_on" in rtab else {}
    doc.p(f"**{n_ok} of {len(rtab)} runs learned**, decided on held-out evidence where the run has "
          "held-out images (last epoch's identification accuracy of unseen images of the training "
          "identities, nearest class centre, >= the run's `health.learned_heldout_accuracy`), else "
          f"on the training pass (clean-sample accuracy >= {o.learned_threshold:g}); evidence: "
          f"{', '.join(f'{k} {n}' for k, n in sorted(on.items())) or '-'}. *Conclusions over seeds* "
          "gives every cell over all runs and over the learned ones; the sections after it "
          f"compare the learned runs only ({len(rtab) - n_ok} run(s) left out there). A loss that "
          "does not learn under noise is a result in itself: see Training health.")
    doc.p(f"Weight used for shares: **`{o.weight}`** ({WEIGHT_MEANING[o.weight]}). Angles: theta_y "
          "= angle between a sample's embedding and its *labelled* class centre. A sample is *noisy* "
          "when its manifest noise type is not `clean`. Tables give the last epoch of each run, "
          "averaged over seeds.")


WEIGHT_MEANING = {
    "weight": "|dL_i/dcos theta| at the label trained on, in units of the loss's scale s (for "
              "plain softmax: of |x| |W_y|)",
    "weight_theta": "|dL_i/dtheta| at the label trained on = weight * sin(theta)",
    "grad_norm": "||dL_i/df_i||, the norm of the per-sample gradient on the embedding the backbone "
                 "outputs: the real pull on the backbone, negatives and feature-norm terms included; "
                 "comparable across losses",
    "unit_pull": "|f_i| ||(I - x_i x_i^T) dL_i/df_i|| with x_i = f_i/|f_i|, the tangential pull on the "
                 "unit embedding (the gradient w.r.t. the direction, negatives included, the feature "
                 "norm's own terms left out): comparable across losses and feature norms",
}
#: Weights that depend on every class's angle: no analytic curve to overlay.
NO_CURVE = ("grad_norm", "unit_pull")


#: The metrics of the conclusions tables, in order.
_CONCLUSION_METRICS = ("heldout_accuracy", "val_accuracy", "noisy_fit_given", "auc_closed",
                       "auc_open", "noisy_weight_share", "noisy_unit_pull_share",
                       "weight_share_per_fraction", "estimated_rate")


def doc_conclusions(doc: Document, t, o: _Options) -> None:
    """Every run, the cells with intervals over seeds, the paired differences."""
    values, cells, paired = t["run_values.csv"], t["cells.csv"], t["paired.csv"]
    doc.h(2, "Conclusions over seeds")
    if values.empty:
        doc.p("No run has an angle log to read: nothing to conclude.")
        return
    rule = "heldout"
    by = values[values["epoch_rule"] == rule]["selected_by"].value_counts().to_dict()
    doc.p("Each run is read at the epoch of its best held-out accuracy (no ground truth: "
          f"{', '.join(f'{n} run(s) by {k}' for k, n in sorted(by.items()))}; `last` where no held-out "
          "or verification accuracy was recorded); the same cells at the last epoch are in "
          "`tables/cells.csv` (`epoch_rule`). Every cell is shown over all runs and over the runs "
          "that learned: mean [95 % interval over seeds] n; for a quantity in [0, 1] (accuracy, "
          "AUC, share, rate) a t-interval on the logit scale, which stays inside [0, 1], else a "
          "t-interval (with n = 3: mean +- 4.30 sd/sqrt(3)). A cell whose runs did not learn is a "
          f"result. Weight column for shares: `{o.weight}`.")
    metrics = [m for m in _CONCLUSION_METRICS if m in set(cells.get("metric", []))]
    doc.table(seeds.cell_text(cells, metrics, rule), "tables/cells.csv")
    if paired.empty:
        doc.p("No two losses share a condition, a seed and an epoch: no paired comparison.")
        return
    comparisons.doc_paired(doc, paired, metrics, o.plan)


def doc_health(doc: Document, t) -> None:
    doc.h(2, "Training health")
    doc.p("Runs that learned per loss and noise condition (`n_learned` of `n_runs`):")
    doc.table(t["learned.csv"], "tables/learned.csv")
    cols = ["run", "loss", "condition", "seed", "epochs", "final_heldout_accuracy",
            "final_clean_true_accuracy", "final_noisy_fit_given", "final_noisy_fit_true", "learned",
            "learned_on"]
    doc.table(t["runs.csv"][[c for c in cols if c in t["runs.csv"].columns]], "tables/runs.csv")
    doc.p("Per epoch, every run: `clean_true_accuracy` (clean samples predicted as their label), "
          "`noisy_fit_given` (closed-set noisy samples predicted as their given, wrong label: "
          "memorised) and `noisy_fit_true` (predicted as their true label). A rising "
          "`noisy_fit_given` with a falling detection AUC is memorisation.")
    doc.img("figures/health.png", "training health per epoch (all runs)")
    doc.img("figures/detection_auc.png", "noisy-sample detection AUC from theta_y per epoch (all runs)")
    ep = t["epoch_stats.csv"]
    if len(ep) and ep["n_corrected"].sum() > 0:
        corr = ep[ep["n_corrected"] > 0][["run", "loss", "epoch", "n", "n_corrected"]]
        doc.p("Label corrections per epoch (rows trained on a label other than the given one, "
              "BoundaryFace); `weight` is read at the label trained on:")
        doc.table(corr, None)


def doc_summary(doc: Document, t, o: _Options) -> None:
    summary = t["summary.csv"]
    doc.h(2, "Summary over the runs that learned")
    if "auc" not in summary.columns:
        doc.p("No run learned: there is nothing to compare.")
        return
    doc.p("Means over the seeds that learned, last epoch (the intervals, over all runs and over "
          "the learned ones, are in *Conclusions over seeds* above). "
          "`theta_gap_deg` = mean theta_y(noisy) - mean theta_y(clean); `auc` = detection "
          "AUC of theta_y at the last epoch, `oracle_best_auc` its maximum over epochs (chosen with "
          "the noise labels: an oracle, not a result); `noisy_weight_share` = noisy samples' share of the "
          f"total `{o.weight}`, to compare with `noisy_fraction` (`weight_share_per_fraction` > 1: a "
          "noisy sample pulls harder than a clean one); `periphery_to_centre_weight` = mean weight of a "
          f"peripheral sample / of a central one (centre = theta_y <= the {o.quantile:g} quantile of "
          "clean theta_y): below 1 the loss down-weights the periphery, as ExpFace intends.")
    sep_cols = ["loss", "condition", "n_runs", "n_learned", "noisy_fraction", "clean_true_accuracy",
                "noisy_fit_given", "theta_clean_median_deg", "theta_noisy_median_deg",
                "theta_gap_deg", "auc", "oracle_best_auc"]
    w_cols = ["loss", "condition", "n_learned", "noisy_fraction", "noisy_weight_share",
              "weight_share_per_fraction", "noisy_in_periphery", "periphery_weight_share",
              "periphery_to_centre_weight", "accuracy_mean", "accuracy_std"]
    doc.p("**How far apart** (angles in degrees):")
    doc.table(summary[[c for c in sep_cols if c in summary.columns]])
    doc.p(f"**What share of the weight (`{o.weight}`)** the noisy samples get, and how the loss "
          "weights the periphery:")
    doc.table(summary[[c for c in w_cols if c in summary.columns]], "tables/summary.csv")


def doc_distributions(doc: Document, t) -> None:
    kept = t["_kept"]
    doc.h(2, "1. Angle distributions (learned runs)")
    doc.p("Per noise condition: density of theta_y by noise type over epochs (one run per loss), and the "
          "2-D histogram of the angle to the own centre vs the angle to the nearest other centre at the "
          "last epoch (open-set / Type-I noise sits far from both; split / Type-II noise near both; "
          "closed-set flips near another centre). Dotted lines: the fixed region threshold.")
    for cond in sorted(kept["condition"].unique()):
        s = slug(cond)
        doc.h(3, f"Condition {cond}")
        doc.img(f"figures/theta_hist_{s}.png", f"theta_y histograms, {cond}")
        doc.img(f"figures/angle2d_{s}.png", f"own vs nearest-other angle, {cond}")
    types = stats.last_epoch(t["noise_types.csv"])
    tab = types.groupby(["loss", "condition", "noise"], sort=True)[
        ["n", "theta_y_mean_deg", "theta_nearest_mean_deg", "weight_mean", "weight_share"]].mean().reset_index()
    doc.p("Per noise type, last epoch (mean over seeds); `weight_share` sums to 1 over the types of a run.")
    doc.table(tab, "tables/noise_types.csv")


def doc_weighting(doc: Document, t, curves, o: _Options) -> None:
    kept = t["_kept"]
    doc.h(2, f"2. Weighting (`{o.weight}`)")
    doc.img("figures/noisy_weight_share.png", f"share of {o.weight} carried by noisy samples per epoch")
    for cond in sorted(kept["condition"].unique()):
        doc.img(f"figures/weight_vs_theta_{slug(cond)}.png", f"mean {o.weight} vs theta_y, {cond}")
    if o.weight in NO_CURVE:
        doc.p(f"`{o.weight}` has no analytic curve: it depends on every other class's angle.")
    elif curves is None:
        doc.p("Analytic gradient curves: none of the losses could be built, overlay omitted.")
    else:
        missing = sorted(set(kept["loss"]) - set(curves["loss"]))
        doc.p("Grey dashed: the loss's analytic weight in the same units for a sample whose other class "
              "centres are all at 90 degrees" + (f"; no analytic curve for {', '.join(missing)}." if missing else "."))
    doc.p("Regions, three ways (docs/analysis.md): `quantile` = centre is theta_y <= the "
          f"{o.quantile:g} quantile of the clean samples' theta_y (uses ground truth; the threshold "
          f"differs per run); `fixed` = centre is theta_y <= {o.region_deg:g} degrees (the same for "
          "every loss); `2d` = the plane of theta_y against theta_nearest, both cut at "
          f"{o.region_deg:g} degrees: `centre`, `far_from_all` (Type-I / open set), `near_both` "
          "(Type-II / split) and `nearer_other` (closed-set flips). Per region: share of the total "
          "weight (`weight_share`, the regions sum to 1), share of all noisy samples found there "
          "(`share_of_noisy`), mean weight per sample.")
    reg = stats.last_epoch(t["regions.csv"])
    tab = reg.groupby(["method", "loss", "condition", "region"], sort=True)[
        ["threshold_deg", "n", "noisy_fraction", "share_of_noisy", "weight_share", "noisy_weight_share",
         "weight_mean"]].mean().reset_index()
    doc.table(tab, "tables/regions.csv")
    ratio = stats.last_epoch(t["periphery_ratio.csv"]).groupby(["method", "loss", "condition"], sort=True)[
        "periphery_to_centre_weight"].mean().reset_index()
    doc.p("Mean weight of a sample outside the centre / of a central one, per region method:")
    doc.table(ratio, "tables/periphery_ratio.csv")


def doc_separability(doc: Document, t, o: _Options) -> None:
    doc.h(2, "3. Separability and the noise rate (learned runs)")
    held = seeds.heldout_estimates(t["run_values.csv"])
    doc.p("Noise-rate estimate (`estimated_rate`), from the held-out images: they carry the "
          "manifest's labels like every image, but the model never trained on them, so it cannot "
          "have memorised a wrong one; their agreement with the given labels g and their "
          "identification accuracy a give rate = (a - g) / (a - (1 - a) / (C - 1)) (docs/analysis.md). "
          "`true_rate` is the closed-set fraction of the samples trained on; each run at its best "
          "held-out epoch.")
    if len(held):
        tab = held.groupby(["loss", "condition"], sort=True)[
            ["closed_fraction", "estimated_rate", "estimate_error"]].mean().reset_index()
        doc.table(tab.rename(columns={"closed_fraction": "true_rate"}), None)
        doc.img("figures/noise_rate_estimate.png", "estimated vs true noise rate")
    else:
        doc.p("No run has held-out images (`data.holdout`): no noise-rate estimate.")
    doc.p("For reference, two estimates from the angles alone, both failing their controls in "
          "trained runs and in no summary: `disagreement_rate`, the fraction of samples nearer "
          "another class centre than their own (it counts the clean samples the model gets wrong "
          "and misses the memorised noisy ones), and `gmm_rate`, a bimodal Gaussian mixture over "
          f"theta_y (Hu et al., CVPR 2019; seed {o.seed}; its clean mode splits when classes differ).")
    est_tab = stats.last_epoch(t["noise_rate_estimates.csv"]).groupby(["loss", "condition"], sort=True)[
        ["true_rate", "disagreement_rate", "disagreement_error", "gmm_rate"]].mean().reset_index()
    doc.table(est_tab, "tables/noise_rate_estimates.csv")
    doc_cleaning(doc, t)


def cleaning_table(cleaning: pd.DataFrame, learned: set[str]) -> pd.DataFrame:
    """Per loss, condition and cleaning rule, over the learned runs: mean [95 % interval] n over
    seeds of the rule's precision, recall, noise left and clean samples lost (all noise types)."""
    if cleaning.empty:
        return pd.DataFrame()
    c = cleaning[(cleaning["noise"] == "all") & cleaning["run"].isin(learned)]
    rows = []
    for (loss, cond, rule), g in c.groupby(["loss", "condition", "rule"], sort=True):
        row = {"loss": loss, "condition": cond, "rule": rule}
        for col in ("precision", "recall", "noise_left", "clean_lost"):
            iv = seeds.metric_interval(col, g[col])
            row[col] = seeds.format_interval(iv["mean"], iv["lo"], iv["hi"], iv["n"])
        rows.append(row)
    return pd.DataFrame(rows)


def doc_cleaning(doc: Document, t) -> None:
    cleaning = t["cleaning.csv"]
    if cleaning.empty:
        return
    doc.p("**Cleaning rules against the truth** (learned runs, last epoch; every run and noise type in "
          "`tables/cleaning.csv`): the samples each fixed rule would remove, scored against the manifest. "
          "`theta>75`: theta_y above 75 degrees; `subcentre>75`: the angle to the dominant sub-centre above "
          "75 degrees (Sub-center ArcFace's rule); `margin>0`: another class's centre nearer than the "
          "labelled one. `noise_left`: noisy samples among those kept; `clean_lost`: clean samples removed. "
          "Mean [95 % interval] n over seeds. `noisyfr clean` applies any rule and writes the cleaned "
          "manifest (docs/cleaning.md).")
    doc.table(cleaning_table(cleaning, set(t["_kept"]["run"])), "tables/cleaning.csv")


def doc_convention(doc: Document, t) -> None:
    """The difference between two losses in each gradient mode, and its change between them."""
    tab = t["convention.csv"]
    if tab.empty:
        return
    show = tab[tab["metric"].isin(["noisy_weight_share", "noisy_unit_pull_share", "auc_closed",
                                   "heldout_accuracy"])]
    doc.p("Does the difference between two losses depend on the gradient convention? Per seed, "
          "A - B with the exact gradient and with the detached one, and the change between them "
          "(exact minus detached, a difference of differences); mean [95 % interval] n. An "
          "interval of `change` that excludes 0 says the answer depends on the convention.")
    texts = seeds.interval_texts
    doc.table(pd.DataFrame({
        "condition": show["condition"], "A": show["loss_a"], "B": show["loss_b"], "metric": show["metric"],
        "A - B, exact": texts(show, "exact_diff", "exact_lo", "exact_hi", "n_exact", 4),
        "A - B, detached": texts(show, "detached_diff", "detached_lo", "detached_hi", "n_detached", 4),
        "change": texts(show, "change", "change_lo", "change_hi", "n_change", 4)}),
        "tables/convention.csv")


def doc_grad_mode(doc: Document, t, o: _Options) -> None:
    tab = t["grad_mode.csv"]
    if tab.empty:
        return
    doc.h(2, "Gradient convention: exact against detached")
    doc.p("Losses run in both gradient modes. `exact` differentiates through the margin, so the "
          "target weight |dL/dcos theta| follows the shape of the loss's target curve; `detached` (the "
          "arcface_torch convention) applies the margin under no_grad, so the target weight is "
          "s (1 - p) and saturates at s for every loss once p is small. Does a loss's effect depend on "
          "the convention? Compare the rows of one loss: whether the runs learned, the detection AUC, "
          f"the noisy share of `{o.weight}` and the periphery/centre weight ratio (learned runs only; "
          "below 1 = the periphery is down-weighted).")
    doc.table(tab, "tables/grad_mode.csv")
    doc_convention(doc, t)


def doc_accuracy(doc: Document, t, o: _Options) -> None:
    acc, points = t["accuracy.csv"], t["accuracy_points.csv"]
    doc.h(2, "4. Accuracy (learned runs)")
    doc.p("Verification accuracy per loss and noise condition, mean and sd over the seeds that learned; "
          "`n_not_learned` runs were left out" + (f" (sweep results, column `{o.metric}`)." if o.metric else "."))
    show = acc.copy()
    if not show.empty:
        show["accuracy"] = [f"{m:.4f} ± {s:.4f}" if isinstance(s, float) and not math.isnan(s) else format_number(m)
                            for m, s in zip(show["accuracy_mean"], show["accuracy_std"])]
    if points.empty or points["accuracy"].isna().all():
        doc.p("No verification accuracy was recorded (the runs' configs have no `data.val` pairs, or the sweep "
              "has no completed trial): the table and plot are empty.")
    doc.table(show, "tables/accuracy.csv")
    doc.img("figures/accuracy.png", "accuracy vs noise rate (learned runs)")
