"""Training step throughput: noisyfr's step (with and without per-sample angle tracking) against a
minimal arcface_torch-style loop on the same backbone, batch, precision and head, in one run.

Three step functions run interleaved (the order rotates every round, so all see the same machine
load) on pre-generated random batches:

- ``reference``: a minimal loop in the style of insightface arcface_torch (written here): backbone
  under autocast, Partial FC v2 sampling (the batch's positive classes plus random negatives,
  ``sample_rate x C``) or the full centre matrix, normalised linear layer, ArcFace margin on the
  target logit (s=64, m=0.5), cross-entropy, backward, SGD step. No angle tracking;
- ``noisyfr``: :class:`noisyfr.train.step.Stepper` with the trainer's head (``PartialFCHead``
  when ``--sample-rate`` is given, else ``MarginHead``), tracking off;
- ``noisyfr+angles``: the same with the per-sample angle log on (the exact nearest-class search
  over every centre included).

Printed: img/s of each (median step time), the ratios noisyfr / reference and noisyfr+angles /
noisyfr, the tracking work alone as a share of the step, the end-of-epoch table + Parquet cost,
and on CUDA the peak memory. ``--gpu-preset`` is the GPU comparison (iresnet50, 112 px, batch
256, bf16, Partial FC 0.1 at 100k classes, cuda) and prints what a GPU run must record.

Usage::

    .venv/bin/python benchmarks/bench_train.py                 # CPU: small_cnn 64 px, 1000 classes
    .venv/bin/python benchmarks/bench_train.py --threads 1 --rounds 12
    .venv/bin/python benchmarks/bench_train.py --gpu-preset    # on a CUDA machine (docs/gpu.md)

Every number printed is measured in this run. The recorded figures live in docs/gpu.md (CPU) and
are marked not measured there for the GPU until a GPU run records them.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--sample-rate", type=float, default=0.1,
                   help="Partial FC sample rate (0 = the full replicated head)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--rounds", type=int, default=8, help="rounds of one step of each function")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--gpu-preset", action="store_true",
                   help="iresnet50, 112 px, batch 256, bf16, Partial FC 0.1 at 100k classes, cuda")
    args = p.parse_args(argv)
    if args.gpu_preset:
        args.backbone, args.image_size, args.batch_size, args.embedding_dim = "iresnet50", 112, 256, 512
        args.amp, args.device, args.classes, args.sample_rate = "bf16", "cuda", 100_000, 0.1
        args.rounds = max(args.rounds, 20)
    return args


class ReferenceStep:
    """A minimal arcface_torch-style training step (Partial FC v2 sampling, ArcFace margin)."""

    def __init__(self, backbone, classes: int, dim: int, sample_rate: float, amp_dtype, device,
                 s: float = 64.0, m: float = 0.5):
        self.backbone, self.amp_dtype, self.s, self.m = backbone, amp_dtype, s, m
        self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (classes, dim), device=device))
        self.num_sample = int(sample_rate * classes) if sample_rate > 0 else classes
        self.opt = torch.optim.SGD([*backbone.parameters(), self.weight], lr=0.1, momentum=0.9,
                                   weight_decay=5e-4)

    def __call__(self, images, labels, index=None):
        with torch.autocast(images.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            emb = self.backbone(images)
        weight, labels = self.weight, labels.clone()
        if self.num_sample < weight.shape[0]:
            with torch.no_grad():
                positive = torch.unique(labels)
                perm = torch.rand(weight.shape[0], device=images.device)
                perm[positive] = 2.0
                index = perm.topk(self.num_sample).indices.sort().values
                labels = torch.searchsorted(index, labels)
            weight = weight[index]
        logits = F.linear(F.normalize(emb.float()), F.normalize(weight)).clamp(-1, 1)
        rows = torch.arange(len(labels), device=labels.device)
        with torch.no_grad():  # arcface_torch: margin written in place, gradient straight through
            logits[rows, labels] = torch.cos(logits[rows, labels].arccos() + self.m)
        logits = logits * self.s
        loss = F.cross_entropy(logits, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _batches(args, device, n=4):
    g = torch.Generator().manual_seed(args.seed)
    b, size = args.batch_size, args.image_size
    return [(torch.randn(b, 3, size, size, generator=g).to(device),
             torch.randint(0, args.classes, (b,), generator=g).to(device),
             torch.arange(i * b, (i + 1) * b)) for i in range(n)]


def _build(args, device, amp_dtype):
    import copy

    from noisyfr.losses import MarginHead, build_loss
    from noisyfr.losses.partial_fc import PartialFCHead
    from noisyfr.models import create_backbone
    from noisyfr.train.angles import AngleTracker
    from noisyfr.train.step import Stepper

    torch.manual_seed(args.seed)
    backbone = create_backbone(args.backbone, embedding_dim=args.embedding_dim,
                               image_size=args.image_size).to(device)
    ref = ReferenceStep(copy.deepcopy(backbone), args.classes, args.embedding_dim,
                        args.sample_rate, amp_dtype, device)
    loss = build_loss("arcface", s=64.0, m=0.5, grad_mode="detached")
    head = (PartialFCHead(args.embedding_dim, args.classes, loss, args.sample_rate, rank=0, world=1)
            if args.sample_rate > 0 else MarginHead(args.embedding_dim, args.classes, loss)).to(device)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9,
                          weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    orig = torch.randint(0, args.classes, (4 * args.batch_size,))
    stepper = Stepper(backbone, head, opt, scaler=scaler, amp_dtype=amp_dtype, orig_labels=orig,
                      loss_name="arcface")
    backbone.train(), head.train(), ref.backbone.train()

    def ours(track: bool):
        def step(images, labels, index):
            stepper.tracker = AngleTracker() if track else None
            out = stepper.step(images, labels, index)
            if track:
                stepper.tracker.arrays()  # the end-of-epoch device->host transfer, per step here
            return out
        return step

    return {"reference": ref, "noisyfr": ours(False), "noisyfr+angles": ours(True)}, stepper


def _tracking_alone(stepper, batch, reps: int = 20) -> float:
    """Seconds of the angle-row work alone (rows from the last step's pass, no optimiser step)."""
    from noisyfr.train.angles import AngleTracker

    images, labels, index = batch
    stepper.tracker = AngleTracker()
    stepper.step(images, labels, index)  # leaves cos/feats grads and the head's last pass
    feats = stepper.model(images).float().detach().requires_grad_()
    loss, _, cos = stepper.head(feats, labels)
    cos.retain_grad()
    loss.backward()
    scale = 1.0
    t0 = time.perf_counter()
    for _ in range(reps):
        stepper._track(feats, labels, cos, index, True, scale)
    stepper.tracker.arrays()
    _sync(labels.device)
    return (time.perf_counter() - t0) / reps


def _epoch_end(classes: int, m: int = 100_000) -> float:
    """Seconds per sample of the end-of-epoch angle table + Parquet write."""
    from noisyfr.train.angles import _FLOATS, rows_frame, write_angles

    rng = np.random.default_rng(0)
    arrays = {"sample_index": rng.permutation(m).astype(np.int64),
              "label": rng.integers(0, classes, m), "label_used": rng.integers(0, classes, m),
              "values": rng.random((m, len(_FLOATS)), np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_angles(rows_frame(arrays, 1), tmp, 1)
        return (time.perf_counter() - t0) / m


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    args = _parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_train: CUDA requested but not available (no GPU here)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    steps, stepper = _build(args, device, amp_dtype)
    batches = _batches(args, device)
    names = list(steps)
    times = {name: [] for name in names}
    for k in range(args.warmup + args.rounds):
        order = names[k % len(names):] + names[:k % len(names)]
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            steps[name](*batches[k % len(batches)])
            _sync(device)
            if k >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    b = args.batch_size
    direct = _tracking_alone(stepper, batches[0])
    per_sample = _epoch_end(args.classes)
    head = (f"Partial FC {args.sample_rate:g}" if args.sample_rate > 0 else "full FC")
    print(f"device {device} ({torch.get_num_threads()} threads), {args.backbone} {args.image_size}px, "
          f"batch {b}, {args.classes} classes, {head}, arcface, amp {args.amp}, "
          f"{args.rounds} interleaved rounds (median)")
    for name in names:
        print(f"{name:15s}: {b / med[name]:9.1f} img/s  ({med[name] * 1e3:.1f} ms/step)")
    print(f"ratio noisyfr / reference (img/s)        : {med['reference'] / med['noisyfr']:.3f}")
    print(f"ratio noisyfr+angles / noisyfr (img/s)   : {med['noisyfr'] / med['noisyfr+angles']:.3f}")
    print(f"tracking work alone: {direct * 1e3:.2f} ms/step = "
          f"{direct / med['noisyfr'] * 100:.2f} % of the untracked step")
    print(f"epoch-end table + Parquet: {per_sample * 1e6:.2f} us/sample = "
          f"{per_sample / (med['noisyfr'] / b) * 100:.3f} % of the per-sample step time")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB "
              f"({torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda})")
    if args.gpu_preset:
        print("RECORD in docs/gpu.md: the device line, the three img/s lines, both ratios, the "
              "tracking share and the peak memory, with the commit hash and the date")
    if not all(math.isfinite(v) for v in med.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
