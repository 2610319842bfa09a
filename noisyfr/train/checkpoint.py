"""Training checkpoints: one file per epoch plus ``last.pt``, loadable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only:

- ``config``: the resolved training config (dict);
- ``model``, ``head``: state dicts of the backbone and the margin head;
- ``optimizer``, ``scheduler`` (and ``scaler`` for fp16 AMP, else None): their state dicts;
- ``rng``: ``{"torch": ByteTensor, "cuda": [ByteTensor, ...]}``; numpy/python randomness is not
  used by the trainer (shuffling and augmentation are derived from (seed, epoch));
- ``epoch`` (completed epochs, from 1), ``step`` (optimiser steps so far);
- ``num_classes``, ``embedding_dim``; ``history``: the per-epoch metrics so far (list of dicts).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from noisyfr.io import atomic_path, load_checkpoint  # noqa: F401  (read side of this format)

REQUIRED_KEYS = ("config", "model", "head", "optimizer", "scheduler", "rng", "epoch", "step")


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """``output_dir/checkpoints``."""
    return Path(output_dir) / "checkpoints"


def save_checkpoint(state: dict[str, Any], output_dir: str | os.PathLike) -> Path:
    """Write ``checkpoints/epoch_<E>.pt`` and ``checkpoints/last.pt`` atomically; returns the first."""
    folder = checkpoint_dir(output_dir)
    path = folder / f"epoch_{int(state['epoch'])}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    with atomic_path(folder / "last.pt") as tmp:
        shutil.copyfile(path, tmp)
    return path


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Keep only the ``keep`` most recent ``epoch_<E>.pt`` files (0 keeps all)."""
    if keep <= 0:
        return
    files = sorted(checkpoint_dir(output_dir).glob("epoch_*.pt"),
                   key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """``checkpoints/last.pt`` when it exists, else None."""
    path = checkpoint_dir(output_dir) / "last.pt"
    return path if path.is_file() else None
