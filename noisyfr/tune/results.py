"""A sweep's results: one tidy row per trial (``results.parquet`` / ``results.csv``) and the
``summary.md`` tables of loss x noise setting over the trials that learned."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noisyfr.angle_log import DEFAULT_LEARNED_ACCURACY, DEFAULT_LEARNED_HELDOUT
from noisyfr.dotted import get_dotted
from noisyfr.names import is_number, label_value
from noisyfr.tune.spec import SweepSpec, Trial, flatten

METRICS = ("loss", "val_accuracy", "heldout_accuracy", "noisy_auc", "theta_clean_mean", "theta_noisy_mean",
           "clean_true_accuracy", "noisy_fit_given", "noisy_fit_true", "theta_clean_median",
           "theta_noisy_median", "reference_heldout_accuracy", "val_reference_accuracy")


def _config_columns(t: Trial) -> dict:
    from noisyfr.losses import loss_label, loss_settings

    section = t.config.get("loss") if isinstance(t.config.get("loss"), Mapping) else {}
    # every loss setting that changes a number (defaults filled in), and the label naming them
    cols: dict[str, Any] = {f"loss.{k}": v for k, v in loss_settings(section).items()}
    cols["loss.label"] = loss_label(section)
    for key, value in t.values.items():
        if isinstance(value, Mapping):
            for k, v in flatten(value).items():
                cols[f"{key}.{k}"] = v
        elif not key.startswith(("data.noise.", "loss.")):
            cols[key] = value
    if t.noise is not None:
        for k, v in t.noise.to_dict().items():
            cols[f"data.noise.{k}"] = v
    cols["seed"] = t.config.get("seed", 0)
    threshold = get_dotted(t.config, "health.learned_accuracy")
    cols["learned_threshold"] = float(DEFAULT_LEARNED_ACCURACY if threshold is None else threshold)
    held = get_dotted(t.config, "health.learned_heldout_accuracy")
    cols["learned_heldout_threshold"] = float(DEFAULT_LEARNED_HELDOUT if held is None else held)
    return cols


def scalar(v: Any) -> Any:
    """A plain Python scalar (numpy scalars unwrapped), or None for anything else."""
    import numpy as np

    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return None


def clean_metrics(metrics: Mapping) -> dict:
    """Scalar metrics for Tune (non-scalars dropped; ``checkpoint`` kept as ``checkpoint_path``)."""
    out = {}
    for k, v in metrics.items():
        if k == "checkpoint":
            out["checkpoint_path"] = str(v) if v is not None else None
            continue
        s = scalar(v)
        if s is not None or v is None:
            out[str(k)] = s
    return out


def run_dir_epochs(output_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of a run directory's ``metrics.csv`` (the trainer writes it after each
    epoch's checkpoint), or [] when there is none."""
    import pandas as pd

    path = Path(output_dir) / "metrics.csv"
    try:
        return pd.read_csv(path).to_dict("records") if path.is_file() else []
    except (OSError, ValueError):
        return []


#: columns Tune's rows carry beside the trainer's metrics (where the trial ran)
_WHERE = ("hostname", "node_id", "world_size")


def with_run_dir_epochs(history: Any, output_dir: str | os.PathLike):
    """A trial's Tune history completed with the epochs its run directory's ``metrics.csv`` holds
    and the history lacks.

    Tune's loggers write a trial's history on the driver and copy it into the sweep directory
    only now and then, so a driver killed between two copies loses the trial's latest rows (all of
    them when the trial ended before the first copy), and a resumed sweep that finds the trial
    done reads it back without them. The trainer's ``metrics.csv`` is written after each epoch's
    checkpoint: its rows fill the gap, with the where-it-ran columns of the last Tune row."""
    import pandas as pd

    h = history if isinstance(history, pd.DataFrame) else pd.DataFrame()
    rows = run_dir_epochs(output_dir)
    have = set(pd.to_numeric(h["epoch"], errors="coerce").dropna().astype(int)) if "epoch" in h.columns else set()
    extra = [clean_metrics(r) for r in rows if "epoch" in r and pd.notna(r["epoch"]) and int(r["epoch"]) not in have]
    if not extra:
        return history
    if len(h):
        last = h.iloc[-1]
        for r in extra:
            r.update({k: last[k] for k in _WHERE if k in h.columns})
    return pd.concat([h, pd.DataFrame(extra)], ignore_index=True).sort_values("epoch", kind="stable")


def _clean_history(history: Any):
    """The per-epoch rows of a trial (last report per epoch wins) and its failure, if any."""
    import pandas as pd

    h = history if isinstance(history, pd.DataFrame) else pd.DataFrame()
    failed = None
    if "failed" in h.columns:
        f = h[h["failed"].fillna(False).astype(bool)]
        if len(f):
            failed = str(f["error"].iloc[-1]) if "error" in f.columns else "failed"
            h = h[~h["failed"].fillna(False).astype(bool)]
    if "epoch" in h.columns:
        h = h[h["epoch"].notna()].drop_duplicates("epoch", keep="last").sort_values("epoch")
    return h, failed


def summarize_trial(history: Any, error: str | None, finished: bool = True) -> dict:
    """Final and best metrics plus status from one trial's per-epoch history (a DataFrame or None)."""
    import numpy as np
    import pandas as pd

    out: dict[str, Any] = {"status": "pending", "epochs": 0, "error": error}
    out.update({f"final_{m}": float("nan") for m in METRICS})
    out.update(final_theta_gap_deg=float("nan"), learned=False, learned_on=None,
               best_val_accuracy=float("nan"),
               best_noisy_auc=float("nan"), best_epoch=None, hostname=None, node_id=None, world_size=1)
    h, failed = _clean_history(history)
    if len(h):
        last = h.iloc[-1]
        out["epochs"] = int(last["epoch"]) if "epoch" in h.columns else len(h)
        for m in METRICS:
            if m in h.columns:
                out[f"final_{m}"] = float(pd.to_numeric(last[m], errors="coerce"))
        out["final_theta_gap_deg"] = float(np.degrees(out["final_theta_noisy_mean"] -
                                                      out["final_theta_clean_mean"]))
        for m in ("val_accuracy", "noisy_auc"):
            vals = pd.to_numeric(h[m], errors="coerce") if m in h.columns else pd.Series(dtype=float)
            if vals.notna().any():
                i = vals.idxmax()
                out[f"best_{m}"] = float(vals[i])
                if m == "val_accuracy" and "epoch" in h.columns:
                    out["best_epoch"] = int(h.loc[i, "epoch"])
        for k in ("hostname", "node_id", "world_size"):
            if k in h.columns:
                out[k] = last[k]
        if "learned" in h.columns and last["learned"] is not None:
            out["learned"] = bool(last["learned"])
        if "learned_on" in h.columns and isinstance(last["learned_on"], str):
            out["learned_on"] = last["learned_on"]
        # Tuner.fit returns only when every trial has ended: a trial without error that reported is complete.
        out["status"] = "completed" if finished else "incomplete"
    if failed is not None:
        out["status"], out["error"] = "failed", failed
    elif error is not None:
        out["status"] = "error"
    return out


def results_table(spec: SweepSpec, histories: Mapping[str, tuple[Any, str | None]]):
    """One tidy row per trial: config columns (every loss setting, ``loss.label``, the noise spec
    as ``data.noise.*``), final/best metrics, the last epoch's health, ``learned`` (only completed
    trials can have learned), status, paths."""
    import pandas as pd

    rows = []
    for t in spec.trials:
        hist, error = histories.get(t.name, (None, None))
        hist = with_run_dir_epochs(hist, t.config["output_dir"])
        row = {"trial": t.name, **_config_columns(t), **summarize_trial(hist, error)}
        row["learned"] = bool(row["learned"]) and row["status"] == "completed"
        row["output_dir"] = t.config["output_dir"]
        row["manifest"] = t.manifest
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in df.columns:
        vals = [v for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if any(isinstance(v, (list, dict, tuple)) for v in vals):
            df[col] = [json.dumps(v) if isinstance(v, (list, dict, tuple)) else v for v in df[col]]
            vals = [v for v in df[col] if v is not None]
        kinds = {"num" if is_number(v) else "bool" if isinstance(v, bool) else "str" for v in vals}
        if len(kinds) > 1:
            df[col] = [None if v is None else str(v) for v in df[col]]
    return df


def _group_labels(df, spec: SweepSpec):
    """(row label, column label) per trial: loss label (+ other varying non-loss, non-noise keys)
    x noise setting."""
    cfg_cols = [c for c in df.columns if c.startswith("data.noise.") or c in spec.axes
                or any(c.startswith(a + ".") for a in spec.axes)]
    varying = [c for c in cfg_cols if df[c].astype(str).nunique() > 1]
    noise_cols = [c for c in varying if c.startswith("data.noise.") and c != "data.noise.seed"]
    row_cols = [c for c in varying if c not in noise_cols and c not in ("seed", "data.noise.seed")
                and not c.startswith("loss.") and c != "loss"]

    def row_label(r):
        extra = " ".join(f"{c.rsplit('.', 1)[-1]}={label_value(r[c])}" for c in row_cols)
        return f"{r['loss.label']} {extra}".strip()

    def col_label(r):
        if not noise_cols:
            return "all"
        return ", ".join(f"{c.rsplit('.', 1)[-1]}={label_value(r[c])}" for c in noise_cols)

    return df.apply(row_label, axis=1), df.apply(col_label, axis=1)


#: (column, title, scale, digits) of the summary's metric tables.
SUMMARY_METRICS = (
    ("final_heldout_accuracy", "Held-out identification accuracy (unseen images of the training "
     "identities, nearest class centre), last epoch", 1.0, 3),
    ("final_reference_heldout_accuracy", "Reference beside it (features runs): the same held-out "
     "images identified by the nearest class mean of the raw features under the same noisy labels, "
     "no training", 1.0, 3),
    ("final_clean_true_accuracy", "Clean-sample accuracy on their labels (training pass), last epoch",
     1.0, 3),
    ("final_noisy_auc", "Noisy-sample detection AUC from theta_y, last epoch", 1.0, 3),
    ("best_noisy_auc", "Oracle: noisy-sample detection AUC at its best epoch (the epoch chosen with "
     "the noise labels: not a result)", 1.0, 3),
    ("final_noisy_fit_given", "Closed-set noisy samples fitted to their given (wrong) label, last epoch",
     1.0, 3),
    ("final_theta_clean_median_deg", "Median theta_y of clean samples, last epoch (degrees)", 1.0, 1),
    ("final_theta_noisy_median_deg", "Median theta_y of noisy samples, last epoch (degrees)", 1.0, 1),
    ("final_val_accuracy", "Verification accuracy, last epoch (%)", 100.0, 2),
    ("final_val_reference_accuracy", "Reference beside it (features runs): verification through the "
     "frozen model alone (%)", 100.0, 2),
    ("final_loss", "Training loss, last epoch", 1.0, 3),
)


#: Summary metrics bounded by [0, 1] (before their scale): logit-scale intervals.
BOUNDED_SUMMARY = frozenset({"final_heldout_accuracy", "final_clean_true_accuracy", "final_noisy_auc",
                             "best_noisy_auc", "final_noisy_fit_given", "final_val_accuracy"})


def _cell(values, learned, scale: float, digits: int, bounded: bool = False) -> str:
    """``mean [95 % interval] n`` over all completed runs, then over the learned ones (the
    interval of :func:`noisyfr.analysis.seeds.interval`, on the logit scale when ``bounded``)."""
    from noisyfr.analysis.seeds import format_interval, interval

    def text(v):
        x = interval([float(a) for a in v], bounded=bounded)
        return format_interval(x["mean"] * scale, x["lo"] * scale, x["hi"] * scale, x["n"], digits)

    v = list(values)
    return f"{text(v)} · learned {text([a for a, ok in zip(v, learned) if ok])}"


def _grid_table(rows, cols, row_order, col_order, cell) -> list[str]:
    lines = ["| loss | " + " | ".join(col_order) + " |", "|---|" + "---|" * len(col_order)]
    for rl in row_order:
        lines.append(f"| {rl} | " + " | ".join(cell((rows == rl) & (cols == cl)) for cl in col_order) + " |")
    return lines + [""]


def _metric_tables(done, spec: SweepSpec) -> list[str]:
    import numpy as np

    for c in ("theta_clean_median", "theta_noisy_median"):
        done[f"final_{c}_deg"] = np.degrees(done[f"final_{c}"].astype(float))
    rows, cols = _group_labels(done, spec)
    row_order, col_order = list(dict.fromkeys(rows)), list(dict.fromkeys(cols))
    learned = done["learned"].astype(bool)
    lines = ["## Trials that learned (learned / completed)", ""]
    lines += _grid_table(rows, cols, row_order, col_order,
                         lambda m: f"{int(learned[m].sum())}/{int(m.sum())}" if m.any() else "–")
    for metric, title, scale, digits in SUMMARY_METRICS:
        if metric not in done.columns or done[metric].isna().all():
            continue
        lines += [f"## {title}", ""]
        lines += _grid_table(rows, cols, row_order, col_order,
                             lambda m, metric=metric, scale=scale, digits=digits: _cell(
                                 done.loc[m, metric].astype(float), learned[m], scale, digits,
                                 metric in BOUNDED_SUMMARY))
    return lines


def summary_markdown(df, spec: SweepSpec) -> str:
    """``summary.md`` text: how many runs learned per loss x noise setting, then for each metric a
    table of the mean with its 95 % t-interval over seeds, over every completed run and over the
    runs that learned; failed and errored trials and runs that did not learn listed with their
    numbers. Row labels carry the loss's scale, margin and grad_mode."""
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    done = df[df["status"] == "completed"].copy()
    thresholds = sorted(set(float(x) for x in done.get("learned_threshold", [])))
    lines = [f"# Sweep `{spec.name}`", "",
             f"{len(df)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "; "
             f"{int(done['learned'].sum()) if len(done) else 0} of {len(done)} completed trials learned.",
             "A trial *learned* when its last epoch's held-out identification accuracy (unseen images "
             "of its training identities, `data.holdout`) reaches health.learned_heldout_accuracy; "
             "a trial without held-out images falls back to its clean-sample accuracy on the training "
             f"pass against health.learned_accuracy ({', '.join(f'{t:g}' for t in thresholds) or '-'}). "
             "Metric cells: mean [95 % t-interval over seeds] n over all completed trials, then "
             "over the trials that learned. Compare losses with the paired differences of "
             "`noisyfr analyze` (report, *Conclusions over seeds*).", ""]
    if len(done):
        lines += _metric_tables(done, spec)
    bad = df[df["status"].isin(["failed", "error", "incomplete", "pending"])]
    if len(bad):
        lines += ["## Trials that did not complete", ""]
        for _, r in bad.iterrows():
            lines.append(f"- `{r['trial']}`: {r['status']}" + (f": {r['error']}" if r["error"] else ""))
        lines.append("")
    not_learned = done[~done["learned"].astype(bool)] if len(done) else done
    if len(not_learned):
        lines += ["## Completed trials that did not learn", ""]
        for _, r in not_learned.iterrows():
            held = r.get("final_heldout_accuracy", float("nan"))
            held = f"held-out accuracy {float(held):.3f}, " if held == held else ""
            lines.append(f"- `{r['trial']}` ({r['loss.label']}): {held}clean-sample accuracy "
                         f"{float(r['final_clean_true_accuracy']):.3f}, noisy fit "
                         f"{float(r['final_noisy_fit_given']):.3f} at the last epoch")
        lines.append("")
    return "\n".join(lines)


def write_results(df, sweep_dir: str | os.PathLike, spec: SweepSpec) -> None:
    """Write ``results.parquet``, ``results.csv`` and ``summary.md`` atomically."""
    from noisyfr.io import atomic_path, atomic_write
    from noisyfr.outputs import csv_safe

    sdir = Path(sweep_dir)
    with atomic_path(sdir / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(sdir / "results.csv") as tmp:
        csv_safe(df).to_csv(tmp, index=False)  # text cells escaped (CSV injection)
    with atomic_write(sdir / "summary.md", "w", encoding="utf-8") as fh:
        fh.write(summary_markdown(df, spec))
