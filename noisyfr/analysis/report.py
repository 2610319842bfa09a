"""Write the angle/weighting analysis report (Markdown + HTML, PNG figures, CSV tables).

``write_report(run_or_sweep_dir, out_dir)`` loads every run below the input (see
:mod:`noisyfr.analysis.load`), computes the statistics of :mod:`noisyfr.analysis.stats`, draws
the figures of :mod:`noisyfr.analysis.plots` and writes ``out_dir/report.md``, ``report.html``,
``figures/*.png`` and ``tables/*.csv``. Every file is written atomically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from noisyfr import numeric
from noisyfr.analysis import comparisons, counterfactual, load, seeds, stats
from noisyfr.analysis import report_sections as sections
from noisyfr.analysis.document import Document
from noisyfr.angle_log import DEFAULT_LEARNED_ACCURACY, HEALTH_COLUMNS, check_learned_threshold
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path, atomic_write
from noisyfr.names import slug
from noisyfr.outputs import check_output, csv_safe, output_folder


def analytic_curves(losses: dict[str, dict], num_classes: int = 2) -> pd.DataFrame | None:
    """Analytic per-sample weight vs theta_y per loss: columns ``loss, theta_deg, gradient``
    (|dL/dcos theta_y|) and ``gradient_theta`` (|dL/dtheta_y| = gradient * sin theta).

    ``losses`` maps a label to the loss's parameters (``name`` among them, else the label is the
    name; ``grad_mode`` picks the curve). The weight of one sample at 181 angles in the reference
    setting of :func:`noisyfr.losses.curves.loss_curves` (``num_classes`` classes, the other
    centres at 90 degrees, so the non-target log-sum-exp is log(num_classes - 1)), computed as the
    counterfactual weights are (:func:`noisyfr.analysis.counterfactual.weights`: numpy for the
    built-in losses). Losses that cannot be built (unknown name, bad parameters) are left out;
    None when no loss has a curve.
    """
    from noisyfr.analysis import counterfactual

    theta = np.linspace(0.0, math.pi, 181)
    lse_neg = np.full_like(theta, math.log(num_classes - 1))
    frames = []
    for label, params in losses.items():
        params = dict(params)
        params.setdefault("name", label)
        try:
            loss = counterfactual.build(params)
        except NoisyFRError:  # unknown loss or parameters: no curve for it
            continue
        norm = getattr(loss, "reference_norm", None)
        norms = None if norm is None else np.full_like(theta, float(norm))
        grad = counterfactual.weights(loss, theta, lse_neg, norms)["pull"]
        frames.append(pd.DataFrame({"loss": label, "theta_deg": np.degrees(theta), "gradient": grad,
                                    "gradient_theta": grad * np.sin(theta)}))
    return pd.concat(frames, ignore_index=True) if frames else None


def run_curves(runs) -> pd.DataFrame | None:
    """:func:`analytic_curves` for the loss settings of ``runs`` (first run of each loss label)
    and the manifests' number of classes."""
    params: dict[str, dict] = {}
    for r in runs:
        params.setdefault(r.loss, dict(r.loss_settings))
    num_classes = max((r.num_classes for r in runs), default=2)
    return analytic_curves(params, num_classes=max(num_classes, 2))


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        csv_safe(df).to_csv(tmp, index=False, float_format="%.6g")


def summary_table(ep: pd.DataFrame, reg: pd.DataFrame, acc: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """The report's headline table over the runs that learned: per loss and condition, last epoch,
    mean over seeds.

    How far apart clean and noisy samples sit (mean theta_y, gap in degrees, detection AUC at the
    last epoch, and the best over epochs labelled ``oracle_best_auc``: chosen with the noise
    labels, never a result) and what share of the weight the noisy ones get (vs their fraction
    of samples), plus the periphery's weight share, the periphery/centre weight-per-sample ratio
    (regions of ``reg``, one method), the bimodal noise-rate estimate and the accuracy;
    ``n_runs``/``n_learned`` from ``counts`` say how many runs each cell had and kept.
    """
    last = stats.last_epoch(ep)
    best = ep.groupby("run")["auc"].max().rename("oracle_best_auc").reset_index()
    ratio = stats.periphery_ratio(stats.last_epoch(reg))
    periph = stats.last_epoch(reg)
    periph = periph[periph["region"] != "centre"].groupby("run", sort=True)[
        ["weight_share", "share_of_noisy"]].sum().reset_index().rename(
        columns={"weight_share": "periphery_weight_share", "share_of_noisy": "noisy_in_periphery"})
    df = (last.merge(best, on="run", how="left")
          .merge(ratio[["run", "periphery_to_centre_weight"]], on="run", how="left")
          .merge(periph, on="run", how="left"))
    values = ["noisy_fraction", "clean_true_accuracy", "noisy_fit_given", "theta_clean_median_deg",
              "theta_noisy_median_deg", "theta_clean_mean_deg", "theta_noisy_mean_deg",
              "theta_gap_deg", "auc", "oracle_best_auc", "noisy_weight_share", "periphery_weight_share",
              "noisy_in_periphery", "periphery_to_centre_weight"]
    out = df.groupby(["loss", "condition"], sort=True)[values].mean().reset_index()
    out = counts[["loss", "condition", "n_runs", "n_learned"]].merge(out, on=["loss", "condition"],
                                                                      how="left")
    out["weight_share_per_fraction"] = out["noisy_weight_share"] / out["noisy_fraction"].where(
        out["noisy_fraction"] > 0)
    if not acc.empty:
        out = out.merge(acc[["loss", "condition", "accuracy_mean", "accuracy_std"]],
                        on=["loss", "condition"], how="left")
    return out


@dataclass
class _Options:
    weight: str
    quantile: float
    region_deg: float
    bins: int
    seed: int
    metric: str | None
    learned_threshold: float
    #: the sweep's ``analysis`` section (the epoch pairs are read at, the primary comparison)
    plan: comparisons.AnalysisPlan = field(default_factory=comparisons.AnalysisPlan)
    extra_losses: tuple = ()  #: loss sections the counterfactual weights add to the runs' own


#: what the report reads in a run or sweep directory, and what it writes in its output folder
_READS = ("angles", "metrics.csv", "config.yaml", "manifest.parquet", "trials", "results.csv",
          "results.parquet", "sweep.json")
_WRITES = ("report.md", "report.html", "tables", "figures")


def _check_options(out: Path | None, o: _Options) -> None:
    """Every option checked before anything is loaded or written."""
    if out is not None and out.exists() and not out.is_dir():
        raise NoisyFRError(f"{out}: --out exists and is not a directory")
    o.bins = numeric.integer(o.bins, "bins", lo=2, hi=stats.MAX_BINS)
    o.seed = numeric.integer(o.seed, "seed", lo=0, hi=stats.MAX_MIXTURE_SEED)
    o.quantile = stats.check_quantile(o.quantile)
    stats.check_weight(o.weight)
    o.region_deg = stats.check_region_deg(o.region_deg)
    o.learned_threshold = check_learned_threshold(o.learned_threshold, "learned threshold")


def _check_metric(metric: str | None, results: pd.DataFrame | None, results_path, src: Path) -> None:
    """``--metric`` must name a numeric column of the sweep results table; NoisyFRError naming the
    column and listing the numeric ones (a run directory has no results table to take it from)."""
    if metric is None:
        return
    if results is None:
        raise NoisyFRError(f"--metric {metric!r}: {src} has no sweep results table (results.parquet "
                           "or results.csv) to take it from; accuracy comes from metrics.csv")
    numeric_cols = [c for c in results.columns if pd.api.types.is_numeric_dtype(results[c])
                    and not pd.api.types.is_bool_dtype(results[c])]
    if metric not in numeric_cols:
        problem = "not a numeric column" if metric in results.columns else "no such column"
        raise NoisyFRError(f"--metric {metric!r}: {problem} of {results_path} (numeric columns: "
                           f"{', '.join(map(str, numeric_cols)) or 'none'})")


def _run_keys(r) -> dict:
    """The key columns of a run's rows in every table."""
    return {"run": r.name, "loss": r.loss, "condition": r.condition,
            "seed": r.seed if r.seed is not None else -1, "noise_rate": r.noise_rate}


def _figure_runs(runs) -> set[str]:
    """The runs the distribution figures show: the first (by name) of each loss and condition."""
    first: dict[tuple, str] = {}
    for r in sorted(runs, key=lambda r: r.name):
        first.setdefault((r.loss, r.condition), r.name)
    return set(first.values())


#: Epochs aggregated in one pass: a run's aggregates in memory are those of this many epochs.
EPOCH_CHUNK = 8


def _passes(con, runs, o: _Options, shown: set[str]):
    """The DuckDB side of :func:`_stream`, in order: per run, ``("chunk", run, parts)`` for each
    chunk of at most :data:`EPOCH_CHUNK` epochs, then ``("end", run, cleaning rows, angle plane)``.
    Small runs are read many at a time (:mod:`noisyfr.analysis.scan`): one chunk of all epochs."""
    from noisyfr.analysis import engine, scan

    manifests = scan.BatchManifests(con)
    for batch in scan.batches(runs):
        got = (scan.aggregate_batch(con, batch, manifests, o.weight, o.region_deg, o.bins, o.quantile)
               if len(batch) > 1 else None)
        for j, r in enumerate(batch):
            table = manifests.table(r.manifest_path)
            epochs = sorted(r.files)
            if got is not None:
                yield "chunk", r, got[j].with_keys(_run_keys(r))
            else:
                for i in range(0, len(epochs), EPOCH_CHUNK):
                    yield "chunk", r, _aggregate_run(con, r, [r.files[e] for e in epochs[i:i + EPOCH_CHUNK]],
                                                     table, o)
            last = engine.run_source([r.files[epochs[-1]]], r.columns, table)
            cleaning = _cleaning_rows(con, last, r, epochs[-1]) if r.manifest_path is not None else None
            plane = engine.angle_plane(con, last).assign(**_run_keys(r)) if r.name in shown else None
            yield "end", r, cleaning, plane


def _prefetched(items):
    """``items`` computed one ahead on a worker thread: DuckDB (which releases the GIL) reads the
    next chunk while this thread turns the current one into tables. One thread uses the
    connection; at most two chunks' aggregates are in memory."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    done = object()
    with ThreadPoolExecutor(1, thread_name_prefix="noisyfr-scan") as pool:
        ahead = pool.submit(next, it, done)
        while True:
            item = ahead.result()
            if item is done:
                return
            ahead = pool.submit(next, it, done)
            yield item


def _stream(runs, o: _Options, figures: bool) -> dict[str, list[pd.DataFrame]]:
    """Streaming passes (:func:`noisyfr.analysis.engine.aggregate`) over each run's logs, at most
    :data:`EPOCH_CHUNK` epochs at a time (:func:`_passes`, read one chunk ahead): the per-run
    tables, and the binned data of the figures. Sets each run's health, sample count and
    largest label. Memory: the aggregates of two chunks (about 1 MB an epoch) and DuckDB's own
    limit, whatever the runs, epochs and samples."""
    from noisyfr.analysis import engine

    out: dict[str, list[pd.DataFrame]] = {k: [] for k in (
        "epoch_stats.csv", "noise_types.csv", "regions.csv", "weight_by_theta.csv",
        "noise_rate_estimates.csv", "cleaning.csv", "_theta_hist", "_angle_2d")}
    shown = _figure_runs(runs) if figures else set()
    seen: dict[str, dict] = {}
    bar = tqdm(total=len(runs), desc="analyze runs", disable=None)
    con = engine.connect()
    items = _prefetched(_passes(con, runs, o, shown))
    try:
        for item in items:
            r = item[1]
            acc = seen.setdefault(r.name, {"health": [], "n": 0, "max_label": -1, "logged": 0})
            if item[0] == "chunk":
                parts = item[2]
                ep = stats.epoch_stats(parts, o.weight)
                acc["health"].append(ep[["epoch", *HEALTH_COLUMNS]])
                acc["n"] = max(acc["n"], int(ep["n"].max()) if len(ep) else 0)
                top = int(parts.cells["max_label"].max()) if len(parts.cells) else -1
                acc["max_label"] = max(acc["max_label"], top)
                acc["logged"] += int(parts.cells["wcount"].sum())
                out["epoch_stats.csv"].append(ep)
                out["noise_types.csv"].append(stats.noise_type_stats(parts, o.weight))
                out["regions.csv"] += [stats.region_stats(parts, o.quantile, m, o.region_deg, o.weight)
                                       for m in stats.REGION_METHODS]
                if max(r.files) in set(parts.cells["epoch"]):  # the chunk with the run's last epoch
                    out["weight_by_theta.csv"].append(stats.binned_weight(parts, bins=o.bins, weight=o.weight))
                out["noise_rate_estimates.csv"].append(stats.noise_rate_estimates(parts, seed=o.seed))
                if r.name in shown:
                    out["_theta_hist"].append(engine.theta_histogram(parts))
                continue
            if acc["n"] and not acc["logged"]:
                raise NoisyFRError(f"weight {o.weight!r}: not logged in run {r.name} (an older angle "
                                   "log?); choose another with --weight")
            r.health = pd.concat(acc["health"], ignore_index=True)
            r.n_samples, r.max_label = acc["n"], acc["max_label"]
            if item[2] is not None:
                out["cleaning.csv"].append(item[2])
            if item[3] is not None:
                out["_angle_2d"].append(item[3])
            bar.update()
    finally:
        items.close()  # waits for the worker's query before the connection closes
        bar.close()
        con.close()
    return out


def _cleaning_rows(con, source: str, r, epoch: int) -> pd.DataFrame:
    """The report's fixed cleaning rules (:data:`noisyfr.analysis.rules.REPORT_RULES`) at a run's
    last epoch, scored against its manifest: one row per rule and noise type (``all`` first)."""
    from noisyfr.analysis import engine, rules

    counts = engine.rule_counts(con, source, rules.REPORT_RULES).set_index("noise")
    rows = []
    for rule in rules.REPORT_RULES:
        n, flagged = counts["n"].to_dict(), counts[rule].to_dict()
        rows.append({**_run_keys(r), "epoch": epoch, "rule": rule, "noise": "all", "n": int(sum(n.values())),
                     **rules.truth_from_counts(n, flagged)})
        for kind in counts.index:
            rows.append({**_run_keys(r), "epoch": epoch, "rule": rule, "noise": kind, "n": int(n[kind]),
                         "flagged": int(flagged[kind]), "recall": flagged[kind] / n[kind] if n[kind] else math.nan})
    return pd.DataFrame(rows)


def _aggregate_run(con, r, files: list[Path], table: str | None, o: _Options):
    """The aggregates of some of a run's angle logs, checked, with the run's key columns."""
    import duckdb

    from noisyfr.analysis import engine

    src = engine.run_source(files, r.columns, table)
    try:
        parts = engine.aggregate(con, src, [], o.weight, o.region_deg, o.bins, o.quantile,
                                 raw=engine.run_source(files, r.columns, None), manifest=table,
                                 where=str(r.path / "angles"))
    except duckdb.Error as exc:
        raise engine.locate_scan_error(con, files, exc) from None
    engine.check_parts(parts, str(r.path / "angles"), r.manifest_path)
    return parts.with_keys(_run_keys(r))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _compute(runs, results, o: _Options, figures: bool = True) -> dict[str, pd.DataFrame]:
    """Every table of the report, from streaming aggregates (:func:`_stream`); comparisons
    (summary, regions, weights, accuracy) use the runs that learned, the health tables every run."""
    per_run = {k: _concat(v) for k, v in _stream(runs, o, figures).items()}
    rtab = stats.runs_table(runs, o.learned_threshold)
    counts = stats.learned_counts(rtab)
    ep_all = per_run["epoch_stats.csv"]
    ok = set(rtab.loc[rtab["learned"].astype(bool), "run"])

    def kept(name: str) -> pd.DataFrame:
        df = per_run[name]
        return df[df["run"].isin(ok)].reset_index(drop=True) if len(df) and ok else pd.DataFrame()

    ep = ep_all[ep_all["run"].isin(ok)]
    t: dict[str, pd.DataFrame] = {"runs.csv": rtab, "learned.csv": counts, "epoch_stats.csv": ep_all}
    t["noise_types.csv"] = kept("noise_types.csv")
    t["regions.csv"] = kept("regions.csv")
    if len(t["regions.csv"]):
        order = {m: i for i, m in enumerate(stats.REGION_METHODS)}
        t["regions.csv"] = t["regions.csv"].sort_values(
            by="method", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)
    t["periphery_ratio.csv"] = (stats.periphery_ratio(t["regions.csv"]) if len(t["regions.csv"])
                                else pd.DataFrame())
    t["weight_by_theta.csv"] = kept("weight_by_theta.csv")
    t["noise_rate_estimates.csv"] = kept("noise_rate_estimates.csv")
    t["cleaning.csv"] = per_run["cleaning.csv"]
    t["accuracy_points.csv"] = stats.accuracy_points(results, rtab, metric=o.metric)
    t["accuracy.csv"] = stats.accuracy_table(t["accuracy_points.csv"])
    if ok:
        quantile_reg = t["regions.csv"][t["regions.csv"]["method"] == "quantile"]
        t["summary.csv"] = summary_table(ep, quantile_reg, t["accuracy.csv"], counts)
    else:
        t["summary.csv"] = counts.copy()
    t["grad_mode.csv"] = grad_mode_table(rtab, ep_all, t)
    t["run_values.csv"] = seeds.run_values(runs, ep_all, rtab, epoch=o.plan.epoch)
    t["cells.csv"] = seeds.cell_table(t["run_values.csv"])
    t["paired.csv"] = seeds.paired_table(t["run_values.csv"], o.plan)
    t["convention.csv"] = seeds.convention_table(t["run_values.csv"], o.plan.paired_rule)
    t["counterfactual.csv"] = counterfactual.table(runs, o.extra_losses)
    t["_kept"] = rtab[rtab["run"].isin(ok)]
    t["_theta_hist"] = kept("_theta_hist")
    t["_angle_2d"] = kept("_angle_2d")
    return t


def grad_mode_table(rtab: pd.DataFrame, ep_all: pd.DataFrame, t: dict) -> pd.DataFrame:
    """Per loss name, condition and grad mode (only for losses run in more than one mode): runs,
    learned runs, last-epoch clean accuracy and best detection AUC over every run, and over the
    learned runs the noisy weight share and the periphery/centre weight ratio of each region method.
    Empty when no loss was run in two modes."""
    modes = rtab.groupby("loss_name")["grad_mode"].nunique()
    both = set(modes[modes > 1].index)
    if not both:
        return pd.DataFrame()
    keys = ["loss_name", "condition", "grad_mode"]
    r = rtab[rtab["loss_name"].isin(both)]
    best = ep_all.groupby("run")["auc"].max().rename("best_auc")
    r = r.merge(best, left_on="run", right_index=True, how="left")
    out = r.groupby(keys, sort=True).agg(n_runs=("run", "size"), n_learned=("learned", "sum"),
                                         clean_true_accuracy=("final_clean_true_accuracy", "mean"),
                                         best_auc=("best_auc", "mean")).reset_index()
    last = stats.last_epoch(ep_all)
    share = last[last["run"].isin(set(r.loc[r["learned"].astype(bool), "run"]))][["run", "noisy_weight_share"]]
    ratio = stats.last_epoch(t["periphery_ratio.csv"]) if len(t["periphery_ratio.csv"]) else pd.DataFrame()
    per_run = r[["run", *keys]].merge(share, on="run", how="left")
    if len(ratio):
        wide = ratio.pivot_table(index="run", columns="method", values="periphery_to_centre_weight")
        wide.columns = [f"periphery_to_centre_{m}" for m in wide.columns]
        per_run = per_run.merge(wide, left_on="run", right_index=True, how="left")
    extra = per_run.drop(columns="run").groupby(keys, sort=True).mean(numeric_only=True).reset_index()
    return out.merge(extra, on=keys, how="left")


def _draw(t: dict[str, pd.DataFrame], curves, out: Path, o: _Options) -> None:
    """Every figure of the report."""
    from noisyfr.analysis import plots  # matplotlib and seaborn only when figures are drawn

    fig = out / "figures"
    save = plots.save_figure
    save(plots.health(t["epoch_stats.csv"]), fig / "health.png")
    save(plots.detection_auc(t["epoch_stats.csv"]), fig / "detection_auc.png")
    kept = t["_kept"]
    if len(kept):
        for cond in sorted(kept["condition"].unique()):
            sl = slug(cond)
            save(plots.theta_distributions(t["_theta_hist"], cond), fig / f"theta_hist_{sl}.png")
            save(plots.angle_2d(t["_angle_2d"], cond, threshold_deg=o.region_deg), fig / f"angle2d_{sl}.png")
            save(plots.weight_vs_theta(t["weight_by_theta.csv"], cond, curves=curves, weight=o.weight),
                 fig / f"weight_vs_theta_{sl}.png")
        learned_ep = t["epoch_stats.csv"][t["epoch_stats.csv"]["run"].isin(set(kept["run"]))]
        save(plots.weight_share(learned_ep, weight=o.weight), fig / "noisy_weight_share.png")
        held = seeds.heldout_estimates(t["run_values.csv"])
        if len(held):
            save(plots.noise_estimate(held.rename(columns={"closed_fraction": "true_rate"})),
                 fig / "noise_rate_estimate.png")
    points = t["accuracy_points.csv"]
    save(plots.accuracy(points[points["learned"].astype(bool)] if len(points) else points),
         fig / "accuracy.png")


def tables(run_or_sweep_dir: str | Path, quantile: float = stats.DEFAULT_CENTRE_QUANTILE,
           bins: int = stats.DEFAULT_BINS, seed: int = 0, metric: str | None = None,
           weight: str = stats.DEFAULT_WEIGHT, region_deg: float = stats.DEFAULT_REGION_DEG,
           learned_threshold: float = DEFAULT_LEARNED_ACCURACY, figures: bool = True) -> dict[str, pd.DataFrame]:
    """Every table of :func:`write_report` for a run or sweep directory, computed by the
    streaming engine and returned without writing anything: ``"epoch_stats.csv"``,
    ``"regions.csv"``, ... (the report's table files) plus ``"_kept"`` (the runs that learned),
    ``"_theta_hist"`` and ``"_angle_2d"`` (the binned data the distribution figures draw, for
    one run per loss and condition; empty with ``figures=False``). Options as in write_report."""
    src = Path(run_or_sweep_dir)
    o = _Options(weight, quantile, region_deg, bins, seed, metric, learned_threshold,
                 comparisons.read_plan(src))
    _check_options(None, o)
    results_path = load.find_results(src)
    results = load.load_results(results_path) if results_path else None
    _check_metric(metric, results, results_path, src)
    return _compute(load.scan_runs(src), results, o, figures)


def write_report(run_or_sweep_dir: str | Path, out_dir: str | Path, quantile: float = stats.DEFAULT_CENTRE_QUANTILE,
                 bins: int = stats.DEFAULT_BINS, seed: int = 0, metric: str | None = None,
                 figures: bool = True, weight: str = stats.DEFAULT_WEIGHT,
                 region_deg: float = stats.DEFAULT_REGION_DEG,
                 learned_threshold: float = DEFAULT_LEARNED_ACCURACY, extra_losses=()) -> Path:
    """Analyse a run or sweep directory and write ``out_dir/report.md`` (+ html, figures, tables).

    ``weight`` is the per-sample weight column used for shares (``grad_norm``, ``unit_pull``,
    ``weight`` or ``weight_theta``); ``quantile`` defines the quantile centre region and ``region_deg`` the
    fixed-angle and 2-D regions; ``bins`` the number of theta_y bins over [0, 180] degrees;
    ``seed`` the Gaussian-mixture seed; ``metric`` the sweep results' accuracy column (it must
    be a numeric column of the results table); ``learned_threshold`` the last-epoch clean accuracy
    a run needs to count as learned (comparisons use learned runs only); ``extra_losses`` loss
    sections whose counterfactual weights are computed beside those of the runs' own losses.
    ``figures=False`` skips drawing the PNGs (tables and report text only). Every option is
    checked before anything is written. Returns the path of report.md.
    """
    src, out = Path(run_or_sweep_dir), Path(out_dir)
    o = _Options(weight, quantile, region_deg, bins, seed, metric, learned_threshold,
                 comparisons.read_plan(src), tuple(extra_losses))
    _check_options(out, o)
    check_output(out, [src / n for n in _READS], kind="dir", writes=_WRITES)
    results_path = load.find_results(src)
    results = load.load_results(results_path) if results_path else None
    _check_metric(metric, results, results_path, src)
    runs = load.scan_runs(src)
    # every input found, at any depth and outside the directory (manifests) too
    check_output(out, load.run_inputs(runs), kind="dir", writes=_WRITES)

    steps = tqdm(total=4, desc="analyze", disable=None)
    with output_folder(out):  # a failure removes what this call added
        t = _compute(runs, results, o, figures)
        curves = run_curves(runs) if o.weight not in sections.NO_CURVE else None
        if curves is not None and o.weight == "weight_theta":
            curves = curves.assign(gradient=curves["gradient_theta"])
        steps.update()
        for name, df in t.items():
            if not name.startswith("_"):
                _write_csv(df, out / "tables" / name)
        steps.update()
        if figures:
            _draw(t, curves, out, o)
        steps.update()

        doc = Document()
        sections.doc_header(doc, src, runs, results_path, t, o)
        sections.doc_conclusions(doc, t, o)
        sections.doc_health(doc, t)
        sections.doc_summary(doc, t, o)
        if len(t["_kept"]):
            sections.doc_distributions(doc, t)
            sections.doc_weighting(doc, t, curves, o)
            sections.doc_separability(doc, t, o)
        sections.doc_grad_mode(doc, t, o)
        counterfactual.document(doc, t)
        sections.doc_accuracy(doc, t, o)
        doc.h(2, "Files")
        doc.p("Tables (CSV): " + ", ".join(f"`tables/{n}`" for n in t if not n.startswith("_"))
              + ". Figures (PNG) in `figures/`.")
        with atomic_write(out / "report.md", "w", encoding="utf-8") as fh:
            fh.write(doc.markdown())
        with atomic_write(out / "report.html", "w", encoding="utf-8") as fh:
            fh.write(doc.html(f"noisyfr analysis: {src.name}"))
        steps.update()
        steps.close()
    return out / "report.md"
