"""Training checkpoints: one file per epoch plus ``last.pt``, loadable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only:

- ``config``: the resolved training config (dict);
- ``model``, ``head``: state dicts of the backbone and the margin head;
- ``optimizer``, ``scheduler`` (and ``scaler`` for fp16 AMP, else None): their state dicts;
- ``rng``: ``{"torch": ByteTensor, "cuda": [ByteTensor, ...]}``; numpy/python randomness is not
  used by the trainer (shuffling and augmentation are derived from (seed, epoch));
- ``epoch`` (completed epochs, from 1), ``step`` (optimiser steps so far);
- ``num_classes``, ``embedding_dim``; ``history``: the per-epoch metrics so far (list of dicts).

``checkpoints/interrupted.pt`` is written when a signal or a stop request stops a run mid-epoch:
the same keys (``epoch`` = the epochs completed before it) plus ``partial``: the interrupted
epoch, the number of its batches done, its angle rows so far (tensors), its running loss /
correct / seen sums, the global torch (and CUDA) RNG states at that step and a Partial FC head's
sampling generator state (``head_rng``, None otherwise). A run of several processes keeps the
per-process entries in ``partial["ranks"]`` (one dict per rank, in rank order), next to ``epoch``
and ``batches``. It is removed once that epoch's own checkpoint is written.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from noisyfr.io import atomic_path, load_checkpoint  # noqa: F401  (read side of this format)

INTERRUPTED = "interrupted.pt"
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


def save_interrupted(state: dict[str, Any], output_dir: str | os.PathLike) -> Path:
    """Write ``checkpoints/interrupted.pt`` atomically (a mid-epoch state with ``partial``)."""
    path = checkpoint_dir(output_dir) / INTERRUPTED
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _epoch_number(path: Path) -> int | None:
    tail = path.stem.split("_", 1)[-1]
    return int(tail) if path.stem.startswith("epoch_") and tail.isdigit() else None


def epoch_files(folder: Path, pattern: str) -> dict[int, Path]:
    """``{E: path}`` of the files ``pattern`` (``epoch_*.pt``, ``epoch_*.parquet``) in ``folder``."""
    out = {}
    for p in folder.glob(pattern):
        e = _epoch_number(p)
        if e is not None:
            out[e] = p
    return out


def resume_candidates(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints a resume may start from, best first: ``interrupted.pt``, ``last.pt``, then
    ``epoch_<E>.pt`` newest first (nothing is loaded here; the trainer skips an unreadable one,
    and an ``interrupted.pt`` whose epoch already has its own checkpoint)."""
    folder = checkpoint_dir(output_dir)
    epochs = epoch_files(folder, "epoch_*.pt")
    out = []
    interrupted = folder / INTERRUPTED
    if _own_file(interrupted):
        out.append(interrupted)
    last = folder / "last.pt"
    if _own_file(last):
        out.append(last)
    return out + [epochs[e] for e in sorted(epochs, reverse=True) if _own_file(epochs[e])]


def _own_file(path: Path) -> bool:
    """A regular file, not a link (a link or FIFO planted in a shared run directory is never
    read as the run's checkpoint: a resume neither follows it nor blocks on it)."""
    return path.is_file() and not path.is_symlink()


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The first of :func:`resume_candidates` (``interrupted.pt``, ``last.pt`` or the newest
    ``epoch_<E>.pt``), or None when the run directory has no checkpoint."""
    found = resume_candidates(output_dir)
    return found[0] if found else None
