"""Statistics of how a loss places and weights clean versus noisy samples in angle space.

All functions take the long angle table from :func:`noisyfr.analysis.load.long_angles` (or any
DataFrame with ``theta_y``, ``weight``, ``noise``/``is_noisy`` and grouping columns) and return
tidy DataFrames. Angles are radians; tables also give degrees where a reader wants them.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from noisyfr import numeric
from noisyfr.errors import NoisyFRError
from noisyfr.io import read_json
from noisyfr.noise.spec import NOISE_TYPES
from noisyfr.train.angles import DEFAULT_LEARNED_ACCURACY, WEIGHT_COLUMNS, health_metrics

RUN_KEYS = ["run", "loss", "condition", "seed", "noise_rate"]
DEFAULT_CENTRE_QUANTILE = 0.9
DEFAULT_BINS = 36
#: Default weight column for shares: the per-sample gradient norm on the embedding (comparable
#: across losses, negatives and feature-norm terms included).
DEFAULT_WEIGHT = "grad_norm"
#: Region definitions of :func:`region_masks`.
REGION_METHODS = ("quantile", "fixed", "2d")
#: Most theta_y bins of the weight-vs-angle table (``--bins``).
MAX_BINS = 3600
#: Largest Gaussian-mixture seed (scikit-learn takes seeds below 2**32).
MAX_MIXTURE_SEED = 2**32 - 1
#: Default fixed region threshold (degrees) of the ``fixed`` and ``2d`` regions.
DEFAULT_REGION_DEG = 60.0


def _keys(df: pd.DataFrame, extra: list[str]) -> list[str]:
    return [k for k in RUN_KEYS if k in df.columns] + extra


def detection_auc(theta_y, is_noisy) -> float:
    """ROC AUC of ``theta_y`` as a score for "is noisy" (1 = perfect separation, 0.5 = chance).

    NaN when only one class is present.
    """
    y = np.asarray(is_noisy, dtype=bool)
    s = np.asarray(theta_y, dtype=float)
    if y.shape != s.shape:
        raise NoisyFRError(f"detection_auc: theta_y has shape {s.shape} but is_noisy has {y.shape}")
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def bimodal_noise_rate(theta_y, seed: int = 0, min_bic_gain: float = 10.0) -> dict:
    """Estimate the noise rate from the ``theta_y`` distribution alone with a 2-component Gaussian mixture.

    As in Hu et al. (CVPR 2019, "Noise-Tolerant Paradigm for Training Face Recognition CNNs"), the
    distribution of the angle to the labelled class centre becomes bimodal under label noise: clean
    samples form the low-angle mode and mislabelled ones the high-angle mode. We fit
    ``sklearn.mixture.GaussianMixture`` with 1 and 2 components (seeded, 3 initialisations for 2)
    to theta_y. When the 2-component fit lowers the BIC by at least ``min_bic_gain`` and its modes
    are separated by Ashman's D = |mean difference| / sqrt((sd1^2 + sd2^2) / 2) > 2, the
    distribution is called bimodal and ``estimate`` is the mixture weight of the higher-mean
    component; otherwise it is unimodal and ``estimate`` is 0. Also returned: both components'
    means and standard deviations, ``separation`` (Ashman's D) and ``bimodal``.
    Well-separated modes (separation > 3, n >= 1000) give an estimate within 0.05 of the true
    rate; overlapping modes make it unreliable.
    """
    x = np.asarray(theta_y, dtype=float).reshape(-1, 1)
    if x.shape[0] < 4:
        raise NoisyFRError(f"bimodal_noise_rate: need at least 4 angles, got {x.shape[0]}")
    if np.ptp(x) < 1e-9:
        return {"estimate": 0.0, "mean_low": float(x[0, 0]), "mean_high": float(x[0, 0]),
                "sd_low": 0.0, "sd_high": 0.0, "separation": 0.0, "bimodal": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(n_components=2, n_init=3, random_state=seed, reg_covar=1e-6).fit(x)
        gm1 = GaussianMixture(n_components=1, random_state=seed, reg_covar=1e-6).fit(x)
    means = gm.means_.ravel()
    sds = np.sqrt(gm.covariances_.reshape(-1))
    lo, hi = int(np.argmin(means)), int(np.argmax(means))
    pooled = math.sqrt((sds[lo] ** 2 + sds[hi] ** 2) / 2)
    separation = float((means[hi] - means[lo]) / pooled) if pooled > 0 else float("inf")
    # bimodal: the 2-component model is clearly better (BIC) and its modes are separated (Ashman's D > 2)
    bimodal = bool(gm1.bic(x) - gm.bic(x) >= min_bic_gain and separation > 2.0)
    return {"estimate": float(gm.weights_[hi]) if bimodal else 0.0,
            "mean_low": float(means[lo]), "mean_high": float(means[hi]),
            "sd_low": float(sds[lo]), "sd_high": float(sds[hi]),
            "separation": separation, "bimodal": bimodal}


def check_weight(weight: str) -> str:
    """``weight`` if it names a per-sample weight column of the angle log, else NoisyFRError."""
    if weight not in WEIGHT_COLUMNS:
        raise NoisyFRError(f"weight {weight!r}: unknown weight column; choose from "
                           f"{', '.join(WEIGHT_COLUMNS)}")
    return weight


def _share(g: pd.DataFrame, column: str, noisy: np.ndarray) -> float:
    """Noisy samples' share of ``column``'s total (NaN when not logged or zero)."""
    if column not in g.columns:
        return float("nan")
    w = g[column].to_numpy(dtype=float)
    total = w.sum()
    return float(w[noisy].sum() / total) if total > 0 else float("nan")


def _auc_by_type(g: pd.DataFrame, theta_deg: np.ndarray) -> dict[str, float]:
    """``auc_<type>``: detection AUC of theta_y for each noise type against the clean samples
    alone (closed-set and open-set noise are not pooled); NaN where a type is absent."""
    noise = g["noise"].astype(str).to_numpy() if "noise" in g.columns else np.full(len(g), "clean")
    clean = noise == "clean"
    out = {}
    for kind in NOISE_TYPES:
        if kind == "clean":
            continue
        sel = clean | (noise == kind)
        out[f"auc_{kind}"] = detection_auc(theta_deg[sel], noise[sel] == kind) if (noise == kind).any() \
            else float("nan")
    return out


def epoch_stats(angles: pd.DataFrame, weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Per run and epoch: training health, how far apart clean and noisy samples sit and the noisy
    share of the weight.

    Columns: counts, mean/median theta_y of clean and noisy samples (degrees), their difference,
    detection AUC of theta_y (``auc``, all noisy samples against the clean ones; ``auc_<type>``
    per noise type: closed-set and open-set noise apart) and of the angle to the dominant centre (``auc_dominant``;
    the same for single-centre losses), ``noisy_weight_share`` = sum of noisy samples' ``weight``
    column / sum of all (``weight_column`` names it), ``noisy_unit_pull_share`` the same for
    ``unit_pull`` whatever the weight column (the pull on the unit embedding: comparable across
    losses whose feature norms differ), ``noisy_fraction`` (so share / fraction > 1
    means a noisy sample outweighs a clean one), the health metrics of
    :func:`noisyfr.train.angles.health_metrics` and ``n_corrected`` (rows trained on a label other
    than the given one: BoundaryFace corrections), ``closed_fraction`` (closed-set noisy samples
    among those trained on) and the nearest-centre disagreement (``disagreement_rate``,
    :func:`disagreement_rate`, a reference estimate of the noise rate from the angles) with its
    error against ``noisy_fraction``.
    """
    check_weight(weight)
    rows = []
    for key, g in angles.groupby(_keys(angles, ["epoch"]), sort=True):
        noisy = g["is_noisy"].to_numpy()
        th = np.degrees(g["theta_y"].to_numpy(dtype=float))
        row = dict(zip(_keys(angles, ["epoch"]), key))
        row.update({
            "n": len(g), "n_noisy": int(noisy.sum()), "noisy_fraction": float(noisy.mean()),
            "theta_clean_mean_deg": float(th[~noisy].mean()) if (~noisy).any() else float("nan"),
            "theta_noisy_mean_deg": float(th[noisy].mean()) if noisy.any() else float("nan"),
            "theta_clean_median_deg": float(np.median(th[~noisy])) if (~noisy).any() else float("nan"),
            "theta_noisy_median_deg": float(np.median(th[noisy])) if noisy.any() else float("nan"),
            "auc": detection_auc(th, noisy),
            **_auc_by_type(g, th),
            "auc_dominant": detection_auc(g["theta_dominant"].to_numpy(dtype=float), noisy),
            "weight_column": weight,
            "noisy_weight_share": _share(g, weight, noisy),
            "noisy_unit_pull_share": _share(g, "unit_pull", noisy),
            "n_corrected": int((g["label_used"].to_numpy() != g["label"].to_numpy()).sum()),
        })
        row.update(health_metrics(g))
        row["theta_gap_deg"] = row["theta_noisy_mean_deg"] - row["theta_clean_mean_deg"]
        row["closed_fraction"] = float((g["noise"].astype(str) == "closed").mean()) if "noise" in g else 0.0
        row["disagreement_rate"] = disagreement_rate(g["theta_y"], g["theta_nearest"])
        row["disagreement_error"] = row["disagreement_rate"] - row["noisy_fraction"]
        rows.append(row)
    return pd.DataFrame(rows)


def noise_type_stats(angles: pd.DataFrame, weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Per run, epoch and noise type: count, mean angles (degrees) and share of the epoch's total
    ``weight`` (a weight column of the angle log).

    The ``weight_share`` column sums to 1 over the noise types of one run and epoch.
    """
    check_weight(weight)
    keys = _keys(angles, ["epoch"])
    g = angles.assign(theta_y_deg=np.degrees(angles["theta_y"]),
                      theta_nearest_deg=np.degrees(angles["theta_nearest"]), _w=angles[weight])
    out = g.groupby(keys + ["noise"], sort=True).agg(
        n=("theta_y", "size"), theta_y_mean_deg=("theta_y_deg", "mean"),
        theta_nearest_mean_deg=("theta_nearest_deg", "mean"), weight_sum=("_w", "sum"),
        weight_mean=("_w", "mean")).reset_index()
    totals = out.groupby(keys)["weight_sum"].transform("sum")
    out["weight_share"] = (out["weight_sum"] / totals).where(totals > 0)
    return out


def binned_weight(angles: pd.DataFrame, bins: int = DEFAULT_BINS, epochs: str | list[int] = "last",
                  weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Mean ``weight`` (a weight column) as a function of the angle to the centre of the label
    trained on (``theta_used``, equal to theta_y unless BoundaryFace corrected the label; fixed
    bins over [0, 180] degrees), clean vs noisy.

    ``epochs="last"`` keeps each run's last epoch; a list keeps those epochs. Columns:
    ``bin_left_deg, bin_centre_deg, group (clean/noisy), n, weight_mean, weight_sum``.
    """
    check_weight(weight)
    if epochs == "last":
        last = angles.groupby("run")["epoch"].transform("max") if "run" in angles else angles["epoch"].max()
        sel = angles[angles["epoch"] == last]
    else:
        sel = angles[angles["epoch"].isin(list(epochs))]
    edges = np.linspace(0.0, 180.0, bins + 1)
    # the weight is taken at the label trained on: bin it by the angle to that label's centre
    # (theta_used; BoundaryFace corrects labels), theta_y where an older log lacks it
    theta = sel["theta_used"].fillna(sel["theta_y"]) if "theta_used" in sel.columns else sel["theta_y"]
    deg = np.degrees(theta.to_numpy(dtype=float))
    b = np.clip(np.digitize(deg, edges) - 1, 0, bins - 1)
    tmp = sel.assign(bin=b, group=np.where(sel["is_noisy"], "noisy", "clean"), _w=sel[weight])
    keys = _keys(tmp, ["epoch"])
    out = tmp.groupby(keys + ["group", "bin"], sort=True).agg(
        n=("_w", "size"), weight_mean=("_w", "mean"), weight_sum=("_w", "sum")).reset_index()
    out["bin_left_deg"] = edges[out["bin"].to_numpy()]
    out["bin_centre_deg"] = out["bin_left_deg"] + (edges[1] - edges[0]) / 2
    return out.drop(columns="bin")


def check_region_deg(value, name: str = "region threshold") -> float:
    """A fixed region threshold in degrees, strictly inside (0, 180); NoisyFRError naming ``name``."""
    return numeric.real(value, name, lo=0.0, hi=180.0, lo_open=True, hi_open=True)


def check_quantile(value, name: str = "region quantile") -> float:
    """The centre region's quantile, strictly inside (0, 1); NoisyFRError naming ``name``."""
    return numeric.real(value, name, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


def region_masks(g: pd.DataFrame, method: str, quantile: float = DEFAULT_CENTRE_QUANTILE,
                 threshold_deg: float = DEFAULT_REGION_DEG) -> tuple[float, dict[str, np.ndarray]]:
    """The regions of one run's epoch as ``(threshold in degrees, {region: bool mask})``.

    ``quantile``: centre = theta_y <= the ``quantile`` quantile of the clean samples' theta_y
    (uses ground truth; the threshold differs per run and loss); periphery = the rest.
    ``fixed``: centre = theta_y <= ``threshold_deg``; periphery = the rest.
    ``2d`` (the ExpFace paper's plane of theta_y against theta_nearest, both cut at
    ``threshold_deg``): ``centre`` (near the own centre, far from every other one),
    ``far_from_all`` (upper right, where open-set / Type-I noise goes), ``near_both`` (lower left,
    where split / Type-II noise goes) and ``nearer_other`` (lower right, where closed-set
    label flips sit).
    """
    th = g["theta_y"].to_numpy(dtype=float)
    if method == "quantile":
        noisy = g["is_noisy"].to_numpy()
        ref = th[~noisy] if (~noisy).any() else th
        t = float(np.quantile(ref, quantile))
        return math.degrees(t), {"centre": th <= t, "periphery": th > t}
    t = math.radians(threshold_deg)
    if method == "fixed":
        return threshold_deg, {"centre": th <= t, "periphery": th > t}
    if method == "2d":
        near = g["theta_nearest"].to_numpy(dtype=float)
        own, other = th <= t, near > t
        return threshold_deg, {"centre": own & other, "far_from_all": ~own & other,
                               "near_both": own & ~other, "nearer_other": ~own & ~other}
    raise NoisyFRError(f"region method {method!r}: choose from {', '.join(REGION_METHODS)}")


def region_stats(angles: pd.DataFrame, quantile: float = DEFAULT_CENTRE_QUANTILE,
                 method: str = "quantile", threshold_deg: float = DEFAULT_REGION_DEG,
                 weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Regions of angle space (see :func:`region_masks`) and each region's share of samples and of
    the ``weight`` column, per run and epoch.

    Per region: ``n``, ``noisy_fraction`` (of the region's samples), ``share_of_noisy`` (of all
    noisy samples, in this region), ``weight_share`` (of the epoch's total weight; the regions sum
    to 1), ``noisy_weight_share`` (noisy samples' weight in the region / total weight) and
    ``weight_mean`` (mean weight per sample in the region); ``method`` and ``threshold_deg`` say
    how the regions were cut.
    """
    check_quantile(quantile)
    check_region_deg(threshold_deg)
    check_weight(weight)
    rows = []
    for key, g in angles.groupby(_keys(angles, ["epoch"]), sort=True):
        noisy = g["is_noisy"].to_numpy()
        w = g[weight].to_numpy(dtype=float)
        t, masks = region_masks(g, method, quantile, threshold_deg)
        total = w.sum()
        for region, mask in masks.items():
            row = dict(zip(_keys(angles, ["epoch"]), key))
            row.update({
                "method": method, "region": region, "threshold_deg": t, "n": int(mask.sum()),
                "noisy_fraction": float(noisy[mask].mean()) if mask.any() else float("nan"),
                "share_of_noisy": float((mask & noisy).sum() / noisy.sum()) if noisy.any() else float("nan"),
                "weight_share": float(w[mask].sum() / total) if total > 0 else float("nan"),
                "noisy_weight_share": float(w[mask & noisy].sum() / total) if total > 0 else float("nan"),
                "weight_mean": float(w[mask].mean()) if mask.any() else float("nan"),
            })
            rows.append(row)
    return pd.DataFrame(rows)


def periphery_ratio(regions: pd.DataFrame) -> pd.DataFrame:
    """Per run, epoch and region method: mean weight of a sample outside the centre / mean weight
    of a central sample.

    Below 1 means the loss down-weights the periphery (ExpFace's aim); about 1 or above means it does not.
    """
    keys = [k for k in RUN_KEYS + ["epoch", "method"] if k in regions.columns]
    r = regions.assign(_wsum=regions["weight_mean"].fillna(0.0) * regions["n"],
                       _side=np.where(regions["region"] == "centre", "centre", "periphery"))
    agg = r.groupby(keys + ["_side"], sort=True)[["_wsum", "n"]].sum().reset_index()
    agg["mean"] = agg["_wsum"] / agg["n"].where(agg["n"] > 0)
    wide = agg.pivot_table(index=keys, columns="_side", values="mean", dropna=False).reset_index()
    wide.columns.name = None
    for side in ("centre", "periphery"):
        if side not in wide.columns:
            wide[side] = float("nan")
    wide["periphery_to_centre_weight"] = wide["periphery"] / wide["centre"]
    return wide.rename(columns={"centre": "centre_weight_mean", "periphery": "periphery_weight_mean"})


def disagreement_rate(theta_y, theta_nearest) -> float:
    """The noise-rate estimate: the fraction of samples whose nearest class centre (plain cosine)
    is not their labelled one, ``mean(theta_nearest < theta_y)``.

    Each sample is compared with its own labelled and nearest centres, so classes whose clean
    samples sit at different angles (the failure of a mixture over theta_y, whose clean mode
    splits in two when the per-class medians differ) do not bias it. Its bias is known: it counts
    the clean samples the model gets wrong as noisy and misses the noisy samples it has
    memorised, ``estimate - rate = (1 - rate) * clean_error - rate * noisy_fit_given``; both
    terms are small in a run that learned and did not memorise, and on clean data the estimate
    is the training error. NaN without samples."""
    th = np.asarray(theta_y, dtype=float)
    near = np.asarray(theta_nearest, dtype=float)
    if th.shape != near.shape:
        raise NoisyFRError(f"disagreement_rate: theta_y has shape {th.shape} but theta_nearest has {near.shape}")
    ok = np.isfinite(th) & np.isfinite(near)
    return float(np.mean(near[ok] < th[ok])) if ok.any() else float("nan")


def noise_rate_estimates(angles: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per run and epoch, the estimates of the noise rate from the angles alone, against the true
    rate of the run's samples (manifest): the nearest-centre disagreement
    (:func:`disagreement_rate`) and the bimodal mixture of :func:`bimodal_noise_rate` over
    theta_y (``gmm_rate``). Both fail their controls in trained runs (docs/analysis.md) and are
    kept for reference; the estimate in the summaries is the held-out one
    (:func:`noisyfr.train.heldout.heldout_noise_rate`)."""
    rows = []
    for key, g in angles.groupby(_keys(angles, ["epoch"]), sort=True):
        if len(g) < 4:
            est = dict.fromkeys(("estimate", "mean_low", "mean_high", "separation"), float("nan"))
            est["bimodal"] = False
        else:
            est = bimodal_noise_rate(g["theta_y"].to_numpy(dtype=float), seed=seed)
        row = dict(zip(_keys(angles, ["epoch"]), key))
        row.update({"true_rate": float(g["is_noisy"].mean()),
                    "disagreement_rate": disagreement_rate(g["theta_y"], g["theta_nearest"]),
                    "gmm_rate": est["estimate"], "gmm_bimodal": est["bimodal"],
                    "mode_low_deg": math.degrees(est["mean_low"]), "mode_high_deg": math.degrees(est["mean_high"]),
                    "mode_separation_sd": est["separation"]})
        row["disagreement_error"] = row["disagreement_rate"] - row["true_rate"]
        rows.append(row)
    return pd.DataFrame(rows)


def last_epoch(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each run's last epoch."""
    if df.empty:
        return df
    last = df.groupby("run")["epoch"].transform("max")
    return df[df["epoch"] == last].reset_index(drop=True)


def summarise_over_seeds(df: pd.DataFrame, values: list[str], by: list[str] | None = None) -> pd.DataFrame:
    """Mean and sd over seeds of ``values`` per loss and condition (plus ``by``); adds ``n_seeds``."""
    by = (by or []) + [k for k in ("loss", "condition") if k in df.columns]
    by = list(dict.fromkeys(by))
    agg = df.groupby(by, sort=True)[values].agg(["mean", "std"])
    agg.columns = [f"{v}_{s}" if s == "std" else v for v, s in agg.columns]
    agg["n_seeds"] = df.groupby(by, sort=True)["run"].nunique() if "run" in df else df.groupby(by).size()
    return agg.reset_index()


# ---------------------------------------------------------------- accuracy vs noise rate
_ACC_COLUMNS = ("final_val_accuracy", "val_accuracy", "accuracy", "best_val_accuracy")


def _rate_columns(df: pd.DataFrame) -> list[str]:
    """The numeric ``data.noise.<type>`` columns of a results table."""
    return [c for c in df.columns if c.startswith("data.noise.") and pd.api.types.is_numeric_dtype(df[c])
            and c.rsplit(".", 1)[1] in ("closed", "open", "split", "merge")]


def _results_condition(df: pd.DataFrame) -> tuple[list[str], list[float]]:
    """Condition label and true noise rate per results row: from its manifest sidecar when the
    ``manifest`` column names an existing file, else from the numeric ``data.noise.<type>`` columns."""
    from noisyfr.analysis.load import condition_from_meta, condition_label

    rate_cols = _rate_columns(df)
    conds, rates = [], []
    for _, row in df.iterrows():
        man = row.get("manifest") if "manifest" in df.columns else None
        side = f"{man}.json" if isinstance(man, str) and man else None
        meta = None
        if side and os.path.isfile(side):
            meta = read_json(side, "manifest sidecar")
        found = condition_from_meta(meta) if isinstance(meta, dict) else None
        if found is not None:
            cond, req = found
            conds.append(cond)
            actual = meta.get("rates", {}) if isinstance(meta.get("rates"), dict) else {}
            noisy = actual.get("noisy", 1.0 - actual["clean"] if "clean" in actual else None)
            if not isinstance(noisy, (int, float)):
                noisy = None
            rates.append(float(noisy) if noisy is not None else float(sum(v for k, v in req.items()
                                                                          if k in ("closed", "open"))))
            continue
        vals = {c.rsplit(".", 1)[1]: float(row[c]) for c in rate_cols if pd.notna(row[c]) and float(row[c]) > 0}
        if not rate_cols and "noise_rate" in df.columns and pd.notna(row["noise_rate"]):
            vals = {"noise": float(row["noise_rate"])} if float(row["noise_rate"]) > 0 else {}
            conds.append(",".join(f"{k}={v:g}" for k, v in vals.items()) or "clean")
            rates.append(float(row["noise_rate"]))
            continue
        conds.append(condition_label(vals))
        rates.append(float(sum(v for k, v in vals.items() if k in ("closed", "open"))))
    return conds, rates


def _results_loss_labels(df: pd.DataFrame, loss_col: str) -> list[str]:
    """Loss label per results row: ``loss.label`` when recorded, else built from the ``loss.*``
    columns with :func:`noisyfr.losses.loss_label`."""
    from noisyfr.losses import loss_label

    if "loss.label" in df.columns:
        return df["loss.label"].astype(str).tolist()
    keys = [c for c in df.columns if c.startswith("loss.") and c != "loss.name"]
    out = []
    for _, row in df.iterrows():
        section = {c.split(".", 1)[1]: row[c] for c in keys
                   if not (isinstance(row[c], float) and math.isnan(row[c]))}
        section = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in section.items()}
        out.append(loss_label({**section, "name": str(row[loss_col])}))
    return out


def accuracy_points(results: pd.DataFrame | None, runs_tbl: pd.DataFrame | None = None,
                    metric: str | None = None) -> pd.DataFrame:
    """One row per trial: ``loss`` (label), ``condition, noise_rate, seed, accuracy, learned``.

    From a sweep's results (columns ``loss.name`` and the other ``loss.*`` settings, ``data.noise.*``,
    ``seed``, ``manifest``, an accuracy column: ``metric`` or the first of
    final_val_accuracy/val_accuracy/accuracy/best_val_accuracy; only ``status == completed`` rows
    when there is a status column) or, without one, from the runs' final ``metrics.csv`` rows
    (``runs_tbl`` from :func:`runs_table`). The condition and the true noise rate come from the
    trial's manifest sidecar when it exists (requested rates, actual noisy fraction), else from the
    ``data.noise.closed``/``data.noise.open`` rate columns. ``learned`` comes from the run loaded from the
    trial's ``output_dir`` (``runs_tbl``), else from the results' own ``learned`` column.
    """
    cols = ["loss", "condition", "noise_rate", "seed", "accuracy", "learned"]
    if results is not None and not results.empty:
        df = results.copy()
        if "status" in df.columns:
            df = df[df["status"].astype(str) == "completed"]
        col = metric or next((c for c in _ACC_COLUMNS if c in df.columns), None)
        if col is None or col not in df.columns:
            raise NoisyFRError(f"results table: no accuracy column {metric or '(' + ', '.join(_ACC_COLUMNS) + ')'}")
        loss_col = "loss.name" if "loss.name" in df.columns else ("loss" if "loss" in df.columns else None)
        if loss_col is None:
            raise NoisyFRError("results table: no loss.name column")
        if df.empty:
            return pd.DataFrame(columns=cols)
        df["loss"] = _results_loss_labels(df, loss_col)
        df["condition"], df["noise_rate"] = _results_condition(df)
        df["accuracy"] = pd.to_numeric(df[col], errors="coerce")
        if "seed" not in df.columns:
            df["seed"] = -1
        learned = (df["learned"].map(lambda v: v is True or v == 1 or v == "True")
                   if "learned" in df.columns else pd.Series(False, index=df.index))
        if runs_tbl is not None and not runs_tbl.empty and "output_dir" in df.columns:
            by_path = dict(zip(runs_tbl["path"], zip(runs_tbl["loss"], runs_tbl["learned"])))
            for i, out_dir in df["output_dir"].items():
                hit = by_path.get(str(Path(str(out_dir)).resolve()))
                if hit is not None:
                    df.loc[i, "loss"] = hit[0]
                    learned.loc[i] = bool(hit[1])
        df["learned"] = learned.astype(bool)
    elif runs_tbl is not None and not runs_tbl.empty and "val_accuracy" in runs_tbl.columns:
        df = runs_tbl.copy()
        df["accuracy"] = pd.to_numeric(df["val_accuracy"], errors="coerce")
    else:
        return pd.DataFrame(columns=cols)
    return df[cols].reset_index(drop=True)


def accuracy_table(points: pd.DataFrame) -> pd.DataFrame:
    """Verification accuracy per loss and noise condition over the runs that learned: mean, sd
    over seeds, number of seeds, and how many runs were left out because they did not learn.

    The paper-style table: columns ``loss, condition, noise_rate`` (mean true rate over seeds),
    ``accuracy_mean, accuracy_std`` (sample sd, learned runs), ``n_seeds`` (learned runs with an
    accuracy), ``n_not_learned`` (runs left out).
    """
    cols = ["loss", "condition", "noise_rate", "accuracy_mean", "accuracy_std", "n_seeds",
            "n_not_learned"]
    if points.empty:
        return pd.DataFrame(columns=cols)
    ok = points["learned"].astype(bool)
    pts = points.assign(_ok=ok, _acc=pd.to_numeric(points["accuracy"], errors="coerce").where(ok))
    g = pts.groupby(["loss", "condition"], sort=True)
    out = g["_acc"].agg(accuracy_mean="mean", accuracy_std="std", n_seeds="count").reset_index()
    out.insert(2, "noise_rate", g["noise_rate"].mean().to_numpy())
    out["n_not_learned"] = (g.size() - g["_ok"].sum()).astype(int).to_numpy()
    return out[cols].sort_values(["loss", "noise_rate", "condition"]).reset_index(drop=True)


def runs_table(runs, learned_threshold: float = DEFAULT_LEARNED_ACCURACY) -> pd.DataFrame:
    """One row per run: loss label and name, grad mode, condition, seed, true noise rate, the last
    epoch's health, ``learned`` and ``learned_on`` (:meth:`~noisyfr.analysis.load.Run.learned_evidence`:
    held-out accuracy when the run has held-out images, else the last epoch's
    ``clean_true_accuracy >= learned_threshold``) and final metrics.csv values."""
    rows = []
    for r in runs:
        row = {"run": r.name, "path": str(Path(r.path).resolve()), "loss": r.loss,
               "loss_name": r.loss_name,
               "grad_mode": r.loss_settings.get("grad_mode"), "condition": r.condition,
               "seed": r.seed, "noise_rate": r.noise_rate, "epochs": len(r.epochs),
               "n_samples": int(r.angles["sample_index"].nunique())}
        if not r.health.empty:
            last = r.health.sort_values("epoch").iloc[-1]
            for c in ("clean_true_accuracy", "noisy_fit_given", "noisy_fit_true"):
                row[f"final_{c}"] = float(last[c])
        row["learned"], row["learned_on"] = r.learned_evidence(learned_threshold)
        if "heldout_accuracy" in r.metrics.columns and len(r.metrics):
            row["final_heldout_accuracy"] = float(pd.to_numeric(r.metrics["heldout_accuracy"],
                                                                errors="coerce").iloc[-1])
        if not r.metrics.empty:
            last = r.metrics.iloc[-1]
            for c in ("val_accuracy", "noisy_auc", "loss"):
                if c in r.metrics.columns:
                    row["final_" + c if c == "loss" else c] = last[c]
        rows.append(row)
    return pd.DataFrame(rows)


def learned_counts(rtab: pd.DataFrame) -> pd.DataFrame:
    """Per loss and condition: ``n_runs``, ``n_learned``, ``n_not_learned`` (from
    :func:`runs_table`)."""
    g = rtab.groupby(["loss", "condition"], sort=True)["learned"]
    out = g.agg(n_runs="size", n_learned="sum").reset_index()
    out["n_learned"] = out["n_learned"].astype(int)
    out["n_not_learned"] = out["n_runs"] - out["n_learned"]
    return out
