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
  ``folds`` pairs, plain ``KFold(folds, shuffle=False)`` is used. For each fold the threshold is the one with the best accuracy on the other folds (candidates: the midpoints
  between consecutive distinct training similarities, plus one below the minimum and one above the
  maximum; ties go to the smallest threshold), and the accuracy is measured on the held-out fold.
  ``accuracy`` / ``accuracy_std`` are the mean / population std over folds, ``threshold`` the mean
  of the fold thresholds.
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
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from noisyfr.errors import NoisyFRError

#: result key -> false-accept-rate target
FAR_TARGETS = {"tar_at_far_1e-3": 1e-3, "tar_at_far_1e-4": 1e-4}


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
    n_pos, n_neg = int(issame.sum()), int((~issame).sum())
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


def verify(emb1: Any, emb2: Any, issame: Any, folds: int = 10) -> dict[str, float]:
    """Verification metrics of pairs (``emb1[i]``, ``emb2[i]``) labelled ``issame[i]``.

    Returns a dict with ``accuracy`` and ``accuracy_std`` (``folds``-fold cross-validated with
    class-stratified, order-keeping folds; threshold chosen on the other folds), ``threshold`` (mean of the fold thresholds on cosine
    similarity), ``tar_at_far_1e-3``, ``tar_at_far_1e-4``, ``auc`` and ``num_pairs``. See the
    module docstring for the exact conventions.
    """
    e1, e2, same = _check_pairs(emb1, emb2, issame, folds)
    scores = cosine_similarity(e1, e2)
    accs, thresholds = [], []
    n_pos = int(same.sum())
    if min(n_pos, len(same) - n_pos) >= folds:
        splits = StratifiedKFold(n_splits=int(folds), shuffle=False).split(scores, same)
    else:
        splits = KFold(n_splits=int(folds), shuffle=False).split(scores)
    for train_idx, test_idx in splits:
        t, _ = best_threshold(scores[train_idx], same[train_idx])
        accs.append(float(np.mean((scores[test_idx] > t) == same[test_idx])))
        thresholds.append(t)
    both = bool(same.any() and not same.all())
    result = {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "threshold": float(np.mean(thresholds)),
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


class _ImageSet(Dataset):
    def __init__(self, vset, transform):
        self.vset = vset
        self.transform = transform

    def __len__(self) -> int:
        return int(self.vset.num_images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.vset.load_image(i))


def embed_images(model: torch.nn.Module, vset, image_size: int = 112, center_crop: float = 1.0,
                 batch_size: int = 64, device: str | torch.device = "cpu",
                 num_workers: int = 0) -> np.ndarray:
    """Embeddings [vset.num_images, d] float32 of every image of a verification set.

    Each image is preprocessed with ``face_transform(image_size, center_crop)``; its embedding is
    ``model(x) + model(flip(x))`` (horizontal flip), L2-normalised. Runs in ``model.eval()`` under
    ``torch.no_grad()`` and restores the model's training mode afterwards. The model must already
    live on ``device`` (it is not moved).
    """
    from noisyfr.data.transforms import face_transform

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NoisyFRError(f"batch_size: must be a positive integer, got {batch_size!r}")
    device = torch.device(device)
    loader = DataLoader(_ImageSet(vset, face_transform(image_size, center_crop)),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for x in tqdm(loader, desc=f"embed {getattr(vset, 'name', '')}".rstrip(),
                          unit="batch", disable=None, leave=False):
                x = x.to(device, non_blocking=True)
                emb = model(x) + model(torch.flip(x, dims=[3]))
                emb = torch.nn.functional.normalize(emb.float(), dim=1)
                chunks.append(emb.cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise NoisyFRError(f"{getattr(vset, 'name', 'verification set')}: has no images")
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def evaluate(model: torch.nn.Module, vset, folds: int = 10, **embed_kwargs) -> dict[str, Any]:
    """Embed ``vset`` with :func:`embed_images` (``embed_kwargs``) and :func:`verify` its pairs.

    Returns verify's dict plus ``name`` (the set's name).
    """
    emb = embed_images(model, vset, **embed_kwargs)
    pairs = np.asarray(vset.pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.size == 0:
        raise NoisyFRError(f"{vset.name}: pairs must be a non-empty [P, 2] array")
    if pairs.min() < 0 or pairs.max() >= len(emb):
        raise NoisyFRError(f"{vset.name}: pair index out of range 0..{len(emb) - 1}")
    result = {"name": str(vset.name)}
    result.update(verify(emb[pairs[:, 0]], emb[pairs[:, 1]], vset.issame, folds=folds))
    return result
