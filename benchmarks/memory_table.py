"""Memory on paper: the margin head per rank under Partial FC, and the angle log of an epoch.

1. Head memory per rank (GiB) for C = 10k, 85k, 2M classes at sample rates 1.0, 0.3, 0.1 and
   world sizes 1, 8, 64, from the shapes the code allocates (``shard_range``, ``sample_count``,
   ``scan_block`` of :mod:`noisyfr.losses.partial_fc`), float32, SGD with momentum, d = 512,
   K = 1, ``--local-batch`` rows per rank (global batch B = local x world):

   - the shard: centres, their gradient (dense over the shard) and the momentum buffer,
     3 x C_r x d (C_r = the rank's classes);
   - the sampled centres and their gradient, 2 x S x d (S = max(sample_count, the positives,
     at most min(C_r, B / world) distinct labels); none at rate 1: the shard is used as it is);
   - the logits-sized activations, 4 x B x S (the cosine product, the margin logits, the
     softmax saved for backward, the gradient);
   - the gathered features and their gradient, 2 x B x d.

   The angle log's nearest-class search adds a transient block of at most ``SCAN_BYTES``.
   The last column is the replicated full head (MarginHead) at the same local batch:
   3 x C x d + 4 x b x C, whatever the world size.
2. The angle log of one epoch of ``--samples`` (5.8M: WebFace-class) samples: the table in
   memory (from a real ``rows_frame`` per row), the Parquet file (measured on ``--probe`` rows
   with realistic values, scaled linearly), the tracker's rows on each device during the epoch
   and the arrays every rank holds after the end-of-epoch all-gather.

Run: ``python benchmarks/memory_table.py``; it prints Markdown (docs/gpu.md holds its output).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GiB = 2.0 ** 30
F32 = 4


def head_bytes(classes: int, rate: float, world: int, local_batch: int, dim: int) -> dict:
    """Per-rank bytes of the Partial FC head (the largest shard, rank 0)."""
    from noisyfr.distributed import shard_range
    from noisyfr.losses.partial_fc import sample_count

    _, c_r = shard_range(classes, 0, world)
    B = local_batch * world
    positives = min(c_r, math.ceil(B / world))
    S = c_r if rate >= 1.0 else min(c_r, max(sample_count(c_r, rate), positives))
    out = {"shard": 3 * c_r * dim * F32,
           "sampled": 0 if S == c_r else 2 * S * dim * F32,
           "logits": 4 * B * S * F32,
           "features": 2 * B * dim * F32}
    out["total"] = sum(out.values())
    return out


def replicated_bytes(classes: int, local_batch: int, dim: int) -> int:
    return 3 * classes * dim * F32 + 4 * local_batch * classes * F32


def _head_table(args) -> list[str]:
    from noisyfr.losses.partial_fc import SCAN_BYTES

    worlds = (1, 8, 64)
    lines = [f"Head memory per rank (GiB): float32, SGD momentum, d={args.dim}, K=1, "
             f"{args.local_batch} samples per rank; angle-log scan adds <= "
             f"{SCAN_BYTES / GiB:.2f} GiB transient.", "",
             "| classes | sample_rate | " + " | ".join(f"world {w}" for w in worlds)
             + " | replicated full FC |",
             "|---|---|" + "---|" * (len(worlds) + 1)]
    for classes in (10_000, 85_000, 2_000_000):
        for rate in (1.0, 0.3, 0.1):
            cells = [f"{head_bytes(classes, rate, w, args.local_batch, args.dim)['total'] / GiB:.3f}"
                     for w in worlds]
            full = replicated_bytes(classes, args.local_batch, args.dim) / GiB
            lines.append(f"| {classes:,} | {rate:g} | " + " | ".join(cells) + f" | {full:.3f} |")
    parts = head_bytes(2_000_000, 0.1, 8, args.local_batch, args.dim)
    lines += ["", "Breakdown at 2M classes, rate 0.1, world 8 (GiB): " + ", ".join(
        f"{k} {v / GiB:.3f}" for k, v in parts.items())]
    return lines


def _probe_frame(n: int, classes: int):
    """A real angle table of ``n`` rows with realistic values (angles in [0, pi], 5 % noisy)."""
    from noisyfr.train.angles import _FLOATS, rows_frame

    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    values = np.empty((n, len(_FLOATS)), np.float32)
    values[:, 0] = rng.uniform(0.3, 1.6, n)                  # theta_y
    values[:, 1] = rng.uniform(0.9, 1.6, n)                  # theta_nearest
    values[:, 2] = rng.integers(0, classes, n)               # nearest_label
    values[:, 3] = np.where(rng.random(n) < 0.05, rng.uniform(0.3, 1.6, n), values[:, 0])
    values[:, 4] = values[:, 0]                              # theta_dominant (one centre)
    values[:, 5] = rng.uniform(0.0, 64.0, n)                 # weight
    values[:, 6] = values[:, 5] * np.sin(values[:, 0])
    values[:, 7] = rng.uniform(0.0, 10.0, n)                 # grad_norm
    arrays = {"sample_index": np.arange(n, dtype=np.int64), "label": labels,
              "label_used": labels, "values": values}
    return rows_frame(arrays, 1), arrays


def _angle_lines(args) -> list[str]:
    from noisyfr.train.angles import write_angles

    frame, arrays = _probe_frame(args.probe, 85_000)
    in_memory = frame.memory_usage(index=False, deep=True).sum() / len(frame)
    with tempfile.TemporaryDirectory() as tmp:
        on_disk = write_angles(frame, tmp, 1).stat().st_size / len(frame)
    tracked = sum(a.itemsize * (a.shape[1] if a.ndim == 2 else 1) for a in
                  (arrays["sample_index"], arrays["label"], arrays["label_used"], arrays["values"]))
    n = args.samples
    lines = [f"Angle log of one epoch of {n / 1e6:.1f}M samples ({len(frame.columns)} columns):", "",
             "| what | bytes per sample | per epoch |", "|---|---|---|",
             f"| table in memory (rank 0, pandas) | {in_memory:.1f} | {in_memory * n / GiB:.2f} GiB |",
             f"| Parquet file (measured on {args.probe:,} rows, scaled) | {on_disk:.1f} | "
             f"{on_disk * n / GiB:.2f} GiB |",
             f"| rows gathered on every rank at epoch end | {tracked} | {tracked * n / GiB:.2f} GiB |"]
    for w in (1, 8, 64):
        lines.append(f"| tracker rows on each device during the epoch, world {w} | {tracked} | "
                     f"{tracked * n / w / GiB:.3f} GiB |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--local-batch", type=int, default=128)
    p.add_argument("--samples", type=int, default=5_800_000)
    p.add_argument("--probe", type=int, default=200_000, help="rows written to measure Parquet")
    args = p.parse_args(argv)
    print("\n".join(_head_table(args) + [""] + _angle_lines(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
