"""The frozen model's own verification on the pairs of a pairs set's feature file.

Three accuracies, each labelled by how its threshold was set, each with a 95 % Wilson interval
over the pairs (binomial; the pairs of one LFW fold are not independent draws of identities, so
the interval is a lower bound on the uncertainty):

- ``fixed``: "same" when the Euclidean distance of the raw embeddings is below ``threshold``
  (dlib's published rule: 0.6, chosen by dlib on other data, so no pair here tuned it);
- ``best``: the best accuracy of any threshold on these very pairs (optimistic: the threshold
  is tuned on the pairs it is scored on);
- ``cv``: noisyfr.eval.verification.verify on cosine similarity, 10-fold stratified within the
  pairs (each fold's threshold chosen on the other nine).
"""
from __future__ import annotations

import numpy as np

from noisyfr.data.feature_store import FeatureTable
from noisyfr.errors import NoisyFRError


def wilson(correct: int, total: int) -> list[float]:
    """95 % Wilson score interval of ``correct / total``."""
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def pair_accuracy(table: FeatureTable, threshold: float = 0.6, folds: int = 10) -> dict:
    """Accuracies of the feature file's own pairs (module docstring); NoisyFRError without pairs."""
    from noisyfr.eval.verification import best_threshold, verify

    pairs = table.pairs
    if pairs is None or not len(pairs):
        raise NoisyFRError("feature file holds no pairs (not a pairs set's features)")
    a, b, same = table.embeddings[pairs[:, 0]], table.embeddings[pairs[:, 1]], pairs[:, 2].astype(bool)
    dist = np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=1)
    n = len(pairs)
    fixed = int(((dist < threshold) == same).sum())
    t_best, acc_best = best_threshold(-dist, same)  # "same" when -dist > t, i.e. dist < -t
    best = int(round(acc_best * n))
    cv = verify(a, b, same, folds=folds)
    return {"pairs": n, "same": int(same.sum()),
            "fixed": {"threshold": float(threshold), "accuracy": fixed / n, "interval": wilson(fixed, n)},
            "best": {"threshold": float(-t_best), "accuracy": best / n, "interval": wilson(best, n)},
            "cv": {"folds": int(folds), "accuracy": cv["accuracy"], "std_over_folds": cv["accuracy_std"],
                   "interval": wilson(int(round(cv["accuracy"] * n)), n)},
            "auc": cv["auc"], "misses_in_pairs": int(table.misses[np.unique(pairs[:, :2])].sum())}


def describe(result: dict) -> str:
    """One line per accuracy, each with its threshold rule and interval."""
    def pct(x):
        return f"{100 * x:.2f} %"

    def iv(r):
        return f"[{pct(r['interval'][0])}, {pct(r['interval'][1])}]"

    f, b, c = result["fixed"], result["best"], result["cv"]
    return (f"verification on its {result['pairs']} pairs ({result['misses_in_pairs']} of their images "
            f"missed by the detector), 95 % Wilson intervals:\n"
            f"  fixed threshold (Euclidean < {f['threshold']:g}): {pct(f['accuracy'])} {iv(f)}\n"
            f"  best threshold on these pairs (Euclidean < {b['threshold']:.4f}, optimistic): "
            f"{pct(b['accuracy'])} {iv(b)}\n"
            f"  {c['folds']}-fold within the pairs (cosine, threshold from the other folds): "
            f"{pct(c['accuracy'])} {iv(c)}; AUC {result['auc']:.4f}")
