"""The references beside a head trained on features: what the frozen model gives with no training.

A run on a dataset of features (``features:``, ``synthetic-features:``) trains a projection of a
frozen model's embeddings. Two references say what that training adds:

- ``reference_heldout_accuracy``: the class means of the raw features (each L2-normalised)
  under the run's own training labels, noisy where the noise reached them, over the run's own
  training rows, with no training; each held-out image is identified by its nearest class mean
  (cosine) and scored against its true identity. The same rows, labels and held-out images as
  the run's ``heldout_accuracy``: the two are paired.
- ``val/<name>/reference_accuracy``: the verification accuracy of each ``features:`` pairs set
  in ``data.val`` through the frozen model alone (its raw embeddings, cosine, the same protocol
  as the trained run's ``val/<name>/accuracy``).

Both are computed once, when the data are built, and reported with every epoch's metrics.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from noisyfr.errors import NoisyFRError


def vectors_of(dataset, rows) -> np.ndarray:
    """The raw vectors of ``rows`` of a NoisyDataset over features (outlier rows from their own
    index), L2-normalised, float64 [len(rows), D]."""
    if len(rows) == 0:
        return np.zeros((0, 0))
    x = torch.stack([dataset[int(i)][0] for i in rows]).double().numpy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def nearest_mean_accuracy(train_x: np.ndarray, train_labels: np.ndarray, held_x: np.ndarray,
                          held_true: np.ndarray, num_classes: int) -> float:
    """Fraction of the held-out rows whose nearest class mean (cosine; means of the unit training
    rows per given label; a class without a training row is never chosen) is their true class."""
    if len(held_x) == 0:
        return math.nan
    means = np.zeros((num_classes, train_x.shape[1]))
    np.add.at(means, np.asarray(train_labels, dtype=np.int64), train_x)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    cos = held_x @ (means / np.where(norms > 0, norms, 1.0)).T
    cos[:, norms[:, 0] == 0] = -np.inf
    return float(np.mean(cos.argmax(axis=1) == np.asarray(held_true, dtype=np.int64)))


def class_means_reference(dataset, trained, held) -> dict[str, float]:
    """``{"reference_heldout_accuracy": ...}`` of a run over features (see the module text);
    NaN without held-out images."""
    trained, held = np.asarray(trained, dtype=np.int64), np.asarray(held, dtype=np.int64)
    if len(held) == 0:
        return {"reference_heldout_accuracy": math.nan}
    acc = nearest_mean_accuracy(vectors_of(dataset, trained), np.asarray(dataset.labels)[trained],
                                vectors_of(dataset, held), np.asarray(dataset.orig_labels)[held],
                                int(dataset.num_classes))
    return {"reference_heldout_accuracy": acc}


def check_dims(cfg: dict, dataset, vsets) -> int:
    """The dimension of a features run's vectors: the dataset's, which ``model.input_dim`` (when
    given) and every ``features:`` verification set must match (NoisyFRError naming both). Sets
    ``cfg['model']['input_dim']`` to it."""
    dim = int(dataset.index.dim)
    declared = cfg["model"]["input_dim"]
    if declared is not None and int(declared) != dim:
        raise NoisyFRError(f"data.train {cfg['data']['train']}: embeddings have dimension {dim}, "
                           f"config key 'model.input_dim' says {declared}")
    for name, vset in vsets:
        if not getattr(vset, "vectors", False):
            raise NoisyFRError(f"data.val {name}: a set of images, the run trains on features "
                               f"(use the features: file of its pairs)")
        if vset.dim != dim:
            raise NoisyFRError(f"data.val {vset.source}: embeddings have dimension {vset.dim}, "
                               f"data.train {cfg['data']['train']} has {dim}")
    cfg["model"]["input_dim"] = dim
    return dim


def reference_verification(vsets, batch_size: int = 256) -> dict[str, float]:
    """``val/<name>/reference_accuracy`` of each verification set through the frozen model alone
    (its raw embeddings), and their mean ``val_reference_accuracy``."""
    from noisyfr.eval.suite import evaluate_sets

    if not vsets:
        return {}
    results = evaluate_sets(torch.nn.Identity(), [v for _, v in vsets], batch_size=batch_size)
    out = {f"val/{name}/reference_accuracy": float(r["accuracy"]) for (name, _), r in zip(vsets, results)}
    out["val_reference_accuracy"] = float(np.mean(list(out.values())))
    return out
