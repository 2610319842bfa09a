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
from threadpoolctl import threadpool_limits

from noisyfr import numeric
from noisyfr.analysis import engine, hist
from noisyfr.analysis.engine import Parts
from noisyfr.errors import NoisyFRError
from noisyfr.io import read_json
from noisyfr.noise.spec import NOISE_TYPES
from noisyfr.train.angles import DEFAULT_LEARNED_ACCURACY, WEIGHT_COLUMNS

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
    # one thread: the k-means initialisation's OpenMP pool spins on a busy machine (12x slower on
    # 2 shared cores), and 1-D fits of a few thousand angles gain nothing from threads
    with warnings.catch_warnings(), threadpool_limits(1):
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


def parts_of(data, weight: str | None = DEFAULT_WEIGHT, region_deg: float | None = None,
             bins: int | None = None, quantile: float | None = None) -> Parts:
    """:class:`~noisyfr.analysis.engine.Parts` of ``data``: ``data`` itself when it already is
    one (made with the options given here; None = any), else a long angle table streamed
    through the engine (grouped by its :data:`RUN_KEYS`; None = the default)."""
    if isinstance(data, Parts):
        asked = {"weight": weight, "region_deg": region_deg, "bins": bins, "quantile": quantile}
        wrong = {k: v for k, v in asked.items() if v is not None and getattr(data, k) != v}
        if wrong:
            raise NoisyFRError("aggregates made with " + ", ".join(f"{k}={getattr(data, k)!r}" for k in wrong)
                               + "; asked for " + ", ".join(f"{k}={v!r}" for k, v in wrong.items()))
        return data
    weight = check_weight(weight or DEFAULT_WEIGHT)
    con = engine.connect()
    try:
        src = engine.frame_source(con, data)
        return engine.aggregate(con, src, _keys(data, []), weight=weight, where="angle table",
                                region_deg=DEFAULT_REGION_DEG if region_deg is None else region_deg,
                                bins=DEFAULT_BINS if bins is None else bins,
                                quantile=DEFAULT_CENTRE_QUANTILE if quantile is None else quantile)
    finally:
        con.close()


def epoch_stats(data, weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Per run and epoch: training health, how far apart clean and noisy samples sit and the noisy
    share of the weight.

    ``data``: a long angle table or its :class:`~noisyfr.analysis.engine.Parts`. Columns:
    counts, mean/median theta_y of clean and noisy samples (degrees), their difference,
    detection AUC of theta_y (``auc``, all noisy samples against the clean ones, within
    ``auc_bound`` of the exact one; ``auc_<type>`` per noise type: closed-set and open-set noise
    apart) and of the angle to the dominant centre (``auc_dominant``; the same for single-centre
    losses), ``noisy_weight_share`` = sum of noisy samples' ``weight`` column / sum of all
    (``weight_column`` names it; samples whose weight was not logged are left out),
    ``noisy_unit_pull_share`` the same for ``unit_pull`` whatever the weight column (the pull on
    the unit embedding: comparable across losses whose feature norms differ),
    ``noisy_fraction`` (so share / fraction > 1 means a noisy sample outweighs a clean one), the
    health metrics of :func:`noisyfr.train.angles.health_metrics` and ``n_corrected`` (rows
    trained on a label other than the given one: BoundaryFace corrections), ``closed_fraction``
    (closed-set noisy samples among those trained on) and the nearest-centre disagreement
    (``disagreement_rate``, :func:`disagreement_rate`, a reference estimate of the noise rate
    from the angles) with its error against ``noisy_fraction``. Medians are within one fine bin
    (``engine.FINE_DEG``) of the exact ones.
    """
    check_weight(weight)
    p = parts_of(data, weight)
    d = hist.dense(p)
    out = d.index.copy()
    if out.empty:
        return pd.DataFrame()
    n_t = d.cell("n")
    clean = d.mask("clean")
    noisy = ~clean
    n = n_t.sum(axis=1)
    n_clean = n_t[:, clean].sum(axis=1)
    n_noisy = n - n_clean
    closed = d.mask("closed")
    n_closed = n_t[:, closed].sum(axis=1)
    th = d.cell("theta_y_sum")
    med_clean, med_noisy = d.quantile("clean", 0.5), d.quantile("noisy", 0.5)
    auc, bound = d.auc("noisy")
    dom = hist.dense_dominant(p, d)
    given, orig = d.cell("pred_given"), d.cell("pred_orig")
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = {
            "n": n.astype(int), "n_noisy": n_noisy.astype(int), "noisy_fraction": _div(n_noisy, n),
            "theta_clean_mean_deg": np.degrees(_div(th[:, clean].sum(axis=1), n_clean)),
            "theta_noisy_mean_deg": np.degrees(_div(np.nansum(th[:, noisy], axis=1), n_noisy)),
            "theta_clean_median_deg": np.degrees(med_clean), "theta_noisy_median_deg": np.degrees(med_noisy),
            "auc": auc,
            **{f"auc_{kind}": (d.auc(kind)[0] if kind in d.types else np.full(len(n), np.nan))
               for kind in NOISE_TYPES if kind != "clean"},
            "auc_dominant": dom.auc("noisy")[0],
            "weight_column": weight,
            "noisy_weight_share": _share_of(d.cell("wsum"), noisy),
            "noisy_unit_pull_share": _share_of(d.cell("upsum"), noisy),
            "n_corrected": np.nansum(d.cell("n_corrected"), axis=1).astype(int),
            "clean_true_accuracy": _div(given[:, clean].sum(axis=1), n_clean),
            "noisy_fit_given": _div(given[:, closed].sum(axis=1), n_closed),
            "noisy_fit_true": _div(orig[:, closed].sum(axis=1), n_closed),
            "theta_clean_median": med_clean, "theta_noisy_median": med_noisy,
        }
    for name, values in cols.items():
        out[name] = values
    out["theta_gap_deg"] = out["theta_noisy_mean_deg"] - out["theta_clean_mean_deg"]
    out["closed_fraction"] = _div(n_closed, n)
    out["disagreement_rate"] = _div(np.nansum(d.cell("n_disagree"), axis=1), np.nansum(d.cell("n_pair"), axis=1))
    out["disagreement_error"] = out["disagreement_rate"] - out["noisy_fraction"]
    out["auc_bound"] = bound
    return out


def _div(num, den) -> np.ndarray:
    """num / den, NaN where den is 0 or num is NaN."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _share_of(sums: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """[g] noisy types' share of a [g, type] total (NaN when not logged or zero)."""
    logged = ~np.isnan(sums).all(axis=1)
    total = np.nansum(sums, axis=1)
    share = _div(np.nansum(sums[:, noisy], axis=1), total)
    return np.where(logged, share, np.nan)


def noise_type_stats(data, weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Per run, epoch and noise type: count, mean angles (degrees) and share of the epoch's total
    ``weight`` (a weight column of the angle log).

    ``data``: a long angle table or its Parts. The ``weight_share`` column sums to 1 over the
    noise types of one run and epoch.
    """
    check_weight(weight)
    p = parts_of(data, weight)
    keys = p.keys + ["epoch"]
    out = p.cells.groupby(keys + ["noise"], sort=True, dropna=False)[
        ["n", "theta_y_sum", "theta_nearest_sum", "n_nearest", "wsum", "wcount"]].sum(min_count=1).reset_index()
    out["theta_y_mean_deg"] = np.degrees(out["theta_y_sum"] / out["n"])
    out["theta_nearest_mean_deg"] = np.degrees(out["theta_nearest_sum"] / out["n_nearest"].where(out["n_nearest"] > 0))
    out["weight_sum"] = out["wsum"].fillna(0.0)
    out["weight_mean"] = out["wsum"] / out["wcount"].where(out["wcount"] > 0)
    out["n"] = out["n"].astype(int)
    totals = out.groupby(keys)["weight_sum"].transform("sum")
    out["weight_share"] = (out["weight_sum"] / totals).where(totals > 0)
    return out[keys + ["noise", "n", "theta_y_mean_deg", "theta_nearest_mean_deg", "weight_sum",
                       "weight_mean", "weight_share"]]


def binned_weight(data, bins: int = DEFAULT_BINS, epochs: str | list[int] = "last",
                  weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Mean ``weight`` (a weight column) as a function of the angle to the centre of the label
    trained on (``theta_used``, equal to theta_y unless BoundaryFace corrected the label; fixed
    bins over [0, 180] degrees), clean vs noisy.

    ``data``: a long angle table or its Parts. ``epochs="last"`` keeps each run's last epoch; a
    list keeps those epochs. Columns: ``bin_left_deg, bin_centre_deg, group (clean/noisy), n,
    weight_mean, weight_sum``.
    """
    check_weight(weight)
    p = parts_of(data, weight, bins=bins)
    w = p.wbins
    if epochs == "last":
        last = w.groupby("run")["epoch"].transform("max") if "run" in w.columns else w["epoch"].max()
        w = w[w["epoch"] == last]
    else:
        w = w[w["epoch"].isin(list(epochs))]
    w = w.assign(group=np.where(w["noise"] == "clean", "clean", "noisy"), bin=w["ub"])
    keys = p.keys + ["epoch"]
    out = w.groupby(keys + ["group", "bin"], sort=True, dropna=False)[["n", "wsum", "wcount"]].sum(
        min_count=1).reset_index()
    out["weight_mean"] = out["wsum"] / out["wcount"].where(out["wcount"] > 0)
    out["weight_sum"] = out["wsum"].fillna(0.0)
    out["n"] = out["n"].astype(int)
    width = 180.0 / bins
    out["bin_left_deg"] = np.linspace(0.0, 180.0, bins + 1)[out["bin"].to_numpy(dtype=int)]
    out["bin_centre_deg"] = out["bin_left_deg"] + width / 2
    return out[keys + ["group", "n", "weight_mean", "weight_sum", "bin_left_deg", "bin_centre_deg"]]


def check_region_deg(value, name: str = "region threshold") -> float:
    """A fixed region threshold in degrees, strictly inside (0, 180); NoisyFRError naming ``name``."""
    return numeric.real(value, name, lo=0.0, hi=180.0, lo_open=True, hi_open=True)


def check_quantile(value, name: str = "region quantile") -> float:
    """The centre region's quantile, strictly inside (0, 1); NoisyFRError naming ``name``."""
    return numeric.real(value, name, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


#: the regions of each method, in order (see :func:`region_stats`)
_REGIONS = {"quantile": ("centre", "periphery"), "fixed": ("centre", "periphery"),
            "2d": ("centre", "far_from_all", "near_both", "nearer_other")}


def region_stats(data, quantile: float = DEFAULT_CENTRE_QUANTILE,
                 method: str = "quantile", threshold_deg: float = DEFAULT_REGION_DEG,
                 weight: str = DEFAULT_WEIGHT) -> pd.DataFrame:
    """Regions of angle space and each region's share of samples and of the ``weight`` column,
    per run and epoch (``data``: a long angle table or its Parts).

    ``quantile``: centre = theta_y <= the ``quantile`` quantile of the clean samples' theta_y
    (uses ground truth; the threshold differs per run and loss; it is found within one fine bin,
    and the samples of that bin go to the side of its centre); periphery = the rest.
    ``fixed``: centre = theta_y <= ``threshold_deg``; periphery = the rest.
    ``2d`` (the ExpFace paper's plane of theta_y against theta_nearest, both cut at
    ``threshold_deg``): ``centre`` (near the own centre, far from every other one),
    ``far_from_all`` (upper right, where open-set / Type-I noise goes), ``near_both`` (lower left,
    where split / Type-II noise goes) and ``nearer_other`` (lower right, where closed-set
    label flips sit).

    Per region: ``n``, ``noisy_fraction`` (of the region's samples), ``share_of_noisy`` (of all
    noisy samples, in this region), ``weight_share`` (of the epoch's total weight; the regions sum
    to 1), ``noisy_weight_share`` (noisy samples' weight in the region / total weight) and
    ``weight_mean`` (mean weight per sample in the region); ``method`` and ``threshold_deg`` say
    how the regions were cut.
    """
    check_quantile(quantile)
    check_region_deg(threshold_deg)
    check_weight(weight)
    if method not in REGION_METHODS:
        raise NoisyFRError(f"region method {method!r}: choose from {', '.join(REGION_METHODS)}")
    # the fixed and 2-D regions come from the cells, cut at the angle the aggregates were made with
    p = parts_of(data, weight, region_deg=threshold_deg if method != "quantile" else None,
                 quantile=quantile if method == "quantile" else None)
    d = hist.dense(p)
    if d.index.empty:
        return pd.DataFrame()
    noisy = d.mask("noisy")
    n_t, w_t, c_t = d.cell("n"), np.nan_to_num(d.cell("wsum")), np.nan_to_num(d.cell("wcount"))
    logged = ~np.isnan(d.cell("wsum")).all(axis=1)
    if method == "quantile":
        group = np.where(d.counts("clean").sum(axis=1) > 0, 0, 1)
        t = np.where(group == 0, d.quantile("clean", quantile), d.quantile("all", quantile))
        inside = d.split(t)
        outside = [a - b for a, b in zip((n_t, w_t, c_t), inside)]
        regions = {"centre": inside, "periphery": outside}
        thresholds = np.degrees(t)
    else:
        cells = p.cells
        gi, ti = d.gid(cells), d.tid(cells)
        own, other = cells["own"].astype(bool).to_numpy(), cells["other"].astype(bool).to_numpy()
        sel = {"centre": own & other, "far_from_all": ~own & other, "near_both": own & ~other,
               "nearer_other": ~own & ~other} if method == "2d" else {"centre": own, "periphery": ~own}
        regions = {}
        for name, m in sel.items():
            arrays = []
            for col in ("n", "wsum", "wcount"):
                a = np.zeros(n_t.shape)
                np.add.at(a, (gi[m], ti[m]), np.nan_to_num(cells[col].to_numpy(dtype=float)[m]))
                arrays.append(a)
            regions[name] = arrays
        thresholds = np.full(len(d.index), float(threshold_deg))
    total = np.where(logged, w_t.sum(axis=1), np.nan)
    noisy_total = n_t[:, noisy].sum(axis=1)
    frames = []
    for name in _REGIONS[method]:
        rn, rw, rc = regions[name]
        f = d.index.copy()
        f["method"], f["region"], f["threshold_deg"] = method, name, thresholds
        f["n"] = rn.sum(axis=1).astype(int)
        f["noisy_fraction"] = _div(rn[:, noisy].sum(axis=1), rn.sum(axis=1))
        f["share_of_noisy"] = _div(rn[:, noisy].sum(axis=1), noisy_total)
        f["weight_share"] = _div(rw.sum(axis=1), total)
        f["noisy_weight_share"] = _div(rw[:, noisy].sum(axis=1), total)
        f["weight_mean"] = _div(np.where(logged, rw.sum(axis=1), np.nan), rc.sum(axis=1))
        frames.append(f)
    cols = list(d.index.columns)
    return (pd.concat(frames, ignore_index=True).sort_values(cols, kind="stable").reset_index(drop=True))


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


def noise_rate_estimates(data, seed: int = 0) -> pd.DataFrame:
    """Per run and epoch, the estimates of the noise rate from the angles alone, against the true
    rate of the run's samples (manifest): the nearest-centre disagreement
    (:func:`disagreement_rate`) and the bimodal mixture of :func:`bimodal_noise_rate` over
    theta_y (``gmm_rate``, fitted to every theta_y of the epoch, or to a fixed subset of
    about :data:`~noisyfr.analysis.engine.SAMPLE_ROWS` of them in larger runs). Both fail their
    controls in trained runs (docs/analysis.md) and are kept for reference; the estimate in the
    summaries is the held-out one (:func:`noisyfr.train.heldout.heldout_noise_rate`). ``data``:
    a long angle table or its Parts."""
    p = parts_of(data, None)
    d = hist.dense(p)
    if d.index.empty:
        return pd.DataFrame()
    sample = p.sample
    gi = d.gid(sample)
    order = np.argsort(gi, kind="stable")
    theta = sample["theta_y"].to_numpy(dtype=float)[order]
    bounds = np.searchsorted(gi[order], np.arange(len(d.index) + 1))
    rows = []
    n_t = d.cell("n")
    noisy = d.mask("noisy")
    for g in range(len(d.index)):
        x = theta[bounds[g]:bounds[g + 1]]
        if len(x) < 4:
            est = dict.fromkeys(("estimate", "mean_low", "mean_high", "separation"), float("nan"))
            est["bimodal"] = False
        else:
            est = bimodal_noise_rate(x, seed=seed)
        rows.append({"gmm_rate": est["estimate"], "gmm_bimodal": est["bimodal"],
                     "mode_low_deg": math.degrees(est["mean_low"]), "mode_high_deg": math.degrees(est["mean_high"]),
                     "mode_separation_sd": est["separation"]})
    out = d.index.copy()
    out["true_rate"] = _div(n_t[:, noisy].sum(axis=1), n_t.sum(axis=1))
    out["disagreement_rate"] = _div(np.nansum(d.cell("n_disagree"), axis=1), np.nansum(d.cell("n_pair"), axis=1))
    out = pd.concat([out, pd.DataFrame(rows)], axis=1)
    out["disagreement_error"] = out["disagreement_rate"] - out["true_rate"]
    return out


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
               "n_samples": int(r.n_samples)}
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
