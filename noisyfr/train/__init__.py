"""Training: config loading/validation and the training loop with per-sample angle tracking.

``load_config(path_or_dict, overrides=()) -> dict`` and ``train(config, report=None) -> dict``;
see :mod:`noisyfr.train.config`, :mod:`noisyfr.train.trainer`, :mod:`noisyfr.train.angles` and
:mod:`noisyfr.train.checkpoint`, and docs/training.md.
"""
from noisyfr.train.config import load_config
from noisyfr.train.trainer import train

__all__ = ["load_config", "train"]
