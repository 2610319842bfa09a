"""Per-sample noise scores from a run's angle logs, cleaning rules, and their score against the
truth.

Every score is larger for a more suspicious sample:

- ``theta``: theta_y at the chosen epoch (degrees), the angle to the labelled class centre;
- ``margin``: theta_y - theta_nearest at the chosen epoch (degrees): positive when another class's
  centre is nearer than the labelled one;
- ``aum``: the margin averaged over the logged epochs up to the chosen one (the area under the
  margin of Pleiss et al. 2020, in angles: a sample the model never fits keeps a high value);
- ``subcentre``: the angle to the labelled class's dominant sub-centre (Sub-center ArcFace's rule:
  the paper drops samples more than 75 degrees from it); theta_y for single-centre losses;
- ``weight``: the loss's own per-sample weight ``|dL/dcos theta|`` at the chosen epoch.

Two control scores need no angle: ``truth`` (1 for a sample the manifest records as noisy, else
0: a perfect score) and ``random`` (uniform, seeded: precision equals the noise rate).

The epoch is chosen without ground truth (:func:`choose_epoch`): the last logged, or the one of
the best held-out accuracy. The scores are one streaming DuckDB pass over the run's logs
(:mod:`noisyfr.analysis.engine`), grouped by sample.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from noisyfr.analysis import engine
from noisyfr.analysis.rules import REPORT_RULES, truth_from_counts  # noqa: F401 (part of this module's API)
from noisyfr.cleaning.names import ANGLE_SCORES, DEG_RANGE, EPOCH_RULES, SCORES  # noqa: F401 (re-exported)
from noisyfr.errors import NoisyFRError
from noisyfr.noise.spec import NOISE_TYPES


def check_score(name: str) -> str:
    """``name`` if it is a known score, else a one-line NoisyFRError listing them."""
    if name not in SCORES:
        raise NoisyFRError(f"--score {name!r}: unknown score; choose from {', '.join(SCORES)}")
    return name


def choose_epoch(run, rule: str = "last") -> tuple[int, str]:
    """``(epoch, rule that applied)``: the last logged epoch, or with ``heldout`` the logged
    epoch of the best held-out accuracy (:func:`noisyfr.analysis.seeds.select_epoch`; the last
    where no held-out accuracy was recorded). Never chosen with the noise labels."""
    if rule not in EPOCH_RULES:
        raise NoisyFRError(f"--epoch {rule!r}: choose from {', '.join(EPOCH_RULES)}")
    epochs = sorted(run.files)
    if rule == "last":
        return epochs[-1], "last"
    from noisyfr.analysis.seeds import select_epoch

    return select_epoch(run.metrics, epochs)


def run_scores(run, epoch: int, seed: int = 0, con=None) -> pd.DataFrame:
    """One row per sample logged at ``epoch`` (sorted by sample_index): ``sample_index``,
    ``label``, ``nearest_label``, ``orig_label``, ``noise``, ``is_noisy`` (from the manifest;
    every sample clean without one) and every score of :data:`SCORES` (``truth`` is NaN without a
    manifest). ``run``: a :func:`noisyfr.analysis.load.scan_run` result."""
    files = [f for e, f in sorted(run.files.items()) if e <= epoch]
    if epoch not in run.files:
        raise NoisyFRError(f"{run.path / 'angles'}: no angle log of epoch {epoch}")
    own = con is None
    con = con or engine.connect()
    try:
        table = None
        if run.manifest_path is not None:
            table = "scores_manifest"
            engine.manifest_table(con, run.manifest_path, table)
        src = engine.run_source(files, run.columns, table)
        engine.check_source(con, src, files, str(run.path / "angles"), run.manifest_path)
        at = f"FILTER (WHERE epoch = {int(epoch)})"
        df = _sql_df(con, files, f"""
            SELECT sample_index,
              max(label) {at} AS label, max(nearest_label) {at} AS nearest_label,
              max(orig_label) {at} AS orig_label, max(noise_code) {at} AS noise_code,
              max(degrees(theta_y)) {at} AS theta,
              max(degrees(theta_y - theta_nearest)) {at} AS margin,
              avg(degrees(theta_y - theta_nearest)) FILTER (WHERE isfinite(theta_nearest)) AS aum,
              max(degrees(theta_dominant)) {at} AS subcentre,
              max(weight) {at} AS weight
            FROM ({src}) GROUP BY sample_index
            HAVING count(*) {at} > 0 ORDER BY sample_index""")
    finally:
        if own:
            con.close()
    names = np.array(NOISE_TYPES, dtype=object)
    df["noise"] = names[df.pop("noise_code").to_numpy(dtype=np.int64)]
    df["is_noisy"] = df["noise"] != "clean"
    df["truth"] = df["is_noisy"].astype(float) if run.manifest_path is not None else np.nan
    df["random"] = np.random.default_rng([int(seed), 0x434C]).random(len(df))
    for c in ("sample_index", "label", "nearest_label", "orig_label"):
        df[c] = df[c].astype(np.int64)
    return df


def _sql_df(con, files, sql: str) -> pd.DataFrame:
    """``con.sql(sql).df()``; a DuckDB failure is one line naming the log it could not read."""
    import duckdb

    try:
        return con.sql(sql).df()
    except duckdb.Error as exc:
        raise engine.locate_scan_error(con, files, exc) from None


def flag(scores: pd.DataFrame, score: str, max_deg: float | None = None, fraction: float | None = None,
         estimate: bool = False, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Samples to remove by one rule, and the rule: ``(flags, {"rule", "threshold",
    "fraction"})``. Exactly one of ``max_deg`` (flag score > it: angle scores, in
    :data:`DEG_RANGE`), ``fraction`` (flag the highest-scored fraction, in (0, 1)) and
    ``estimate`` (the fraction is the weight of the upper component of a two-component Gaussian
    mixture fitted to the scores, :func:`noisyfr.analysis.stats.bimodal_noise_rate`; 0 when they
    are not bimodal); for ``cleanlab`` none of them gives cleanlab's own verdict. One-line
    NoisyFRError naming the option otherwise."""
    check_score(score)
    given = [name for name, v in (("--max-deg", max_deg), ("--fraction", fraction),
                                  ("--estimate", estimate or None)) if v is not None]
    if score == "cleanlab" and not given:  # confident learning's own verdict
        return scores["cleanlab_issue"].to_numpy(dtype=bool), {"rule": "cleanlab", "threshold": float("nan")}
    if len(given) != 1:
        raise NoisyFRError("give exactly one threshold: --max-deg DEG, --fraction F or --estimate"
                           + (f" (got {', '.join(given)})" if given else ""))
    s = scores[score].to_numpy(dtype=float)
    if np.isnan(s).all():
        raise NoisyFRError(f"--score {score}: not available for this run (no manifest: the truth is unknown)")
    if max_deg is not None:
        if score not in DEG_RANGE:
            raise NoisyFRError(f"--max-deg: applies to the angle scores ({', '.join(DEG_RANGE)}); "
                               f"use --fraction or --estimate for {score}")
        lo, hi = DEG_RANGE[score]
        if not (isinstance(max_deg, (int, float)) and math.isfinite(max_deg) and lo < max_deg < hi):
            raise NoisyFRError(f"--max-deg {max_deg}: out of range for {score}, must be in ({lo:g}, {hi:g})")
        return np.nan_to_num(s, nan=-np.inf) > max_deg, {"rule": "max_deg", "threshold": float(max_deg)}
    if estimate:
        from noisyfr.analysis.stats import bimodal_noise_rate

        fraction = float(bimodal_noise_rate(s[np.isfinite(s)], seed=seed)["estimate"])
        rule = "estimate"
    else:
        if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction < 1):
            raise NoisyFRError(f"--fraction {fraction}: must be in (0, 1)")
        rule = "fraction"
    k = int(round(fraction * len(s)))
    order = np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")
    flags = np.zeros(len(s), bool)
    flags[order[:k]] = True
    threshold = float(s[order[k - 1]]) if k else float("inf")
    return flags, {"rule": rule, "threshold": threshold, "fraction": float(fraction)}


def truth_table(scores: pd.DataFrame, removed: np.ndarray, relabelled: np.ndarray | None = None,
                new_labels: np.ndarray | None = None) -> pd.DataFrame:
    """The flags scored against the manifest's truth, per noise type and over all (``all``):
    ``n`` (samples of the type), ``flagged``, ``recall`` (flagged / n; for ``clean`` the clean
    samples lost), and over all: ``precision`` (noisy among flagged), ``recall``, ``f1``,
    ``noise_left`` (noisy among the kept: a relabelled sample counts as kept, noisy when its new
    label is not its true one), ``clean_lost`` (clean samples removed / clean samples)."""
    relabelled = np.zeros(len(scores), bool) if relabelled is None else relabelled
    flagged = removed | relabelled
    noise = scores["noise"].to_numpy(dtype=object)
    noisy = noise != "clean"
    rows = []
    for kind in [t for t in NOISE_TYPES if (noise == t).any()]:
        sel = noise == kind
        rows.append({"noise": kind, "n": int(sel.sum()), "flagged": int((flagged & sel).sum()),
                     "recall": float((flagged & sel).sum() / sel.sum())})
    kept = ~removed
    label_after = scores["label"].to_numpy() if new_labels is None else new_labels
    # a relabelled sample is noisy when its new label is not its true one; the rest keep their type
    wrong_after = np.where(relabelled, label_after != scores["orig_label"].to_numpy(), noisy)
    n_flag = int(flagged.sum())
    precision = float((flagged & noisy).sum() / n_flag) if n_flag else float("nan")
    recall = float((flagged & noisy).sum() / noisy.sum()) if noisy.any() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    rows.append({"noise": "all", "n": len(scores), "flagged": n_flag, "recall": recall,
                 "precision": precision, "f1": f1,
                 "noise_left": float(wrong_after[kept].mean()) if kept.any() else float("nan"),
                 "clean_lost": float((removed & ~noisy).sum() / (~noisy).sum()) if (~noisy).any() else float("nan")})
    return pd.DataFrame(rows)


#: Cross-validation folds of the cleanlab reference.
CLEANLAB_FOLDS = 5


def cleanlab_scores(run, table: pd.DataFrame, epoch: int, seed: int = 0) -> pd.DataFrame:
    """The reference rule of confident learning, from the ``cleanlab`` package used as it is
    (the optional extra ``noisyfr[clean]``): out-of-sample class probabilities of every scored
    sample from a logistic regression on the run's embeddings at ``epoch`` (its checkpoint; the
    backbone as trained, flip-averaged, unit-normalised), cross-validated over
    :data:`CLEANLAB_FOLDS` stratified folds, fed to ``cleanlab.filter.find_label_issues``.
    Adds ``cleanlab`` (1 - cleanlab's label quality: larger is more suspicious) and
    ``cleanlab_issue`` (cleanlab's own verdict) to ``table``."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise NoisyFRError("--score cleanlab: the cleanlab package is not installed "
                           "(pip install 'noisyfr[clean]')") from None
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from noisyfr.data import open_index
    from noisyfr.data.transforms import face_transform
    from noisyfr.dotted import get_dotted
    from noisyfr.eval.checkpoint import load_backbone
    from noisyfr.eval.embed import embed_dataset
    from noisyfr.noise import NoisyDataset

    ckpt = run.path / "checkpoints" / f"epoch_{epoch}.pt"
    if not ckpt.is_file():
        ckpt = run.path / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise NoisyFRError(f"{run.path / 'checkpoints'}: no checkpoint of epoch {epoch} (or last.pt) "
                           "to embed for --score cleanlab")
    model, saved = load_backbone(ckpt)
    size = int(get_dotted(saved["config"], "data.image_size") or 112)
    crop = float(get_dotted(saved["config"], "data.center_crop") or 1.0)
    index = open_index(str(get_dotted(run.config, "data.train")))
    data = (NoisyDataset(index, manifest=str(run.manifest_path), transform=face_transform(size, crop))
            if run.manifest_path is not None else NoisyDataset(index, transform=face_transform(size, crop)))
    rows = table["sample_index"].to_numpy(dtype=np.int64)

    class _Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return data[int(rows[i])][0]

    feats, _ = embed_dataset(model, _Images(), desc="embed for cleanlab")
    classes, y = np.unique(table["label"].to_numpy(dtype=np.int64), return_inverse=True)
    folds = int(min(CLEANLAB_FOLDS, np.bincount(y).min()))
    if folds < 2:
        raise NoisyFRError("--score cleanlab: a class has a single scored sample; cross-validation "
                           "needs two per class")
    probs = cross_val_predict(LogisticRegression(max_iter=2000), feats, y, method="predict_proba",
                              cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    out = table.copy()
    out["cleanlab"] = 1.0 - get_label_quality_scores(y, probs)
    out["cleanlab_issue"] = find_label_issues(y, probs)
    return out
