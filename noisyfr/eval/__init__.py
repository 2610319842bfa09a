"""Verification evaluation: metrics on embedding pairs, embedding of verification sets.

``verify(emb1, emb2, issame, folds=10)``, ``embed_images(model, vset, ...)``,
``evaluate(model, vset, ...)`` and ``noisy_detection_auc(theta_y, is_noisy)``; see
:mod:`noisyfr.eval.verification` for the conventions.
"""
from noisyfr.device import resolve_device
from noisyfr.eval.checkpoint import load_backbone
from noisyfr.eval.verification import (
    best_threshold,
    cosine_similarity,
    embed_images,
    evaluate,
    noisy_detection_auc,
    tar_at_far,
    verify,
)

__all__ = ["verify", "embed_images", "evaluate", "noisy_detection_auc", "cosine_similarity",
           "best_threshold", "tar_at_far", "load_backbone", "resolve_device"]
