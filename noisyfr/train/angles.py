"""Per-sample angle tracking from the training forward/backward pass (no extra forward).

For every sample of a batch, from the head's cosine matrix ``cos`` [B, C] (before the margin):

- ``theta_y``: ``arccos(cos[i, label_i])``, the angle to the labelled class centre;
- ``theta_nearest`` / ``nearest_label``: the smallest angle to any *other* centre and its class;
- ``theta_orig``: the angle to the original (true) label's centre from the manifest; equal to
  ``theta_y`` for clean samples, NaN when the true identity is outside the label set (open set,
  ``orig_label == -1``);
- ``weight``: ``|dL_i / d cos_{i, y}|``, the per-sample gradient magnitude on the target cosine
  (the mean-loss gradient times the batch size). For losses whose logits do not go through ``cos``
  (the plain ``softmax`` loss) it is ``|dL_i / d z_y|`` on the target logit instead.

All angles are in radians. Rows are kept on the training device during the epoch (no host sync per
step) and written once per epoch to ``angles/epoch_<E>.parquet`` (E from 1).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisyfr.io import atomic_path

COLUMNS = ("sample_index", "epoch", "label", "theta_y", "theta_nearest", "nearest_label",
           "theta_orig", "weight")


def batch_angles(cos: torch.Tensor, labels: torch.Tensor,
                 orig_labels: torch.Tensor) -> torch.Tensor:
    """Angles of one batch as a float tensor [B, 4]: theta_y, theta_nearest, nearest_label, theta_orig.

    ``cos`` [B, C] (detached or not), ``labels`` and ``orig_labels`` int64 [B]; an ``orig_label``
    outside ``0..C-1`` (e.g. -1 for open-set noise) gives ``theta_orig = NaN``.
    """
    cos = cos.detach().float().clamp(-1.0, 1.0)
    b, c = cos.shape
    rows = torch.arange(b, device=cos.device)
    cos_y = cos[rows, labels]
    if c > 1:
        top_val, top_idx = cos.topk(2, dim=1)
        first_is_label = top_idx[:, 0] == labels
        near_val = torch.where(first_is_label, top_val[:, 1], top_val[:, 0])
        near_idx = torch.where(first_is_label, top_idx[:, 1], top_idx[:, 0])
    else:
        near_val = torch.full_like(cos_y, float("nan"))
        near_idx = torch.full_like(labels, -1)
    valid = (orig_labels >= 0) & (orig_labels < c)
    cos_o = cos[rows, orig_labels.clamp(0, c - 1)]
    theta_o = torch.where(valid, torch.arccos(cos_o), torch.full_like(cos_o, float("nan")))
    return torch.stack([torch.arccos(cos_y), torch.arccos(near_val), near_idx.float(), theta_o], 1)


def target_grad(grad: torch.Tensor | None, labels: torch.Tensor, batch_size: int,
                scale: float = 1.0) -> torch.Tensor:
    """Per-sample ``|dL_i/dx_{i,y}|`` from the gradient of the batch-mean loss w.r.t. x [B, C]."""
    if grad is None:
        return torch.full(labels.shape, float("nan"), device=labels.device)
    rows = torch.arange(grad.shape[0], device=grad.device)
    return (grad[rows, labels].float() * (batch_size / scale)).abs()


class AngleTracker:
    """Collects per-sample angle rows over one epoch and writes them as Parquet."""

    def __init__(self) -> None:
        self._index: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._angles: list[torch.Tensor] = []
        self._weights: list[torch.Tensor] = []

    def add(self, sample_index: torch.Tensor, labels: torch.Tensor, angles: torch.Tensor,
            weight: torch.Tensor) -> None:
        """Add a batch: ``angles`` from :func:`batch_angles`, ``weight`` from :func:`target_grad`."""
        self._index.append(sample_index.detach())
        self._labels.append(labels.detach())
        self._angles.append(angles.detach())
        self._weights.append(weight.detach().float())

    def __len__(self) -> int:
        return sum(len(i) for i in self._index)

    def arrays(self) -> dict[str, np.ndarray]:
        """The collected rows as numpy arrays (one host transfer per column)."""
        if not self._index:
            return {"sample_index": np.zeros(0, np.int64), "label": np.zeros(0, np.int64),
                    "angles": np.zeros((0, 4), np.float32), "weight": np.zeros(0, np.float32)}
        return {
            "sample_index": torch.cat(self._index).cpu().numpy().astype(np.int64),
            "label": torch.cat(self._labels).cpu().numpy().astype(np.int64),
            "angles": torch.cat(self._angles).cpu().numpy().astype(np.float32),
            "weight": torch.cat(self._weights).cpu().numpy().astype(np.float32),
        }


def rows_frame(arrays: dict[str, np.ndarray], epoch: int) -> pd.DataFrame:
    """Build the epoch's angle table, one row per sample (first occurrence kept), sorted by index."""
    idx = arrays["sample_index"]
    _, first = np.unique(idx, return_index=True)  # sorted unique sample indices
    ang = arrays["angles"][first]
    near = ang[:, 2]
    near_label = np.where(np.isfinite(near), near, -1).astype(np.int64)
    return pd.DataFrame({
        "sample_index": idx[first],
        "epoch": np.full(len(first), epoch, dtype=np.int64),
        "label": arrays["label"][first],
        "theta_y": ang[:, 0],
        "theta_nearest": ang[:, 1],
        "nearest_label": near_label,
        "theta_orig": ang[:, 3],
        "weight": arrays["weight"][first],
    }, columns=list(COLUMNS))


def write_angles(frame: pd.DataFrame, output_dir: str | Path, epoch: int) -> Path:
    """Write ``output_dir/angles/epoch_<epoch>.parquet`` atomically; returns the path."""
    path = Path(output_dir) / "angles" / f"epoch_{epoch}.parquet"
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def angle_summary(frame: pd.DataFrame, noisy: np.ndarray | None) -> dict[str, float]:
    """``theta_clean_mean``/``theta_noisy_mean`` (radians) and ``noisy_auc`` for one epoch.

    ``noisy``: bool array indexed by sample_index (manifest ``noise != "clean"``), or None when
    the run has no manifest (everything is clean; the AUC is NaN).
    """
    theta = frame["theta_y"].to_numpy(np.float64)
    if noisy is None:
        flags = np.zeros(len(frame), dtype=bool)
    else:
        flags = np.asarray(noisy, dtype=bool)[frame["sample_index"].to_numpy()]
    out = {
        "theta_clean_mean": float(theta[~flags].mean()) if (~flags).any() else math.nan,
        "theta_noisy_mean": float(theta[flags].mean()) if flags.any() else math.nan,
        "noisy_auc": math.nan,
    }
    if flags.any() and (~flags).any():
        from noisyfr.eval import noisy_detection_auc

        out["noisy_auc"] = float(noisy_detection_auc(theta, flags))
    return out
