"""Benchmark of ``noisyfr inject`` at web-face scale and of ``.rec`` sequential reads.

1. Manifest: a label set of 5.8M samples / 85k identities (an in-memory index: labels + RecordIO-
   style paths ``rec/<key>`` as a Python list, like :class:`RecordIOIndex` holds them), closed 0.2
   (symmetric) + open 0.1 from a 100k-image outlier pool; times ``inject_to`` (noise + Parquet
   manifest + sidecar written + the returned DataFrame) and reports the peak RSS of this process
   (``getrusage`` ``ru_maxrss``). Targets: <= 3 s wall and <= 1.5 GiB peak RSS. Wall and CPU time
   are both printed: on a busy machine wall time also counts other processes' turns. Nothing here
   imports torch (checked and printed). Run 1 is a cold run, as the CLI sees it; with
   ``--manifest-repeat N`` the best of N runs is printed too.
2. ``.rec`` reads: packs ``--rec-images`` images (default 6000: the real LFW subset if present,
   cycled, else synthetic JPEGs made here with PIL) into a temporary ``train.rec``, then reads
   every record through ``RecordIOIndex.read_bytes`` and, as the reference, the same file
   sequentially in 1 MiB ``f.read`` chunks (unbuffered ``open``: a new bytes object per read, as an
   image loader gets them). Also printed for information: one ``os.pread`` per record (the
   previous implementation), 64 KiB chunks and one whole-file read. All reads come from the page
   cache (the file is read once before timing); each trial repeats the pass until it lasts
   >= 0.2 s; best of ``--repeat`` trials, interleaved so every reader sees the same machine load.
   Target: read_bytes / 1 MiB-chunk reference >= 0.8.

Run: ``python benchmarks/bench_noise.py`` (``--samples/--ids`` to scale down, ``--rec-data DIR``
for the images to pack). Every number printed is measured in this run; the last lines are a
table of measured value, target and PASS/FAIL.
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from noisyfr.data.index import FaceIndex  # noqa: E402  (label-only: no torch)

MANIFEST_SECONDS = 3.0
MANIFEST_RSS_MIB = 1536.0
REC_RATIO = 0.8
RAW_REF = 1 << 20  # the reference: 1 MiB f.read chunks
RAW_INFO = (64 << 10, None)  # for information: 64 KiB chunks, one whole-file read


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class LabelSet(FaceIndex):
    """Labels and RecordIO-style paths only (no images): what inject needs."""

    def __init__(self, sizes: np.ndarray, prefix: str):
        self.labels = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        self.identities = [f"{prefix}{k:06d}" for k in range(len(sizes))]
        self.paths = [f"{prefix}/{k}" for k in range(1, len(self.labels) + 1)]
        self.source = f"<{prefix} label set>"

    def read_bytes(self, i):  # pragma: no cover - not used by the benchmark
        raise NotImplementedError


def bench_manifest(samples: int, ids: int, outlier_ids: int, per_outlier: int, seed: int,
                   repeat: int) -> dict:
    """Time ``inject_to`` (noise + Parquet + DataFrame) on a synthetic web-scale label set; peak RSS
    of this process."""
    from noisyfr.noise import NoiseSpec, inject_to

    rss_start = _rss_mb()
    rng = np.random.default_rng(seed)
    # web-face-like imbalance: identity sizes ~ 2 + multinomial with log-normal weights
    weights = rng.lognormal(0.0, 0.8, size=ids)
    sizes = rng.multinomial(samples - 2 * ids, weights / weights.sum()) + 2
    index = LabelSet(sizes, "rec")
    outliers = LabelSet(np.full(outlier_ids, per_outlier), "out")
    rss_index = _rss_mb()
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "manifest.parquet"
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            manifest = inject_to(index, NoiseSpec(closed=0.2, open=0.1, outliers=outliers, seed=seed), out)
            df, meta = manifest.frame, manifest.meta
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            del df
            if len(walls) == 1:
                peak = _peak_rss_mb()  # the cold run's peak, before later runs can add to it
        size_mb = out.stat().st_size / 2**20
    return dict(samples=len(index), ids=ids, walls=walls, cpus=cpus, counts=meta["counts"],
                rss_start_mb=rss_start, rss_index_mb=rss_index, peak_rss_mb=peak,
                manifest_mb=size_mb, torch_imported="torch" in sys.modules)


class _Cycled(FaceIndex):
    """``n`` samples cycling over the encoded images of another index (bytes held in memory)."""

    def __init__(self, images: list[bytes], labels: np.ndarray, n: int, source: str):
        self._images = images
        reps = np.arange(n) % len(images)
        self.labels = np.asarray(labels, dtype=np.int64)[reps]
        self.identities = [f"id{k}" for k in range(int(self.labels.max()) + 1)]
        self.paths = [f"img/{k}" for k in range(n)]
        self._reps = reps.tolist()
        self.source = source

    def read_bytes(self, i):
        return self._images[self._reps[i]]


def _synthetic_jpegs(count: int, size: int = 112) -> list[bytes]:
    """Face-sized JPEGs (smooth gradients + noise, quality 90) drawn with a fixed seed."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(count):
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * xx + 40 * yy, b * yy + 30, c * (1 - xx)], axis=-1)
        img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _rec_source(path: str | None, images: int) -> FaceIndex:
    if path == "synthetic":
        path = ""
    elif path is None:
        shared = Path(os.environ.get("NOISYFR_SHARED_DATA", REPO.parent / "shared" / "data"))
        lfw = shared / "lfw_train" / "images"
        path = str(lfw) if lfw.is_dir() else None
    if path:
        from noisyfr.data import open_index

        src = open_index(path)
        data = [src.read_bytes(i) for i in range(len(src))]
        return _Cycled(data, src.labels, images, f"{src.source}, cycled")
    data = _synthetic_jpegs(200)
    return _Cycled(data, np.arange(200) // 10, images, "synthetic 112x112 JPEGs made here, cycled")


def _best_of(readers: dict, repeat: int, min_seconds: float) -> dict:
    """Best time of one pass per reader; each trial loops the pass to last >= ``min_seconds``."""
    loops = {}
    for name, fn in readers.items():
        t0 = time.perf_counter()
        fn()
        loops[name] = max(1, int(np.ceil(min_seconds / max(time.perf_counter() - t0, 1e-6))))
    best = {name: float("inf") for name in readers}
    for _ in range(repeat):  # interleaved, so all see the same machine load
        for name, fn in readers.items():
            t0 = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / loops[name])
    return best


def bench_rec(path: str | None, images: int, repeat: int) -> dict:
    """Sequential read speed of ``RecordIOIndex.read_bytes`` against plain reads of the file."""
    from noisyfr.data import RecordIOIndex, pack_index

    src = _rec_source(path, images)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "train"
        pack_index(src, prefix, verify=False, progress=False)
        rec_file = Path(str(prefix) + ".rec")
        rec = RecordIOIndex(rec_file)
        n = len(rec)
        total = rec_file.stat().st_size
        payload = sum(len(rec.read_bytes(i)) for i in range(n))  # warms the page cache and map
        order = np.argsort(src.labels, kind="stable").tolist()  # pack groups records by label
        assert n == len(src) and all(rec.read_bytes(i) == src.read_bytes(j) for i, j in enumerate(order))
        starts, lens = rec._img_start, rec._img_len  # for the previous (pread) implementation
        fd = os.open(rec_file, os.O_RDONLY)

        def read_records():
            got = 0
            read = rec.read_bytes
            for i in range(n):
                got += len(read(i))
            assert got == payload

        def read_pread():
            got = 0
            pread = os.pread
            for i in range(n):
                got += len(pread(fd, lens[i], starts[i]))
            assert got == payload

        def raw(size):
            def read_raw():
                got = 0
                with open(rec_file, "rb", buffering=0) as fh:
                    while chunk := fh.read(size or total):
                        got += len(chunk)
                assert got == total
            return read_raw

        readers = {"rec": read_records, "pread": read_pread, RAW_REF: raw(RAW_REF)}
        readers.update({size: raw(size) for size in RAW_INFO})
        best = _best_of(readers, repeat, 0.2)
        os.close(fd)
        rec.close()
    mb_s = {name: (total if name not in ("rec", "pread") else payload) / 2**20 / t
            for name, t in best.items()}
    return dict(records=n, file_mb=total / 2**20, record_kb=payload / n / 1024, mb_s=mb_s,
                ratio=mb_s["rec"] / mb_s[RAW_REF], source=src.source)


def _row(metric: str, value: str, target: str, ratio: str, ok: bool | None) -> str:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    return f"  {metric:<44} {value:>12} {target:>10} {ratio:>7}  {verdict}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=5_800_000)
    ap.add_argument("--ids", type=int, default=85_000)
    ap.add_argument("--outlier-ids", type=int, default=5_000)
    ap.add_argument("--per-outlier", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--manifest-repeat", type=int, default=1,
                    help="inject runs (run 1 is judged: cold, like the CLI; best also printed)")
    ap.add_argument("--rec-data", default=None,
                    help="dataset to pack for the .rec read test (default: the LFW subset if "
                         "present; 'synthetic': JPEGs made here)")
    ap.add_argument("--rec-images", type=int, default=6000, help="records to pack (source cycled)")
    ap.add_argument("--repeat", type=int, default=5, help="read trials (best is kept)")
    ap.add_argument("--skip-manifest", action="store_true")
    ap.add_argument("--skip-rec", action="store_true")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"cpu count {os.cpu_count()}, load average {load:.2f} (1 min)"
          + ("  [busy machine: wall times include other processes' turns]"
             if load > (os.cpu_count() or 1) else ""))
    rows = []
    if not args.skip_manifest:
        r = bench_manifest(args.samples, args.ids, args.outlier_ids, args.per_outlier, args.seed,
                           max(1, args.manifest_repeat))
        wall, cpu = r["walls"][0], r["cpus"][0]
        print(f"manifest: {r['samples']} samples / {r['ids']} identities, closed 0.2 + open 0.1, "
              f"Parquet {r['manifest_mb']:.1f} MiB; counts {r['counts']}")
        print(f"  runs (wall s): {', '.join(f'{w:.2f}' for w in r['walls'])}; "
              f"(CPU s): {', '.join(f'{c:.2f}' for c in r['cpus'])}")
        print(f"  RSS after imports {r['rss_start_mb']:.0f} MiB, after building the label set "
              f"{r['rss_index_mb']:.0f} MiB, peak {r['peak_rss_mb']:.0f} MiB (added by inject "
              f"{r['peak_rss_mb'] - r['rss_index_mb']:.0f} MiB); torch imported: "
              f"{r['torch_imported']}")
        rows.append(_row("manifest 5.8M, run 1 wall (s)", f"{wall:.2f}", f"<= {MANIFEST_SECONDS:g}",
                         f"{wall / MANIFEST_SECONDS:.2f}", wall <= MANIFEST_SECONDS))
        rows.append(_row("manifest 5.8M, run 1 CPU (s)", f"{cpu:.2f}", f"<= {MANIFEST_SECONDS:g}",
                         f"{cpu / MANIFEST_SECONDS:.2f}", cpu <= MANIFEST_SECONDS))
        if len(r["walls"]) > 1:
            best = min(r["walls"])
            rows.append(_row(f"manifest, best of {len(r['walls'])} wall (s)", f"{best:.2f}",
                             f"<= {MANIFEST_SECONDS:g}", f"{best / MANIFEST_SECONDS:.2f}", None))
        peak = r["peak_rss_mb"]
        rows.append(_row("manifest peak RSS (MiB)", f"{peak:.0f}", f"<= {MANIFEST_RSS_MIB:g}",
                         f"{peak / MANIFEST_RSS_MIB:.2f}", peak <= MANIFEST_RSS_MIB))
    if not args.skip_rec:
        r = bench_rec(args.rec_data, args.rec_images, args.repeat)
        s = r["mb_s"]
        print(f".rec read: {r['records']} records of {r['record_kb']:.1f} KiB on average "
              f"({r['file_mb']:.1f} MiB, from {r['source']}; page cache; best of {args.repeat}, "
              f"trials >= 0.2 s), MiB/s:")
        print(f"  RecordIOIndex.read_bytes (mmap slices) {s['rec']:.0f}; one os.pread per record "
              f"(previous) {s['pread']:.0f} (ratio {s['pread'] / s[RAW_REF]:.2f}); plain f.read: "
              f"1 MiB chunks {s[RAW_REF]:.0f} (reference), 64 KiB chunks {s[64 << 10]:.0f} "
              f"(ratio {s['rec'] / s[64 << 10]:.2f}), whole file {s[None]:.0f} "
              f"(ratio {s['rec'] / s[None]:.2f})")
        rows.append(_row(".rec read_bytes / f.read 1 MiB chunks", f"{r['ratio']:.2f}",
                         f">= {REC_RATIO:g}", "", r["ratio"] >= REC_RATIO))
    print(f"  {'metric':<44} {'measured':>12} {'target':>10} {'ratio':>7}  result")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
