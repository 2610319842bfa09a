"""Counterfactual weights: how any loss would weight each logged sample on the same geometry.

A sample's cross-entropy under a margin loss L, with target logit ``s T_L(theta)`` and non-target
logits whose log-sum-exp is ``lse_neg`` (logged per sample, :mod:`noisyfr.train.angles`), has

    p_L = sigmoid(s T_L(theta) - lse_neg),      dCE/dcos(theta_y) = -s (1 - p_L) dT_L/dcos

where dT_L/dcos is the slope *as the loss applies it*: 1 under ``grad_mode: detached``, the
derivative of T_L under ``exact``, floored at ``grad_floor`` when one is set. From the logged
``theta_used`` (the angle at the label trained on) and ``lse_neg`` this module computes, for any
registered loss with its parameters and gradient mode, per sample:

- ``pull`` = s (1 - p_L) |dT_L/dcos| (for the loss that trained, the logged ``weight``);
- ``unit pull`` = ``pull * sin(theta)``: the target term's pull on the unit embedding along the
  great circle to its centre (|dCE/dtheta_y|, the logged ``weight_theta``). The logged
  ``unit_pull`` also carries the negatives' push, whose direction the log does not keep, so it
  is not recomputed for another loss;
- the two channels: the **p channel** s (1 - p_L) and the **slope channel** |dT_L/dcos|.

and per run and epoch the noisy share of each: ``noisy_share`` (of the pull),
``p_channel_share`` (the share if only the p channel acted: L with the detached gradient),
``slope_channel_share`` (the share if only the slope acted: every p at 0, the most the shape of
dT/dcos can do) and ``unit_pull_share``.

What is held fixed: the geometry (every angle and every non-target logit as the run saw them).
So ``lse_neg`` is the run's, at the run's scale s and with the run's treatment of the
non-target logits (CurricularFace's hard-negative modulation, for one). A counterfactual at
another s is refused ("not available": lse_neg is not linear in s), and so is one for a run or a
loss whose logits are not ``s T`` / ``s cos`` (plain softmax). Losses with a state are taken in
the reference state of :mod:`noisyfr.losses.curves`; MagFace reads the logged feature norms.
A real run of L also shapes its own geometry: report both (docs/analysis.md).

The logs are read through the engine (:func:`noisyfr.analysis.engine.run_source`) in record
batches of :data:`CHUNK_ROWS` rows: memory is bounded whatever the size of the run.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from noisyfr.errors import NoisyFRError

#: Rows per record batch read from DuckDB.
CHUNK_ROWS = 1 << 20
#: Columns of :func:`run_table` / :func:`table`.
COLUMNS = ("run", "loss", "condition", "seed", "epoch", "counterfactual", "same_loss", "available",
           "note", "n", "n_noisy", "noisy_share", "p_channel_share", "slope_channel_share",
           "unit_pull_share", "mean_p_clean", "mean_p_noisy", "actual_weight_share")
#: The per-sample sums each share is made of (all samples, noisy samples).
_SUMS = ("pull", "p_channel", "slope", "unit_pull", "p")


def _settings(section: dict) -> dict:
    from noisyfr.labels import loss_settings

    return loss_settings(section)


def label(section: dict) -> str:
    """The loss label of a loss section (``arcface s=32 m=0.5 detached``)."""
    from noisyfr.labels import loss_label

    return loss_label(section)


def build(section: dict):
    """The loss of a config ``loss`` section (name, parameters, ``grad_mode``) in its reference
    state; ``sample_rate`` (Partial FC) is not a loss parameter and is dropped. A built-in loss
    is a :class:`noisyfr.targets.Reference` (numpy: no torch); a loss registered by a plugin
    (imported in this process) the torch loss, in float64. NoisyFRError for an unknown name or
    an invalid parameter."""
    from noisyfr import targets

    s = _settings(section)
    name, mode = s.pop("name"), s.pop("grad_mode")
    s.pop("sample_rate", None)
    if targets.is_builtin(name):
        return targets.reference(name, mode, s)
    from noisyfr.labels import is_registered

    if not is_registered(name):  # said without importing torch
        raise NoisyFRError(f"unknown loss {name!r}: not a built-in loss nor one registered in this process")
    from noisyfr.losses.curves import reference_loss

    return reference_loss(name, mode, s)


def target_and_slope(loss, theta, feat_norm=None) -> tuple[np.ndarray, np.ndarray]:
    """``(T, |dT/dcos|)`` of a built loss (:func:`build`) at the angles ``theta``, float64: the
    slope as the loss applies it (its grad mode, its floor). ``feat_norm`` feeds a loss that needs
    norms."""
    theta = np.asarray(theta, dtype=np.float64)
    norms = None
    if loss.needs_norms:
        if feat_norm is None:
            raise NoisyFRError(f"{loss.name}: needs the feature norms (feat_norm not logged)")
        norms = np.asarray(feat_norm, dtype=np.float64)
    if hasattr(loss, "target_and_slope"):  # a built-in loss: numpy
        target, slope = loss.target_and_slope(theta, norms)
        return target, np.abs(slope)
    import torch  # a plugin's loss: its own torch code, by autograd

    cos_y = torch.as_tensor(np.cos(theta)).requires_grad_(True)
    norms = None if norms is None else torch.as_tensor(norms)
    with torch.enable_grad():
        target = loss._target(cos_y, norms)
        (slope,) = torch.autograd.grad(target.sum(), cos_y, allow_unused=True)
    slope = np.zeros_like(theta) if slope is None else np.abs(slope.numpy())
    return target.detach().numpy(), slope


def weights(loss, theta, lse_neg, feat_norm=None) -> dict[str, np.ndarray]:
    """:func:`sample_weights` without refusing a linear head (the analytic curves of plain
    softmax, whose logits are ``cos`` at s = 1 there)."""
    from scipy.special import expit

    target, slope = target_and_slope(loss, theta, feat_norm)
    z = loss.s * target - np.asarray(lse_neg, dtype=np.float64)
    p = expit(z)
    p_channel = loss.s * expit(-z)  # s (1 - p), accurate where p is near 1
    pull = p_channel * slope
    return {"p": p, "p_channel": p_channel, "slope": slope, "pull": pull,
            "unit_pull": pull * np.sin(np.asarray(theta, dtype=np.float64))}


def sample_weights(loss, theta, lse_neg, feat_norm=None) -> dict[str, np.ndarray]:
    """Per-sample ``p``, ``p_channel`` = s (1 - p), ``slope`` = |dT/dcos| (the loss's grad mode
    applied), ``pull`` = p_channel * slope and ``unit_pull`` = pull * sin(theta), float64, for a
    built loss (:func:`build`) at the angles ``theta`` (radians, at the label trained on) with
    the non-target log-sum-exp ``lse_neg``. ``feat_norm`` feeds a loss that needs norms."""
    if loss.linear_head:
        raise NoisyFRError(f"{loss.name}: its logits are not s * T(theta): no counterfactual")
    return weights(loss, theta, lse_neg, feat_norm)


def blocker(run_section: dict, cf_section: dict) -> str | None:
    """Why loss ``cf_section`` has no counterfactual on the logs of a run of ``run_section``
    (None when it has one)."""
    from noisyfr.labels import is_registered

    run, cf = _settings(run_section), _settings(cf_section)
    for what, s in (("the run's loss", run), ("the counterfactual", cf)):
        if not is_registered(s["name"]):
            return f"{what} {s['name']!r} is not a registered loss"
        if s["name"] == "softmax":
            return f"{what} is plain softmax (logits not s * T)"
    s_run, s_cf = run.get("s"), cf.get("s")
    if s_run is None or s_cf is None or float(s_run) != float(s_cf):
        return f"s={s_cf} differs from the run's s={s_run} (lse_neg is the run's, at its s)"
    return None


def _prepare(r, sections: list[dict]) -> tuple[dict, dict, dict]:
    """``(keys, blocked, built)`` of a run: its key columns, per counterfactual label the reason it
    is not available (None when it is) and the built losses of the available ones. A section
    without ``s`` takes the run's."""
    keys = {"run": r.name, "loss": r.loss, "condition": r.condition,
            "seed": r.seed if r.seed is not None else -1}
    run_s = r.loss_settings.get("s")
    sections = [c if "s" in c or run_s is None else {**c, "s": run_s} for c in sections]
    by_label = {label(c): c for c in sections}  # a setting given twice is weighted once
    blocked = {k: blocker(r.loss_settings, c) for k, c in by_label.items()}
    built = {k: build(c) for k, c in by_label.items() if blocked[k] is None}
    return keys, blocked, built


def _accumulate(df: pd.DataFrame, built: dict, acc: dict, logged: dict) -> None:
    """Add the per-epoch sums of one batch of a run's rows (``epoch, is_noisy, theta, lse_neg,
    feat_norm, weight``) to ``acc`` and the rows with ``lse_neg`` to ``logged``."""
    epochs, code = np.unique(df["epoch"].to_numpy(dtype=np.int64), return_inverse=True)
    noisy = df["is_noisy"].to_numpy(dtype=bool)
    lse = df["lse_neg"].to_numpy(dtype=float)
    ok = np.isfinite(lse)
    w = np.nan_to_num(df["weight"].to_numpy(dtype=float))
    n_epochs = len(epochs)

    def sums(v, where, code=code, noisy=noisy, k=n_epochs):
        # per epoch of the batch: the sum over all rows and over noisy ones
        return (np.bincount(code[where], v, minlength=k),
                np.bincount(code[where & noisy], v[noisy[where]], minlength=k))

    every = np.ones(len(df), dtype=bool)
    per = {"n": sums(np.ones(len(df)), every), "weight": sums(w, every),
           "logged": sums(np.ones(int(ok.sum())), ok)}
    if ok.any():
        theta, fn = df["theta"].to_numpy(dtype=float)[ok], df["feat_norm"].to_numpy(dtype=float)[ok]
        # the rows with lse_neg: their epoch codes and noisy flags found once for every loss
        code_ok, noisy_ok = code[ok], noisy[ok]
        code_noisy = code_ok[noisy_ok]

        def sums_ok(v):
            return (np.bincount(code_ok, v, minlength=n_epochs),
                    np.bincount(code_noisy, v[noisy_ok], minlength=n_epochs))

        n_ok = sums_ok(np.ones(len(code_ok)))
        for name, loss in built.items():
            ws = sample_weights(loss, theta, lse[ok], fn)
            for k in _SUMS:
                per[(name, k)] = sums_ok(ws[k])
            per[(name, "n_ok")] = n_ok
    for i, e in enumerate(int(x) for x in epochs):
        for key, (total, part) in per.items():
            _add(acc, (e, *key) if isinstance(key, tuple) else (e, key), total[i], part[i])
        logged[e] = logged.get(e, 0) + int(per["logged"][0][i])


def _rows(r, keys: dict, blocked: dict, acc: dict, logged: dict) -> pd.DataFrame:
    """:data:`COLUMNS` of one run from its accumulated sums."""
    rows = []
    for e in sorted(logged):
        n, n_noisy = acc[(e, "n")]
        wall, wnoisy = acc[(e, "weight")]
        for name, why in blocked.items():
            row = {**keys, "epoch": e, "counterfactual": name, "same_loss": name == r.loss,
                   "n": int(n), "n_noisy": int(n_noisy),
                   "actual_weight_share": wnoisy / wall if wall > 0 else math.nan}
            if why is None and logged[e] < n:
                why = "lse_neg not logged (an older angle log)" if logged[e] == 0 else \
                    f"lse_neg logged for {logged[e]} of {int(n)} samples"
            if why is not None:
                rows.append({**row, "available": False, "note": why})
                continue
            share = {k: _ratio(acc[(e, name, k)]) for k in _SUMS}
            n_ok, n_noisy_ok = acc[(e, name, "n_ok")]
            n_clean = n_ok - n_noisy_ok
            p_all, p_noisy = acc[(e, name, "p")]
            rows.append({**row, "available": True, "note": "",
                         "noisy_share": share["pull"], "p_channel_share": share["p_channel"],
                         "slope_channel_share": share["slope"], "unit_pull_share": share["unit_pull"],
                         "mean_p_clean": (p_all - p_noisy) / n_clean if n_clean else math.nan,
                         "mean_p_noisy": p_noisy / n_noisy_ok if n_noisy_ok else math.nan})
    return pd.DataFrame(rows, columns=list(COLUMNS))


#: The columns the counterfactual weights read of an angle relation.
_READ = "epoch, is_noisy, coalesce(theta_used, theta_y) AS theta, lse_neg, feat_norm, weight"


def run_table(con, r, sections: list[dict], table: str | None = None) -> pd.DataFrame:
    """:data:`COLUMNS` for one run (:class:`noisyfr.analysis.load.Run`) and each loss section of
    ``sections``: per logged epoch, the noisy shares that loss would give on the run's logged
    geometry. ``table``: the run's manifest table in ``con`` (:func:`~noisyfr.analysis.engine.
    manifest_table`; None: every sample clean). A section without ``s`` takes the run's. A run
    without ``lse_neg`` (an older log) gives ``available = False`` rows saying so."""
    from noisyfr.analysis import engine

    keys, blocked, built = _prepare(r, sections)
    files = [r.files[e] for e in sorted(r.files)]
    src = engine.run_source(files, r.columns, table)
    acc: dict[tuple, float] = {}
    logged: dict[int, int] = {}
    for batch in con.sql(f"SELECT {_READ} FROM ({src})").to_arrow_reader(CHUNK_ROWS):
        _accumulate(batch.to_pandas(), built, acc, logged)
    return _rows(r, keys, blocked, acc, logged)


def batch_tables(con, runs, sections: list[dict], manifests) -> list[pd.DataFrame]:
    """:func:`run_table` of each of ``runs`` (one batch of :func:`noisyfr.analysis.scan.batches`:
    the same logged columns) from one pass over all their logs
    (:func:`noisyfr.analysis.scan.batch_source`; ``manifests``: its
    :class:`~noisyfr.analysis.scan.BatchManifests`)."""
    from noisyfr.analysis import scan
    from noisyfr.analysis.detection import one_thread

    prepared = [_prepare(r, sections) for r in runs]
    acc: list[dict] = [{} for _ in runs]
    logged: list[dict] = [{} for _ in runs]
    files = [[r.files[e] for e in sorted(r.files)] for r in runs]
    src = scan.batch_source(con, runs, files, manifests)
    # one thread for torch's elementwise work: a few thousand rows a run gain nothing from its
    # OpenMP pool, which spins on a busy machine (the same numbers either way)
    try:
        with one_thread():
            for batch in con.sql(f"SELECT run_id, {_READ} FROM ({src})").to_arrow_reader(CHUNK_ROWS):
                df = batch.to_pandas()
                ids = df["run_id"].to_numpy(dtype=np.int64)
                order = np.argsort(ids, kind="stable")
                bounds = np.searchsorted(ids[order], np.arange(len(runs) + 1))
                for i in np.unique(ids):
                    part = df.iloc[order[bounds[i]:bounds[i + 1]]]
                    _accumulate(part, prepared[i][2], acc[i], logged[i])
    finally:
        con.unregister("batch_files")
    return [_rows(r, p[0], p[1], a, g) for r, p, a, g in zip(runs, prepared, acc, logged)]


def _add(acc: dict, key: tuple, total: float, noisy: float) -> None:
    a, b = acc.get(key, (0.0, 0.0))
    acc[key] = (a + float(total), b + float(noisy))


def _ratio(pair: tuple[float, float]) -> float:
    total, noisy = pair
    return noisy / total if total > 0 else math.nan


def loss_sections(runs) -> list[dict]:
    """The distinct loss settings of ``runs`` (by label, first seen order): every run is
    evaluated under each of them."""
    seen: dict[str, dict] = {}
    for r in runs:
        seen.setdefault(label(r.loss_settings), dict(r.loss_settings))
    return list(seen.values())


def table(runs, extra: list[dict] | None = None) -> pd.DataFrame:
    """:func:`run_table` for every run, under every loss setting of the runs plus ``extra``
    (loss sections; one without ``s`` takes each run's), one DuckDB connection: small runs many
    at a time (:func:`batch_tables` over :func:`noisyfr.analysis.scan.batches`), a large one
    alone."""
    from noisyfr.analysis import engine, scan

    sections = loss_sections(runs) + list(extra or [])
    frames = []
    con = engine.connect()
    manifests = scan.BatchManifests(con, "cf_manifests")
    try:
        for batch in scan.batches(runs):
            if len(batch) > 1:
                frames += batch_tables(con, batch, sections, manifests)
            else:
                frames.append(run_table(con, batch[0], sections, manifests.table(batch[0].manifest_path)))
    finally:
        con.close()
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))


#: Shares summarised by :func:`summary`, in order.
SHARES = ("noisy_share", "p_channel_share", "slope_channel_share", "unit_pull_share")


def summary(cf: pd.DataFrame) -> pd.DataFrame:
    """At each run's last logged epoch, per condition, trained loss (the geometry) and
    counterfactual loss: the runs (seeds), and for each share of :data:`SHARES` and for the
    difference ``noisy_share`` minus the trained loss's own (``vs_trained``, within each run:
    same seed, noise draw and epoch) the mean and the range over the runs (``*_min``,
    ``*_max``), with ``mean_p_clean``. Only available rows."""
    if cf.empty or not cf["available"].astype(bool).any():
        return pd.DataFrame()
    last = cf.groupby("run")["epoch"].transform("max")
    d = cf[(cf["epoch"] == last) & cf["available"].astype(bool)].copy()
    own = d[d["same_loss"].astype(bool)].set_index("run")["noisy_share"]
    d["vs_trained"] = d["noisy_share"] - d["run"].map(own)
    rows = []
    for (cond, loss, other), g in d.groupby(["condition", "loss", "counterfactual"], sort=True):
        row = {"condition": cond, "loss": loss, "counterfactual": other, "runs": len(g),
               "epoch": ",".join(str(int(e)) for e in sorted(set(g["epoch"])))}
        for c in (*SHARES, "vs_trained", "mean_p_clean"):
            v = pd.to_numeric(g[c], errors="coerce")
            row.update({c: v.mean(), f"{c}_min": v.min(), f"{c}_max": v.max()})
        rows.append(row)
    return pd.DataFrame(rows)


def _text(row, col: str) -> str:
    if not math.isfinite(row[col]):
        return "-"
    if row["runs"] < 2:
        return f"{row[col]:.4f}"
    return f"{row[col]:.4f} [{row[col + '_min']:.4f}, {row[col + '_max']:.4f}]"


def document(doc, t: dict) -> None:
    """The report's section on counterfactual weights (``tables/counterfactual.csv``)."""
    cf = t.get("counterfactual.csv", pd.DataFrame())
    doc.h(2, "Counterfactual weights: every loss on the same geometry")
    if cf.empty:
        doc.p("No angle log to read.")
        return
    s = summary(cf)
    if s.empty:
        notes = sorted(set(cf["note"].dropna().astype(str)) - {""})
        doc.p("Not available: " + ("; ".join(notes) or "no run logged lse_neg") + ".")
        return
    doc.p("Each run's logged geometry (its angles and the log-sum-exp of the non-target logits, "
          "`lse_neg`) weighted by every loss setting of the analysis: p_L = sigmoid(s T_L(theta) - "
          "lse_neg), pull = s (1 - p_L) dT_L/dcos with the loss's gradient mode. Held fixed: the "
          "geometry, the scale s and the run's non-target logits; a real run of another loss also "
          "shapes its own geometry, so these are not the shares it would reach (those are the "
          "paired differences above). `noisy share`: of the pull; `p channel`: with every slope at "
          "1 (the detached gradient); `slope channel`: with every p at 0 (the most the shape of "
          "dT/dcos can do); `vs trained`: noisy share minus the trained loss's own, within each run. "
          "At each run's last epoch: mean [min, max] over the runs (seeds); no seed variance enters "
          "a single run's value. A null where the clean p is near 0 (`mean p clean`) is saturated, "
          "not negative.")
    shown = pd.DataFrame({"condition": s["condition"], "geometry of": s["loss"],
                          "weighted as": s["counterfactual"], "runs": s["runs"],
                          **{c.replace("_", " ").replace(" share", ""): [_text(r, c) for _, r in s.iterrows()]
                             for c in (*SHARES, "vs_trained", "mean_p_clean")}})
    doc.table(shown, "tables/counterfactual.csv")
