"""Statistics of how a loss places and weights clean versus noisy samples in angle space.

All functions take the long angle table from :func:`noisyfr.analysis.load.long_angles` (or any
DataFrame with ``theta_y``, ``weight``, ``noise``/``is_noisy`` and grouping columns) and return
tidy DataFrames. Angles are radians; tables also give degrees where a reader wants them.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from noisyfr import numeric
from noisyfr.analysis import engine, hist
from noisyfr.analysis.engine import Parts
from noisyfr.angle_log import WEIGHT_COLUMNS
from noisyfr.errors import NoisyFRError
from noisyfr.noise.spec import NOISE_TYPES

# Parts of this module's API that live in their own modules (no import back into this one).
# isort: split
from noisyfr.analysis.accuracy import accuracy_points, accuracy_table, learned_counts, runs_table  # noqa: F401
from noisyfr.analysis.detection import bimodal_noise_rate, detection_auc, disagreement_rate  # noqa: F401
from noisyfr.analysis.options import (  # noqa: F401 (the options' defaults and bounds)
    DEFAULT_BINS,
    DEFAULT_CENTRE_QUANTILE,
    DEFAULT_REGION_DEG,
    DEFAULT_WEIGHT,
    MAX_BINS,
    MAX_MIXTURE_SEED,
    REGION_METHODS,
)

RUN_KEYS = ["run", "loss", "condition", "seed", "noise_rate"]


def _keys(df: pd.DataFrame, extra: list[str]) -> list[str]:
    return [k for k in RUN_KEYS if k in df.columns] + extra


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
    if d.index.empty:
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
    cols["theta_gap_deg"] = cols["theta_noisy_mean_deg"] - cols["theta_clean_mean_deg"]
    cols["closed_fraction"] = _div(n_closed, n)
    cols["disagreement_rate"] = _div(np.nansum(d.cell("n_disagree"), axis=1), np.nansum(d.cell("n_pair"), axis=1))
    cols["disagreement_error"] = cols["disagreement_rate"] - cols["noisy_fraction"]
    cols["auc_bound"] = bound
    return with_columns(d.index, cols)


def with_columns(index: pd.DataFrame, cols: dict) -> pd.DataFrame:
    """``index`` with the columns ``cols`` (arrays of its length, or scalars) after its own, made
    in one step (assigning them one by one costs pandas a block insert each: a tenth of a
    millisecond a column, for every run and epoch of a many-run sweep)."""
    index = index.reset_index(drop=True)
    return pd.concat([index, pd.DataFrame(cols, index=index.index)], axis=1)


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
        gi, ti = d.cell_ids()
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
        frames.append(with_columns(d.index, {
            "method": method, "region": name, "threshold_deg": thresholds,
            "n": rn.sum(axis=1).astype(int),
            "noisy_fraction": _div(rn[:, noisy].sum(axis=1), rn.sum(axis=1)),
            "share_of_noisy": _div(rn[:, noisy].sum(axis=1), noisy_total),
            "weight_share": _div(rw.sum(axis=1), total),
            "noisy_weight_share": _div(rw[:, noisy].sum(axis=1), total),
            "weight_mean": _div(np.where(logged, rw.sum(axis=1), np.nan), rc.sum(axis=1))}))
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
    # one row per (run, epoch, method) present, a NaN mean kept (a pivot_table with dropna=False
    # would add every combination of the key columns' values: runs x losses x seeds x epochs)
    wide = agg.set_index(keys + ["_side"])["mean"].unstack("_side").reset_index()
    wide.columns.name = None
    for side in ("centre", "periphery"):
        if side not in wide.columns:
            wide[side] = float("nan")
    wide["periphery_to_centre_weight"] = wide["periphery"] / wide["centre"]
    return wide.rename(columns={"centre": "centre_weight_mean", "periphery": "periphery_weight_mean"})


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
