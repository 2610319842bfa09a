"""Extraction: the images of a dataset or pairs set -> a feature file (noisyfr.data.feature_store).

The images are read in their dataset's order (a face index's order, a pairs set's image order),
hashed and decoded once up front: an image that cannot be decoded stops the command before any
model runs (one line naming it, nothing written). They are then embedded in fixed chunks of
:data:`CHUNK` images. Each chunk's result is kept in a work folder beside the output
(``.FEATS.parquet.parts/``), under a key made of the model (its file hashes), its preprocessing
and the chunk's image hashes, so an interrupted run continues where it stopped and a changed model
or image recomputes only what it changes. The folder is removed once the feature file is
written, and on bad input. An output already written from the same images, model and
preprocessing is left as it is. Same inputs, same bytes: no time or host is recorded.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from noisyfr.data.feature_store import FeatureTable, read_meta, table_of, write_features
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path

#: Images per chunk: the unit of caching (and of a batch for torch and ONNX models).
CHUNK = 64
#: Version of the cache key and of the image fingerprint; bump when either changes meaning.
FORMAT = "noisyfr-features/1"


@dataclass
class Source:
    """The images to embed: ``read_bytes(i)`` for ``i < count``, their keys and identities."""

    kind: str                       # "index" or "pairs"
    name: str                       # DATA as given
    paths: list[str]
    identities: list[str]
    read_bytes: Callable[[int], bytes]
    inputs: list = field(default_factory=list)   # files and folders the command reads
    pairs: np.ndarray | None = None  # int64 [P, 3]: row a, row b, same
    meta: dict = field(default_factory=dict)     # what the sidecar records about the source

    @property
    def count(self) -> int:
        return len(self.paths)


def _is_pairs(data: str) -> bool:
    p = Path(data)
    return p.suffix in (".bin", ".txt") or (p.is_dir() and (p / "pairs.txt").is_file())


def _is_manifest(data: str) -> bool:
    p = Path(data)
    return p.suffix.lower() in (".parquet", ".csv") and Path(str(p) + ".json").is_file()


def _index_source(index, name: str, inputs: list, meta: dict) -> Source:
    from noisyfr.noise.manifest import fingerprint

    labels = np.asarray(index.labels, dtype=np.int64)
    return Source("index", name, [str(p) for p in index.paths],
                  [str(index.identities[k]) for k in labels], index.read_bytes, inputs,
                  meta={**meta, "index_sha256": fingerprint(index)})


def _manifest_source(data: str) -> Source:
    """The dataset a noise manifest was drawn from (its sidecar's ``source``), checked against
    the manifest's fingerprint."""
    from noisyfr.data import open_index
    from noisyfr.noise.manifest import fingerprint_mismatch
    from noisyfr.noise.manifest import read_meta as manifest_meta

    meta = manifest_meta(data)
    src = meta.get("source")
    if not isinstance(src, str) or not src or "fingerprint" not in meta:
        raise NoisyFRError(f"{data}: manifest sidecar names no source dataset")
    if not src.startswith("synthetic:") and not Path(src).exists() \
            and (Path(data).parent / src).exists():
        src = str(Path(data).parent / src)
    index = open_index(src)
    why = fingerprint_mismatch(meta["fingerprint"], index, data)
    if why:
        raise NoisyFRError(f"{data}: its dataset {src} changed since the manifest was written ({why})")
    return _index_source(index, data, [data, src],
                         {"kind": "manifest", "manifest": Path(data).name, "dataset": src})


def _pairs_source(data: str) -> Source:
    from noisyfr.data import load_pairs
    from noisyfr.data.pairs import PairsTxtSet

    vset = load_pairs(data)
    n = int(vset.num_images)
    if isinstance(vset, PairsTxtSet):  # "<identity>/<file>", as in an ImageFolder
        paths = [f"{f.parent.name}/{f.name}" for f in vset.files]
        identities = [vset.image_identity(i) for i in range(n)]
    else:  # a .bin records no identities ("" then); a synthetic-pairs: set does
        paths = [f"{i:06d}" for i in range(n)]
        identities = [str(vset.image_identity(i) or "") for i in range(n)]
    pairs = np.column_stack([np.asarray(vset.pairs, dtype=np.int64).reshape(-1, 2),
                             np.asarray(vset.issame, dtype=np.int64)])
    return Source("pairs", data, paths, identities, vset.read_bytes, [data], pairs=pairs,
                  meta={"kind": "pairs", "set": vset.name})


def open_source(data: str) -> Source:
    """An ImageFolder, ``.rec``, ``synthetic:`` spec, noise manifest or pairs set, as a Source."""
    if not isinstance(data, str) or not data:
        raise NoisyFRError(f"DATA {data!r}: not a dataset, manifest or pairs set")
    if data.startswith("synthetic-pairs") or (not data.startswith("synthetic:") and _is_pairs(data)):
        source = _pairs_source(data)
    elif not data.startswith("synthetic:") and _is_manifest(data):
        source = _manifest_source(data)
    else:
        from noisyfr.data import open_index

        source = _index_source(open_index(data), data, [data], {"kind": "index"})
    if source.count == 0:
        raise NoisyFRError(f"{data}: has no images")
    return source


def image_hashes(source: Source, desc: str) -> list[str]:
    """SHA-256 of every image's bytes; every image decoded once. Images that cannot be decoded
    -> one NoisyFRError naming them (they would count as misses; nothing is written)."""
    from noisyfr.data.index import decode_array

    hashes, bad = [], []
    for i in tqdm(range(source.count), desc=desc, unit="img", disable=None, leave=False):
        name = source.paths[i]
        try:
            data = source.read_bytes(i)
            decode_array(data, name)
        except NoisyFRError as exc:
            bad.append(str(exc).splitlines()[0])
            hashes.append("")
            continue
        hashes.append(hashlib.sha256(data).hexdigest())
    if bad:
        raise NoisyFRError(f"{source.name}: {len(bad)} of {source.count} images cannot be decoded "
                           f"(counted as misses, nothing written): {'; '.join(bad[:3])}"
                           + (f"; and {len(bad) - 3} more" if len(bad) > 3 else ""))
    return hashes


def fingerprint_of(paths: list[str], hashes: list[str]) -> dict:
    """The content fingerprint of the images: SHA-256 over each image's key and bytes' hash."""
    h = hashlib.sha256(f"{FORMAT}\0".encode())
    for p, s in zip(paths, hashes):
        h.update(p.encode("utf-8") + b"\0" + s.encode("ascii") + b"\n")
    return {"images": len(paths), "sha256": h.hexdigest(), "of": "image keys and SHA-256 of their bytes"}


def chunk_key(model, hashes: list[str]) -> str:
    """The cache key of one chunk: format, model, preprocessing and the chunk's image hashes."""
    text = json.dumps([FORMAT, model.info, model.preprocessing, hashes], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def work_folder(out: Path) -> Path:
    """The hidden folder beside ``out`` that holds finished chunks while a run is under way."""
    return out.parent / f".{out.name}.parts"


def _load_part(path: Path, n: int, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            emb, miss = z["embedding"], z["miss"]
    except (OSError, ValueError, KeyError):
        return None  # a torn or foreign part: recomputed
    if emb.shape != (n, dim) or miss.shape != (n,) or not np.isfinite(emb).all():
        return None
    return emb.astype(np.float32), miss.astype(bool)


def _embed_chunk(model, source: Source, rows: range) -> tuple[np.ndarray, np.ndarray]:
    from noisyfr.data.index import decode_array

    images = [(source.paths[i], decode_array(source.read_bytes(i), source.paths[i])) for i in rows]
    emb, miss = model.embed(images)
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape != (len(images), model.dim):
        raise NoisyFRError(f"{source.name}: the model gave embeddings of shape {emb.shape}, "
                           f"expected ({len(images)}, {model.dim})")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise NoisyFRError(f"{source.paths[rows[int(np.flatnonzero(bad)[0])]]}: the model's "
                           f"embedding holds NaN or infinity ({int(bad.sum())} in its chunk)")
    return emb, np.asarray(miss, dtype=bool)


#: what a forked worker of :func:`_computed` embeds with: ``(model, source)``, set before the fork
_WORK: dict = {}


def _pool_chunk(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    model, source = _WORK["work"]
    return _embed_chunk(model, source, range(start, stop))


def _computed(model, source: Source, todo: list[range], workers: int):
    """``(rows, (embeddings, misses))`` of each chunk of ``todo``, in order: in this process, or
    in ``workers`` forked ones (each inherits the loaded model; a chunk is embedded by the same
    code in either, so the numbers do not depend on ``workers``)."""
    if workers <= 1 or len(todo) <= 1:
        for rows in todo:
            yield rows, _embed_chunk(model, source, rows)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _WORK["work"] = (model, source)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                               mp_context=multiprocessing.get_context("fork"))
    try:
        futures = [pool.submit(_pool_chunk, rows.start, rows.stop) for rows in todo]
        for rows, fut in zip(todo, futures):
            yield rows, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _WORK.pop("work", None)


def embed_all(model, source: Source, hashes: list[str], parts: Path,
              workers: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every image's embedding and miss flag, chunk by chunk, reusing finished chunks in ``parts``
    and computing the others in ``workers`` processes (:func:`_computed`). Returns
    ``(embeddings, misses, counts)`` with the chunks computed and reused."""
    import contextlib

    n = source.count
    emb = np.zeros((n, model.dim), dtype=np.float32)
    miss = np.zeros(n, dtype=bool)
    counts = {"computed": 0, "reused": 0}
    bar = tqdm(total=n, desc=f"features {Path(source.name).name}", unit="img", disable=None)

    def part_of(rows: range) -> Path:
        return parts / f"{chunk_key(model, hashes[rows.start:rows.stop])}.npz"

    todo = []
    try:
        for start in range(0, n, CHUNK):
            rows = range(start, min(n, start + CHUNK))
            part = part_of(rows)
            got = _load_part(part, len(rows), model.dim) if part.is_file() else None
            if got is None:
                todo.append(rows)
                continue
            counts["reused"] += 1
            emb[rows.start:rows.stop], miss[rows.start:rows.stop] = got
            bar.update(len(rows))
        with contextlib.closing(_computed(model, source, todo, workers)) as results:
            for rows, got in results:
                parts.mkdir(parents=True, exist_ok=True)
                with atomic_path(part_of(rows)) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, embedding=got[0], miss=got[1])
                counts["computed"] += 1
                emb[rows.start:rows.stop], miss[rows.start:rows.stop] = got
                bar.update(len(rows))
                bar.set_postfix(misses=int(miss.sum()), refresh=False)
    finally:
        bar.close()
    return emb, miss, counts


def up_to_date(out: Path, meta: dict) -> bool:
    """True when ``out`` is a feature file written from the same images, model and preprocessing."""
    if not out.is_file():
        return False
    try:
        old = read_meta(out)
    except NoisyFRError:
        return False
    return all(old.get(k) == meta.get(k) for k in ("model", "preprocessing", "fingerprint", "source",
                                                   "format"))


def extract(source: Source, model, out: str | Path, workers: int = 1) -> tuple[FeatureTable | None, dict]:
    """Embed ``source`` with ``model`` into the feature file ``out`` (in ``workers`` processes:
    :func:`embed_all`). Returns ``(table, counts)``; ``table`` is None when ``out`` was already
    up to date (nothing recomputed or rewritten)."""
    out = Path(out)
    hashes = image_hashes(source, f"read {Path(source.name).name}")
    meta = {"format": FORMAT, "model": model.info, "preprocessing": model.preprocessing,
            "fingerprint": fingerprint_of(source.paths, hashes), "source": source.meta,
            "chunk": CHUNK}
    if source.pairs is not None:
        meta["pairs"] = source.pairs.tolist()
    if up_to_date(out, meta):
        return None, {"computed": 0, "reused": 0, "up_to_date": True}
    parts = work_folder(out)
    if parts.is_symlink() or (parts.exists() and not parts.is_dir()):
        raise NoisyFRError(f"{parts}: the work folder beside --out is a link or a file; remove it")
    try:
        emb, miss, counts = embed_all(model, source, hashes, parts, workers)
        table = table_of(source.paths, source.identities, emb, miss, meta)
        write_features(table, out)
    except NoisyFRError:
        shutil.rmtree(parts, ignore_errors=True)  # bad input: nothing left behind
        raise
    shutil.rmtree(parts, ignore_errors=True)
    return table, counts
