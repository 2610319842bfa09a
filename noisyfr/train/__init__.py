"""Training: config loading/validation and the training loop with per-sample angle tracking.

``load_config(path_or_dict, overrides=()) -> dict`` and ``train(config, report=None) -> dict``;
see :mod:`noisyfr.train.config`, :mod:`noisyfr.train.trainer`, :mod:`noisyfr.train.angles` and
:mod:`noisyfr.train.checkpoint`, and docs/training.md.
"""
from __future__ import annotations

from noisyfr.lazy import lazy_getattr

_LAZY = {"load_config": "noisyfr.train.config", "train": "noisyfr.train.trainer"}

__all__ = [*_LAZY]

# Resolved on first use: importing a submodule (``noisyfr.train.config``) does not import torch.
__getattr__ = lazy_getattr(__name__, _LAZY)
