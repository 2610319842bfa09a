"""The training data path from an insightface ``.rec``: JPEG decode + augmentation with PIL
against torchvision's ``decode_jpeg``, and the DataLoader against raw decoding.

Packs the real LFW training subset (840 JPEGs of 250x250, from ``../shared/data``; or ``--data
DIR``, any ImageFolder of JPEGs) into a temporary ``train.rec``, then, in one process and one run:

1. decode + augment (the trainer's ``face_transform``: centre crop 0.6, random square crop,
   resize to 112, flip, normalise) of every record, with PIL decoding and with torchvision's
   ``decode_jpeg`` (what :func:`noisyfr.data.index.decode_image` does for JPEG). The passes are
   interleaved (PIL, torchvision, torchvision, PIL, ...) so that both see the same machine load;
   each line is the median of ``--repeat`` passes. Printed: images/s of each and their ratio.
2. raw decode (torchvision, no augmentation, no dataset) against the training DataLoader
   (``NoisyDataset`` over the ``.rec`` with the same transform, batches of ``--batch``,
   ``--workers`` worker processes): images/s of each and the ratio loader / raw decode (above 1
   when the workers decode in parallel).
3. On CUDA only: the batched GPU decode (``decode_images(..., device="cuda")``, nvjpeg).

Run: ``python benchmarks/bench_data.py [--repeat 5] [--workers 2] [--threads 1]``. Every number is
measured in this run. Figures recorded in docs/gpu.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _parse(argv=None) -> argparse.Namespace:
    shared = Path(os.environ.get("NOISYFR_SHARED_DATA", REPO.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(shared / "lfw_train" / "images"),
                   help="ImageFolder of JPEGs to pack (default: the shared LFW subset)")
    p.add_argument("--repeat", type=int, default=5, help="passes per decoder (median)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: default)")
    return p.parse_args(argv)


def _pass(datas, decode, transform) -> float:
    """Seconds to decode (and transform, unless None) every record once."""
    t0 = time.perf_counter()
    for data in datas:
        img = decode(data)
        if transform is not None:
            transform(img)
    return time.perf_counter() - t0


def _loader_pass(loader) -> float:
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def main(argv=None) -> int:
    import torch
    from torch.utils.data import DataLoader

    from noisyfr.data import RecordIOIndex, decode_image, decode_images, open_index, pack_index
    from noisyfr.data.index import JPEG_MAGIC, _decode_pil
    from noisyfr.data.transforms import face_transform
    from noisyfr.noise import NoisyDataset

    args = _parse(argv)
    if not Path(args.data).is_dir():
        print(f"bench_data: {args.data} is not a folder (see ../shared/data/README.md)",
              file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    transform = face_transform(112, center_crop=0.6, train=True, flip=True, crop_jitter=0.1)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        pack_index(open_index(args.data), Path(tmp) / "train", progress=False)
        rec = RecordIOIndex(Path(tmp) / "train.rec")
        datas = [rec.read_bytes(i) for i in range(len(rec))]
        jpeg = sum(bytes(d[:3]) == JPEG_MAGIC for d in datas)
        decoders = {"PIL": lambda d: _decode_pil(d, "bench"), "torchvision": decode_image}
        times = {name: [] for name in decoders}
        for name in decoders:  # warm-up (imports, libjpeg tables)
            _pass(datas[:20], decoders[name], transform)
        for k in range(args.repeat):
            order = list(decoders) if k % 2 == 0 else list(decoders)[::-1]
            for name in order:
                torch.manual_seed(k)
                times[name].append(_pass(datas, decoders[name], transform))
        n = len(datas)
        rate = {name: n / statistics.median(t) for name, t in times.items()}

        dataset = NoisyDataset(rec, transform=transform)
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=False,
                            num_workers=args.workers, persistent_workers=args.workers > 0)
        _loader_pass(loader)  # workers started, page cache warm
        raw, load = [], []
        for k in range(args.repeat):
            pair = [("raw", lambda: _pass(datas, decode_image, None)),
                    ("loader", lambda: _loader_pass(loader))]
            for name, fn in (pair if k % 2 == 0 else pair[::-1]):
                (raw if name == "raw" else load).append(fn())
        raw_rate, load_rate = n / statistics.median(raw), n / statistics.median(load)
        gpu = None
        if torch.cuda.is_available():
            decode_images(datas[:64], device="cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(0, n, args.batch):
                decode_images(datas[i:i + args.batch], device="cuda")
            torch.cuda.synchronize()
            gpu = n / (time.perf_counter() - t0)

    print(f"{n} records ({jpeg} JPEG) from {args.data}, {torch.get_num_threads()} torch "
          f"thread(s), {args.repeat} interleaved passes each (median)")
    print(f"decode+augment PIL        : {rate['PIL']:8.1f} img/s")
    print(f"decode+augment torchvision: {rate['torchvision']:8.1f} img/s")
    print(f"ratio torchvision / PIL   : {rate['torchvision'] / rate['PIL']:.2f}")
    print(f"raw decode (torchvision)  : {raw_rate:8.1f} img/s")
    print(f"DataLoader ({args.workers} workers, batch {args.batch}, augment): {load_rate:8.1f} img/s")
    print(f"ratio loader / raw decode : {load_rate / raw_rate:.2f}")
    print("GPU batched decode (nvjpeg): " + (f"{gpu:8.1f} img/s" if gpu is not None
                                             else "not measured (no CUDA device)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
