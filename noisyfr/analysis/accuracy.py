"""Accuracy of a sweep's runs against the noise rate, and the runs table: the verification accuracy
of each run (sweep results or ``metrics.csv``) with its loss, condition and noise rate, its summary
per loss and condition, and which runs learned. Part of :mod:`noisyfr.analysis.stats`'s API (it
re-exports these names)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from noisyfr.angle_log import DEFAULT_LEARNED_ACCURACY
from noisyfr.errors import NoisyFRError
from noisyfr.io import read_json

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
    from noisyfr.labels import loss_label

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
