"""Forward + backward time of every loss through MarginHead, as a ratio to ``normface``.

Run: ``.venv/bin/python benchmarks/bench_losses.py`` (B=256, C=10,000, d=512 on CPU by default).
All losses are timed in one run, interleaved round by round in a seeded random order, and each
loss's median time is divided by normface's median. Both wall time and process CPU time are
measured; on a busy shared machine the CPU-time ratio is the steadier one.
Target: every loss <= 1.15x normface.
BoundaryFace is timed in its active phase (epoch > start_epoch). ``--features random`` (default)
times the start of training (random features: every negative is "hard" for CurricularFace, many
BoundaryFace flips); ``--features trained`` puts each feature at cos ~0.75 to its class centre.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from noisyfr.losses import LOSSES, MarginHead, build_loss

TARGET = 1.15


def make_head(name: str, grad_mode: str, centres: torch.Tensor) -> MarginHead:
    """A training-mode head whose (first) sub-centres are ``centres`` [C, d]."""
    kwargs = {} if name == "softmax" else {"grad_mode": grad_mode}
    loss = build_loss(name, **kwargs)
    if name == "boundaryface":
        loss.set_epoch(loss.start_epoch + 1)
    C, d = centres.shape
    head = MarginHead(d, C, loss).train()
    with torch.no_grad():
        head.weight.view(C, head.K, d)[:, 0] = centres
    return head


def step(head: MarginHead, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One forward + backward; returns (wall seconds, process CPU seconds)."""
    head.zero_grad(set_to_none=True)
    x.grad = None
    t0, c0 = time.perf_counter(), time.process_time()
    value, _, _ = head(x, labels)
    value.backward()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--reps", type=int, default=7, help="timed rounds (median taken)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--modes", default="exact,detached")
    p.add_argument("--losses", default=",".join(sorted(LOSSES)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", choices=("random", "trained"), default="random")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    names = [n for n in args.losses.split(",") if n]
    if "normface" not in names:
        names.insert(0, "normface")
    modes = [m for m in args.modes.split(",") if m]
    centres = torch.randn(args.classes, args.dim) * 0.01
    labels = torch.randint(0, args.classes, (args.batch,))
    x = torch.randn(args.batch, args.dim)
    if args.features == "trained":  # cos(x, own centre) ~ 0.75, feature norm ~ 20
        u = torch.nn.functional.normalize(centres[labels], dim=1)
        n = torch.nn.functional.normalize(x - (x * u).sum(1, keepdim=True) * u, dim=1)
        x = 20 * (0.75 * u + (1 - 0.75 ** 2) ** 0.5 * n)
    x.requires_grad_(True)
    heads = {(n, m): make_head(n, m, centres) for n in names for m in modes
             if not (n in ("softmax", "normface") and m != modes[0])}
    times: dict = {k: [] for k in heads}
    rng = random.Random(args.seed)
    keys = list(heads)
    for r in range(args.warmup + args.reps):
        rng.shuffle(keys)
        for k in keys:
            dt = step(heads[k], x, labels)
            if r >= args.warmup:
                times[k].append(dt)
    base = {c: statistics.median(t[c] for t in times[("normface", modes[0])]) for c in (0, 1)}
    print(f"B={args.batch} C={args.classes} d={args.dim} threads={torch.get_num_threads()} "
          f"reps={args.reps} features={args.features}: median fwd+bwd through MarginHead, ratio to normface "
          f"(normface: {1e3 * base[0]:.1f} ms wall, {1e3 * base[1]:.1f} ms CPU)")
    print(f"{'loss':<19}" + "".join(f"{m + ' wall':>17}{m + ' cpu':>17}" for m in modes))
    worst = 0.0
    for n in names:
        row = f"{n:<19}"
        for m in modes:
            k = (n, m) if (n, m) in heads else (n, modes[0])
            for c in (0, 1):
                ratio = statistics.median(t[c] for t in times[k]) / base[c]
                if c == 1:
                    worst = max(worst, ratio)
                row += f"{ratio:>16.2f}x"
        print(row)
    print(f"worst CPU-time ratio {worst:.2f}x (target <= {TARGET:.2f}x): "
          f"{'PASS' if worst <= TARGET else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
