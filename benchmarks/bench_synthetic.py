"""Rendering speed of the synthetic face-like identities (noisyfr.data.render, noisyfr.data.synthetic).

    .venv/bin/python benchmarks/bench_synthetic.py [--n 400] [--repeats 3]

Prints images/s (wall clock and process CPU time, best of ``--repeats``) for rendering at
sizes 32/64/112, for cached reads through ``SyntheticIndex.load_image``, and for ``noisyfr synth``
(render + PNG encode + write), with the ratio to the targets (>= 1000 img/s at 64, >= 400 at 112).
CPU time is the fairer figure on a shared machine; one thread, no parallelism.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from noisyfr.data.render import render_image_array
from noisyfr.data.synthetic import SyntheticIndex

TARGETS = {64: 1000.0, 112: 400.0}


def rate(fn, n: int, repeats: int) -> tuple[float, float]:
    """Best (wall, cpu) images/s of ``fn(i)`` for i in range(n) over ``repeats`` runs."""
    best_wall = best_cpu = 0.0
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            fn(r * n + i)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        best_wall, best_cpu = max(best_wall, n / w), max(best_cpu, n / max(c, 1e-9))
    return best_wall, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    render_image_array(0, 0, 0, 64)  # warm up imports and caches
    print(f"{'what':34s} {'wall img/s':>11s} {'cpu img/s':>10s} {'cpu/target':>10s}")
    for size in (32, 64, 112):
        wall, cpu = rate(lambda i, size=size: render_image_array(0, i % 100, i, size), args.n, args.repeats)
        target = TARGETS.get(size)
        ratio = f"{cpu / target:10.2f}" if target else f"{'-':>10s}"
        print(f"{f'render size {size}':34s} {wall:11.0f} {cpu:10.0f} {ratio}")
    idx = SyntheticIndex(ids=20, per_id=20, size=112, seed=0)
    for i in range(len(idx)):
        idx.load_image(i)
    wall, cpu = rate(lambda i: idx.load_image(i % len(idx)), args.n, args.repeats)
    print(f"{'cached load_image size 112':34s} {wall:11.0f} {cpu:10.0f} {'-':>10s}")
    from data_tools.synth import write_synthetic
    with tempfile.TemporaryDirectory() as tmp:
        for size in (64, 112):
            w0, c0 = time.perf_counter(), time.process_time()
            write_synthetic(Path(tmp) / f"s{size}", ids=20, per_id=20, size=size, seed=0,
                            progress=False)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            print(f"{f'noisyfr synth 400 PNGs size {size}':34s} {400 / w:11.0f} {400 / c:10.0f} "
                  f"{'-':>10s}")


if __name__ == "__main__":
    main()
