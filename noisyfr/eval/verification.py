"""Face verification metrics on pairs of embeddings, and embedding of verification sets.

Conventions
-----------
- Similarity is the cosine of the two embeddings; a pair is predicted "same" when its similarity
  is strictly greater than the threshold.
- Accuracy: ``sklearn.model_selection.StratifiedKFold(folds, shuffle=False)`` over the pairs (file
  order kept within each class). On the standard 6000-pair LFW / AgeDB / CFP orderings, where every
  contiguous tenth holds its share of same and different pairs, these are exactly the folds of
  ``KFold(folds, shuffle=False)`` (the insightface protocol); on a single LFW fold file (300 same
  pairs, then 300 different) plain KFold would hold out all-same or all-different folds and bias the
  accuracy below chance, stratification keeps each fold balanced. When a class has fewer than
  ``folds`` pairs, plain ``KFold(folds, shuffle=False)`` is used. For each fold the threshold is the
  one with the best accuracy on the other folds (candidates: the midpoints between consecutive
  distinct training similarities, plus one below the minimum and one above the maximum; ties go to
  the smallest threshold), and the accuracy is measured on the held-out fold.
  ``accuracy`` / ``accuracy_std`` are the mean / population std over folds, ``threshold`` the mean
  of the fold thresholds. ``thresholds="insightface"`` replaces the exact search by insightface's
  grid: "same" iff the squared distance of the unit embeddings ``2 - 2 cos`` is strictly below
  ``t``, ``t`` in ``0, 0.01, ..., 3.99``, the first (smallest) best ``t`` on the training folds;
  ``threshold`` then reports the mean of ``1 - t/2`` (on cosine similarity).
- TAR@FAR (over all pairs, no folds): from ``sklearn.metrics.roc_curve``, the largest true-accept
  rate whose false-accept rate is <= the target (no interpolation). With N different-identity
  pairs the FAR resolution is 1/N: with LFW's 300 negatives per fold file, FAR 1e-3 and 1e-4 are
  below resolution and both report the TAR at FAR 0 (threshold above every negative).
- AUC: ``sklearn.metrics.roc_auc_score``. AUC and TAR are NaN when only one class is present.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold, StratifiedKFold

from noisyfr.errors import NoisyFRError
from noisyfr.eval.embed import TransformedImages, check_batch_size, embed_dataset

#: result key -> false-accept-rate target
FAR_TARGETS = {"tar_at_far_1e-3": 1e-3, "tar_at_far_1e-4": 1e-4}
#: how the accuracy's threshold is chosen on the training folds (see the module docstring)
THRESHOLD_RULES = ("exact", "insightface")
#: insightface's threshold grid on the squared distance of unit embeddings
INSIGHTFACE_DISTANCES = np.arange(0, 4, 0.01)


def cosine_similarity(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [P, d] arrays (float64)."""
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-12)


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Threshold maximising the accuracy of ``score > t`` on these pairs; returns (t, accuracy).

    Candidates are the midpoints between consecutive distinct scores plus one value below the
    minimum and one above the maximum; ties go to the smallest threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    uniq = np.unique(scores)  # sorted
    cands = np.concatenate([[uniq[0] - 1.0], (uniq[:-1] + uniq[1:]) / 2.0, [uniq[-1] + 1.0]])
    # For candidate k (k = 0..U), the pairs predicted "same" are those with score > cands[k],
    # i.e. scores among uniq[k:]. Count positives/negatives at or below each unique value.
    pos_le = np.cumsum(np.bincount(np.searchsorted(uniq, scores[issame]), minlength=len(uniq)))
    neg_le = np.cumsum(np.bincount(np.searchsorted(uniq, scores[~issame]), minlength=len(uniq)))
    n_pos = int(issame.sum())
    pos_le = np.concatenate([[0], pos_le])  # positives with score <= cands[k]: predicted "different"
    neg_le = np.concatenate([[0], neg_le])
    correct = (n_pos - pos_le) + neg_le
    k = int(np.argmax(correct))  # first maximum = smallest threshold
    return float(cands[k]), float(correct[k] / len(scores))


def _check_pairs(emb1: Any, emb2: Any, issame: Any, folds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e1 = np.asarray(emb1, dtype=np.float64)
    e2 = np.asarray(emb2, dtype=np.float64)
    same = np.asarray(issame)
    if e1.ndim != 2 or e2.ndim != 2 or e1.shape != e2.shape:
        raise NoisyFRError(f"emb1/emb2: need two [P, d] arrays of the same shape, got "
                           f"{tuple(e1.shape)} and {tuple(e2.shape)}")
    if same.shape != (e1.shape[0],):
        raise NoisyFRError(f"issame: need shape ({e1.shape[0]},) to match the embeddings, "
                           f"got {tuple(same.shape)}")
    if same.dtype != bool:
        if not np.isin(same, (0, 1)).all():
            raise NoisyFRError("issame: values must be booleans or 0/1")
        same = same.astype(bool)
    if not np.isfinite(e1).all() or not np.isfinite(e2).all():
        raise NoisyFRError("emb1/emb2: embeddings contain NaN or infinite values")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise NoisyFRError(f"folds: must be an integer >= 2, got {folds!r}")
    if e1.shape[0] < folds:
        raise NoisyFRError(f"issame: {e1.shape[0]} pairs are fewer than folds={folds}")
    return e1, e2, same


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float:
    """Largest true-accept rate whose false-accept rate is <= ``far`` (ROC from sklearn)."""
    issame = np.asarray(issame, dtype=bool)
    if issame.all() or not issame.any():
        return math.nan
    fpr, tpr, _ = roc_curve(issame, scores, drop_intermediate=False)
    return float(tpr[fpr <= far].max())


def check_thresholds(rule: str) -> str:
    """``rule`` when it is one of :data:`THRESHOLD_RULES`, else NoisyFRError naming it."""
    if rule not in THRESHOLD_RULES:
        raise NoisyFRError(f"thresholds: expected one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")
    return rule


def insightface_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """insightface's threshold on these pairs: the first distance ``t`` of
    :data:`INSIGHTFACE_DISTANCES` maximising the accuracy of ``2 - 2 * score < t``; returns
    (t, accuracy)."""
    dist = 2.0 - 2.0 * np.asarray(scores, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    acc = ((dist[None, :] < INSIGHTFACE_DISTANCES[:, None]) == same[None, :]).mean(axis=1)
    k = int(np.argmax(acc))
    return float(INSIGHTFACE_DISTANCES[k]), float(acc[k])


def _fold_accuracy(scores: np.ndarray, same: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                   rule: str) -> tuple[float, float]:
    """(held-out accuracy, threshold on cosine similarity) of one fold under ``rule``."""
    if rule == "insightface":
        t, _ = insightface_threshold(scores[train_idx], same[train_idx])
        pred = (2.0 - 2.0 * scores[test_idx]) < t
        return float(np.mean(pred == same[test_idx])), 1.0 - t / 2.0
    t, _ = best_threshold(scores[train_idx], same[train_idx])
    return float(np.mean((scores[test_idx] > t) == same[test_idx])), t


def verify(emb1: Any, emb2: Any, issame: Any, folds: int = 10,
           thresholds: str = "exact") -> dict[str, float]:
    """Verification metrics of pairs (``emb1[i]``, ``emb2[i]``) labelled ``issame[i]``.

    Returns a dict with ``accuracy`` and ``accuracy_std`` (``folds``-fold cross-validated with
    class-stratified, order-keeping folds; threshold chosen on the other folds, by an exact search
    or, with ``thresholds="insightface"``, on insightface's grid), ``threshold`` (mean of the fold
    thresholds on cosine similarity), ``tar_at_far_1e-3``, ``tar_at_far_1e-4``, ``auc`` and
    ``num_pairs``. See the module docstring for the exact conventions.
    """
    check_thresholds(thresholds)
    e1, e2, same = _check_pairs(emb1, emb2, issame, folds)
    scores = cosine_similarity(e1, e2)
    accs, fold_thresholds = [], []
    n_pos = int(same.sum())
    if min(n_pos, len(same) - n_pos) >= folds:
        splits = StratifiedKFold(n_splits=int(folds), shuffle=False).split(scores, same)
    else:
        splits = KFold(n_splits=int(folds), shuffle=False).split(scores)
    for train_idx, test_idx in splits:
        acc, t = _fold_accuracy(scores, same, train_idx, test_idx, thresholds)
        accs.append(acc)
        fold_thresholds.append(t)
    both = bool(same.any() and not same.all())
    result = {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "threshold": float(np.mean(fold_thresholds)),
    }
    for key, far in FAR_TARGETS.items():
        result[key] = tar_at_far(scores, same, far)
    result["auc"] = float(roc_auc_score(same, scores)) if both else math.nan
    result["num_pairs"] = int(len(scores))
    return result


def noisy_detection_auc(theta_y: Any, is_noisy: Any) -> float:
    """ROC AUC of the target angle ``theta_y`` as a score for "this sample's label is noisy".

    Higher angle = more suspicious. NaN when only one class (all clean or all noisy) is present.
    """
    theta = np.asarray(theta_y, dtype=np.float64).ravel()
    noisy = np.asarray(is_noisy).ravel()
    if theta.shape != noisy.shape:
        raise NoisyFRError(f"is_noisy: length {noisy.shape[0]} does not match theta_y length "
                           f"{theta.shape[0]}")
    if not np.isfinite(theta).all():
        raise NoisyFRError("theta_y: contains NaN or infinite values")
    noisy = noisy.astype(bool)
    if noisy.all() or not noisy.any():
        return math.nan
    return float(roc_auc_score(noisy, theta))


def _as_is(x):
    return x


def embed_images(model: torch.nn.Module, vset, image_size: int = 112, center_crop: float = 1.0,
                 batch_size: int = 64, device: str | torch.device = "cpu",
                 num_workers: int = 0, flip: bool = True) -> np.ndarray:
    """Embeddings [vset.num_images, d] float32 of every image of a verification set.

    Each image is preprocessed with ``face_transform(image_size, center_crop)``; its embedding is
    ``model(x) + model(flip(x))`` (horizontal flip; ``model(x)`` alone with ``flip=False``),
    L2-normalised (:func:`noisyfr.eval.embed.embed_dataset`). A set of embeddings (``vectors``,
    a ``features:`` file) is fed to the model as it is: no transform, no flip. Runs in ``model.eval()`` under
    ``torch.no_grad()`` and restores the model's training mode afterwards. The model must already
    live on ``device`` (it is not moved).
    """
    from noisyfr.data.transforms import face_transform

    check_batch_size(batch_size)
    vectors = bool(getattr(vset, "vectors", False))
    want = getattr(model, "input_dim", None)
    if vectors and want is not None and want != getattr(vset, "dim", want):
        raise NoisyFRError(f"{vset.source}: embeddings have dimension {vset.dim}, the model takes "
                           f"{want}")
    images = TransformedImages(vset.load_image, vset.num_images,
                               _as_is if vectors else face_transform(image_size, center_crop))
    flip = flip and not vectors
    if len(images) == 0:
        raise NoisyFRError(f"{getattr(vset, 'name', 'verification set')}: has no images")
    emb, _ = embed_dataset(model, images, flip=flip, batch_size=batch_size, device=device,
                           num_workers=num_workers,
                           desc=f"embed {getattr(vset, 'name', '')}".rstrip())
    return emb


def evaluate(model: torch.nn.Module, vset, folds: int = 10, thresholds: str = "exact",
             **embed_kwargs) -> dict[str, Any]:
    """Embed ``vset`` with :func:`embed_images` (``embed_kwargs``) and :func:`verify` its pairs
    (``folds``, ``thresholds``).

    Returns verify's dict plus ``name`` (the set's name).
    """
    check_thresholds(thresholds)
    emb = embed_images(model, vset, **embed_kwargs)
    pairs = np.asarray(vset.pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.size == 0:
        raise NoisyFRError(f"{vset.name}: pairs must be a non-empty [P, 2] array")
    if pairs.min() < 0 or pairs.max() >= len(emb):
        raise NoisyFRError(f"{vset.name}: pair index out of range 0..{len(emb) - 1}")
    result = {"name": str(vset.name)}
    result.update(verify(emb[pairs[:, 0]], emb[pairs[:, 1]], vset.issame, folds=folds,
                         thresholds=thresholds))
    return result
