"""Backbone CPU throughput and verification-metric speed, as ratios measured in one run.

    python benchmarks/bench_models_eval.py [--threads 1] [--batch 8] [--repeats 3]

Prints eval-mode forward images/s per backbone (and its speed relative to small_cnn at 64x64),
and the time of ``noisyfr.eval.verify`` on 6000 pairs against a naive per-threshold scan.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from noisyfr.eval import verify
from noisyfr.models import create_backbone


def forward_rate(name: str, size: int, batch: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = create_backbone(name, 512 if name != "mobilefacenet" else 128, image_size=size).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model(x)  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            model(x)
        dt = time.perf_counter() - t
    return batch * repeats / dt


def naive_accuracy(scores: np.ndarray, issame: np.ndarray, folds: int = 10) -> float:
    accs = []
    for test in np.array_split(np.arange(len(scores)), folds):
        train = np.setdiff1d(np.arange(len(scores)), test)
        u = np.unique(scores[train])
        cands = np.r_[u[0] - 1, (u[:-1] + u[1:]) / 2, u[-1] + 1]
        accs_t = [np.mean((scores[train] > t) == issame[train]) for t in cands]
        t = cands[int(np.argmax(accs_t))]
        accs.append(np.mean((scores[test] > t) == issame[test]))
    return float(np.mean(accs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}")
    cases = [("small_cnn", 64), ("small_cnn", 112), ("mobilefacenet", 112), ("iresnet18", 112),
             ("iresnet50", 112)]
    base = None
    for name, size in cases:
        rate = forward_rate(name, size, args.batch, args.repeats)
        base = base or rate
        print(f"{name:>14} @{size:<3}  {rate:8.1f} img/s   x{rate / base:.3f} of small_cnn@64")

    rng = np.random.default_rng(0)
    same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    e1 = rng.normal(size=(6000, 64))
    e2 = np.where(same[:, None], e1 + rng.normal(scale=1.5, size=e1.shape), rng.normal(size=e1.shape))
    t = time.perf_counter()
    res = verify(e1, e2, same)
    t_fast = time.perf_counter() - t
    scores = np.einsum("ij,ij->i", e1, e2) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    t = time.perf_counter()
    acc = naive_accuracy(scores, same)
    t_naive = time.perf_counter() - t
    print(f"verify on 6000 pairs: {t_fast * 1e3:.1f} ms (accuracy {res['accuracy']:.4f}); naive "
          f"threshold scan {t_naive * 1e3:.0f} ms (accuracy {acc:.4f}): x{t_naive / t_fast:.0f} faster")


if __name__ == "__main__":
    main()
