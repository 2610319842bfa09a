"""Bytes on disk of the per-sample angle logs (``angles/epoch_<E>.parquet``), written by the
trainer's own code (:func:`noisyfr.train.angles.rows_frame` + :func:`write_angles`), and what a
CASIA-WebFace trial and the ``casia_closed`` sweep cost with ``track.angles_every`` /
``track.angles_fraction``.

The rows are fabricated, seeded, with the value structure of a real log: continuous random angles,
weights, gradient norms and feature norms (random floats, not constants: compression matters),
labels in runs of ~47 consecutive samples as in CASIA-WebFace (10,572 identities, 494,414 images,
sorted by sample index as the log is), ``nearest_label`` any other class. Two cases:

- ``single-centre``: what a one-centre loss on clean data logs: ``label_used = label``,
  ``theta_used = theta_dominant = theta_orig = theta_y`` (each of the equal columns is stored in full);
- ``independent``: every float column and ``label_used`` drawn independently (an upper bound:
  nothing repeats).

Printed: bytes per row at ``--rows`` rows (file size / rows), then the size of one CASIA-size
epoch file (494,414 rows) and of one at ``angles_fraction=0.1`` (the trainer's subset of those
rows: 49,441), and from them per trial (20 epochs) and per sweep (90 trials,
experiments/configs/casia_closed.yaml) for the settings of docs/training.md ("Bytes on disk").

Run: ``python benchmarks/bench_angle_log.py [--rows 200000]`` (a few seconds on one core).
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np

from noisyfr.train.angles import _FLOATS, keep_samples, logged_epochs, logged_samples, rows_frame, write_angles

CASIA_SAMPLES, CASIA_IDS = 494_414, 10_572
EPOCHS, TRIALS = 20, 90            # experiments/configs/casia_closed.yaml: optim.epochs, 6 x 5 x 3 trials


def fabricated(n: int, case: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Tracker arrays (as :meth:`AngleTracker.arrays` returns them) of ``n`` samples."""
    rng = np.random.default_rng(seed)
    label = (np.arange(n) * CASIA_IDS // CASIA_SAMPLES).astype(np.int64)
    col = {"theta_y": rng.normal(0.9, 0.25, n).clip(0.01, math.pi - 0.01),
           "theta_nearest": rng.normal(1.45, 0.08, n).clip(0.01, math.pi - 0.01),
           "nearest_label": (label + rng.integers(1, CASIA_IDS, n)) % CASIA_IDS,
           "weight": rng.gamma(2.0, 8.0, n), "grad_norm": rng.gamma(2.0, 0.5, n),
           "unit_pull": rng.gamma(2.0, 10.0, n), "feat_norm": rng.normal(22.0, 3.0, n)}
    col["weight_theta"] = col["weight"] * np.sin(col["theta_y"])
    if case == "single-centre":
        for name in ("theta_orig", "theta_dominant", "theta_used"):
            col[name] = col["theta_y"]
        used = label
    else:
        for name in ("theta_orig", "theta_dominant", "theta_used"):
            col[name] = rng.uniform(0.01, math.pi - 0.01, n)
        col["weight_theta"] = rng.gamma(2.0, 8.0, n)
        used = rng.integers(0, CASIA_IDS, n)
    values = np.stack([np.asarray(col[name], np.float64) for name in _FLOATS], 1).astype(np.float32)
    return {"sample_index": np.arange(n), "label": label, "label_used": used, "values": values}


def file_bytes(n: int, case: str, folder: Path, fraction: float = 1.0) -> int:
    """Size of the epoch file of ``n`` fabricated samples, of which the trainer's subset at
    ``fraction`` is kept (:func:`logged_samples`, seed 0)."""
    frame = rows_frame(fabricated(n, case), epoch=1)
    frame = keep_samples(frame, logged_samples(np.arange(n), fraction, seed=0))
    return write_angles(frame, folder, 1).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    settings = [(1, 1.0), (5, 1.0), (1, 0.1), (5, 0.1)]
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("single-centre", "independent"):
            per_row = file_bytes(args.rows, case, Path(tmp)) / args.rows
            full = file_bytes(CASIA_SAMPLES, case, Path(tmp))
            tenth = file_bytes(CASIA_SAMPLES, case, Path(tmp), fraction=0.1)
            print(f"{case}: {per_row:.2f} bytes/row at {args.rows:,} rows; CASIA epoch file "
                  f"{full / 1e6:.2f} MB, at angles_fraction=0.1 {tenth / 1e6:.2f} MB")
            for every, fraction in settings:
                epochs = len(logged_epochs(EPOCHS, every))
                trial = epochs * (full if fraction == 1.0 else tenth)
                print(f"  angles_every={every} angles_fraction={fraction:g}: {epochs} files, "
                      f"trial {trial / 1e6:,.1f} MB, sweep ({TRIALS} trials) {TRIALS * trial / 1e9:,.2f} GB")


if __name__ == "__main__":
    main()
