"""Watching a training run while it works: TensorBoard event files, ``train.log`` and one line per
epoch with the elapsed time and an ETA.

``tensorboard --logdir RUN_DIR`` (or a sweep directory: every trial's ``tb/`` folder) shows

- per step (every ``track.log_every`` steps): ``train/loss``, ``train/lr``, ``train/img_per_s``;
- per epoch: ``epoch/*`` (loss, train accuracy, img/s), ``health/*`` (clean_true_accuracy,
  noisy_fit_given, noisy_fit_true, noisy_auc, median theta_y of clean and noisy samples in
  degrees), ``val/*`` (verification accuracies);
- per epoch, histograms ``theta_y/clean`` and ``theta_y/noisy`` (degrees): the angle
  distributions as they move.

Only rank 0 writes; the other ranks get a monitor that does nothing.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

HEALTH_SCALARS = ("clean_true_accuracy", "noisy_fit_given", "noisy_fit_true", "noisy_auc")


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def epoch_line(m: Mapping[str, Any], epochs: int) -> str:
    """The one-line summary of an epoch's metrics."""
    parts = [f"epoch {m['epoch']}/{epochs}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.4g}",
             f"{m['img_per_s']:.0f} img/s"]
    for key, label, fmt in (("val_accuracy", "val", ".4f"), ("clean_true_accuracy", "clean acc", ".3f"),
                            ("noisy_auc", "noisy AUC", ".3f"), ("noisy_fit_given", "noisy fit", ".3f")):
        if math.isfinite(m.get(key, math.nan)):
            parts.append(f"{label} {m[key]:{fmt}}")
    return "  ".join(parts)


class Monitor:
    """The live outputs of one run (rank 0): ``tb/`` event files and ``train.log`` in ``out_dir``."""

    def __init__(self, out_dir: Path, epochs: int, start_epoch: int, log_every: int,
                 purge_step: int | None = None, active: bool = True):
        self.active, self.epochs, self.start_epoch, self.log_every = active, epochs, start_epoch, log_every
        self.t0 = time.perf_counter()
        self.writer = self.log = None
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=purge_step)
        self.log = logging.getLogger(f"noisyfr.train.{out_dir.resolve()}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.log.addHandler(self._handler)

    def message(self, text: str) -> None:
        """A line on the terminal (above any progress bar) and in ``train.log``."""
        if self.active:
            tqdm.write(text)
            self.log.info(text)

    def step(self, step: int, loss: float, lr: float, img_per_s: float) -> None:
        """Per-step scalars, every ``log_every`` steps."""
        if self.active and step % self.log_every == 0:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/img_per_s", img_per_s, step)

    def epoch(self, metrics: Mapping[str, Any], frame: pd.DataFrame | None, noise: np.ndarray | None) -> None:
        """Per-epoch scalars and theta_y histograms (at the epoch's last step), and the epoch line
        with the elapsed time and the ETA of the remaining epochs."""
        if not self.active:
            return
        step, epoch = int(metrics["step"]), int(metrics["epoch"])
        w = self.writer
        for key in ("loss", "train_accuracy", "img_per_s"):
            w.add_scalar(f"epoch/{key}", metrics[key], step)
        for key in HEALTH_SCALARS:
            if math.isfinite(metrics.get(key, math.nan)):
                w.add_scalar(f"health/{key}", metrics[key], step)
        for key in ("theta_clean_median", "theta_noisy_median"):
            if math.isfinite(metrics.get(key, math.nan)):
                w.add_scalar(f"health/{key}_deg", math.degrees(metrics[key]), step)
        for key, value in metrics.items():
            if key.startswith("val") and isinstance(value, float) and math.isfinite(value):
                w.add_scalar(key if "/" in key else f"val/{key}", value, step)
        if frame is not None and len(frame):
            theta = np.degrees(frame["theta_y"].to_numpy(np.float64))
            noisy = (np.zeros(len(frame), bool) if noise is None
                     else np.asarray(noise, dtype=object)[frame["sample_index"].to_numpy()] != "clean")
            for name, sel in (("clean", ~noisy), ("noisy", noisy)):
                if sel.any():
                    w.add_histogram(f"theta_y/{name}", theta[sel], step, bins=np.linspace(0, 180, 73))
        w.flush()
        elapsed = time.perf_counter() - self.t0
        done = epoch - self.start_epoch + 1
        eta = elapsed / max(done, 1) * (self.epochs - epoch)
        self.message(f"{epoch_line(metrics, self.epochs)}  elapsed {format_duration(elapsed)}  "
                     f"ETA {format_duration(eta)}")

    def close(self) -> None:
        """Flush and close the event file and the log."""
        if self.active:
            self.writer.close()
            self.log.removeHandler(self._handler)
            self._handler.close()
