"""Evaluation: verification metrics, the .bin suite, IJB-B/C, embeddings and backbone loading.

``verify(emb1, emb2, issame, folds=10)``, ``embed_images(model, vset, ...)``,
``evaluate(model, vset, ...)`` and ``noisy_detection_auc(theta_y, is_noisy)`` (see
:mod:`noisyfr.eval.verification`); ``evaluate_sets`` (:mod:`noisyfr.eval.suite`, shared by
``noisyfr eval --val`` and the trainer); ``read_ijb_meta`` / ``evaluate_ijb``
(:mod:`noisyfr.eval.ijb_meta`, :mod:`noisyfr.eval.ijb`); ``align_face``
(:mod:`noisyfr.eval.align`); ``load_backbone`` for checkpoints and bare state dicts.
"""
from __future__ import annotations

from noisyfr.lazy import lazy_getattr

# Resolved on first use, so that ``noisyfr eval --help`` (noisyfr.eval.cli) needs no torch.
_LAZY = {"resolve_device": "noisyfr.device", "load_backbone": "noisyfr.eval.checkpoint",
         "evaluate_sets": "noisyfr.eval.suite",
         **{name: "noisyfr.eval.verification" for name in ("best_threshold", "cosine_similarity", "embed_images",
                                                          "evaluate", "noisy_detection_auc", "tar_at_far", "verify")}}

__all__ = ["verify", "embed_images", "evaluate", "evaluate_sets", "noisy_detection_auc",
           "cosine_similarity", "best_threshold", "tar_at_far", "load_backbone", "resolve_device"]

__getattr__ = lazy_getattr(__name__, _LAZY)
