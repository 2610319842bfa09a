"""``noisyfr inject``: controlled label noise -> a manifest (Parquet/CSV) + JSON sidecar.

The source dataset is never touched. Order of application (fixed; different noise types never
hit the same sample):

1. ``holdout``: ``--holdout-ids N`` identities (chosen by seed) leave the label set; their images
   become the open-set outlier pool; the remaining labels are renumbered ``0..C'-1``.
2. ``merge``: ``--merge N`` pairs of identities; every sample of the second takes the first's label.
3. ``split``: ``--split N`` identities (not merged) move ``floor(n_i/2)`` random samples each to a
   new label ``C' + k`` (appended at the end of the label space).
4. ``open``: exactly ``round(rate * M)`` still-clean samples (stratified by identity) are replaced by
   outlier images that keep the replaced sample's label (``orig_label = -1``).
5. ``closed``: exactly ``round(rate * M)`` still-clean samples (stratified) get another identity's
   label: ``symmetric`` (uniform among the other identities), ``pairwise`` (one fixed partner per
   identity) or ``nearest`` (the most cosine-similar other identity). Labels emptied by ``merge``
   are not used as targets.

Open and closed share one random order of each identity's clean samples (the first ``open_i``
become open-set, the next ``closed_i`` closed-set). Each step draws from its own child of
``numpy.random.SeedSequence(seed)``. ``M`` is the number of manifest rows (in-set samples).
"""
from __future__ import annotations

import argparse
import os
import shlex
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_tools import noise as nz
from noisyfr.data.manifest import fingerprint_dict, paths_array, write_manifest
from noisyfr.errors import NoisyFRError

CLOSED_MODES = ("symmetric", "pairwise", "nearest")
NOISE_CODES = ("clean", "closed", "open", "split", "merge")
_CLEAN, _CLOSED, _OPEN, _SPLIT, _MERGE = range(5)
ORDER = ["holdout", "merge", "split", "open", "closed"]
NEAREST_MAX_IMAGES = 32   # images per identity averaged for the nearest-identity mean image
NEAREST_IMAGE_SIZE = 32   # side of the grey thumbnail used for mean images


# --------------------------------------------------------------------------- validation

def _check_count(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise NoisyFRError(f"{name} {value!r}: must be a non-negative integer")
    return int(value)


def _check_options(closed, closed_mode, open_, outliers, holdout_ids, split, merge, seed, embeddings):
    try:
        closed = nz.check_rate("--closed", closed)
        open_ = nz.check_rate("--open", open_)
    except ValueError as exc:
        raise NoisyFRError(str(exc)) from None
    if closed + open_ > 1.0 + 1e-12:
        raise NoisyFRError(f"--closed {closed} + --open {open_}: rates sum to {closed + open_:g} > 1")
    if closed_mode not in CLOSED_MODES:
        raise NoisyFRError(f"--closed-mode {closed_mode!r}: must be one of {', '.join(CLOSED_MODES)}")
    holdout_ids = _check_count("--holdout-ids", holdout_ids)
    split = _check_count("--split", split)
    merge = _check_count("--merge", merge)
    seed = _check_count("--seed", seed)
    if outliers is not None and holdout_ids:
        raise NoisyFRError("--outliers and --holdout-ids: give one outlier source, not both")
    if open_ > 0 and outliers is None and not holdout_ids:
        raise NoisyFRError(f"--open {open_}: needs an outlier source (--outliers DIR or --holdout-ids N)")
    if embeddings is not None and closed_mode != "nearest":
        raise NoisyFRError(f"--embeddings: only used with --closed-mode nearest, not {closed_mode!r}")
    return closed, open_, holdout_ids, split, merge, seed


def build_command(source: str, out, *, closed=0.0, closed_mode="symmetric", open=0.0, outliers=None,
                  holdout_ids=0, split=0, merge=0, seed=0, embeddings=None) -> str:
    """The ``noisyfr inject`` command line equivalent to these options (recorded in the sidecar)."""
    argv = ["noisyfr", "inject", str(source), "--out", str(out)]
    if closed:
        argv += ["--closed", repr(float(closed)), "--closed-mode", closed_mode]
    if embeddings is not None:
        argv += ["--embeddings", str(embeddings) if isinstance(embeddings, (str, os.PathLike)) else "<array>"]
    if open:
        argv += ["--open", repr(float(open))]
    if outliers is not None:
        argv += ["--outliers", str(getattr(outliers, "source", outliers))]
    if holdout_ids:
        argv += ["--holdout-ids", str(holdout_ids)]
    if split:
        argv += ["--split", str(split)]
    if merge:
        argv += ["--merge", str(merge)]
    argv += ["--seed", str(seed)]
    return shlex.join(argv)


# --------------------------------------------------------------------------- inputs

def _open_outliers(outliers, index):
    """Open the outlier folder (or take a ready FaceIndex) and refuse shared identity names."""
    from noisyfr.data.index import FaceIndex

    if isinstance(outliers, FaceIndex):
        pool = outliers
        name = str(getattr(pool, "source", "outliers"))
    else:
        path = Path(outliers)
        name = str(path)
        if not path.exists():
            raise NoisyFRError(f"--outliers {path}: folder not found")
        if not path.is_dir():
            raise NoisyFRError(f"--outliers {path}: not a folder (expected an ImageFolder of out-of-set identities)")
        if not any(path.iterdir()):
            raise NoisyFRError(f"--outliers {path}: folder is empty")
        from noisyfr.data import open_index

        pool = open_index(str(path))
    if len(pool) == 0:
        raise NoisyFRError(f"--outliers {name}: no images")
    shared = sorted(set(pool.identities) & set(index.identities))
    if shared:
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        raise NoisyFRError(f"--outliers {name}: shares identities with the dataset: "
                           f"{', '.join(shared[:3])}{more}")
    return pool


def _identity_features_from_embeddings(embeddings, index, rows, labels, kept, num_ids):
    name = str(embeddings) if isinstance(embeddings, (str, os.PathLike)) else "<embeddings array>"
    if isinstance(embeddings, (str, os.PathLike)):
        try:
            emb = np.load(embeddings, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise NoisyFRError(f"--embeddings {name}: cannot read ({str(exc).splitlines()[0]})") from None
    else:
        emb = np.asarray(embeddings)
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
        raise NoisyFRError(f"--embeddings {name}: expected a numeric [N, d] array, got shape {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise NoisyFRError(f"--embeddings {name}: contains NaN or infinite values")
    if emb.shape[0] == len(index):
        import torch

        src = torch.from_numpy(np.ascontiguousarray(emb if rows is None else emb[rows], dtype=np.float64))
        src = torch.nn.functional.normalize(src, dim=1)
        feats = torch.zeros(num_ids, emb.shape[1], dtype=torch.float64)
        feats.index_add_(0, torch.from_numpy(labels), src)
        return feats.numpy()
    if emb.shape[0] == index.num_identities:
        return np.asarray(emb[kept], dtype=np.float64)
    raise NoisyFRError(f"--embeddings {name}: {emb.shape[0]} rows, expected one per sample "
                       f"({len(index)}) or per identity ({index.num_identities})")


def _identity_features_from_images(index, rows, labels, num_ids):
    """Per-identity mean of small grey thumbnails (up to NEAREST_MAX_IMAGES each), centred."""
    import torch
    from torchvision.transforms.v2 import functional as F
    from tqdm import tqdm

    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=num_ids)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.arange(len(order)) - starts[labels[order]]
    use = order[rank < NEAREST_MAX_IMAGES]
    use.sort()
    s = NEAREST_IMAGE_SIZE
    feats = np.zeros((num_ids, s * s), dtype=np.float64)
    for j in tqdm(use, desc="mean images", unit="img", disable=None):
        img = index.load_image(int(j if rows is None else rows[j])).float().mean(dim=0, keepdim=True)
        thumb = F.resize(img, [s, s], antialias=True).reshape(-1).numpy()
        feats[labels[j]] += thumb
    counts = np.bincount(labels[use], minlength=num_ids).astype(np.float64)
    feats /= np.maximum(counts, 1.0)[:, None]
    present = counts > 0
    if present.any():
        feats[present] -= feats[present].mean(axis=0)
    return feats


# --------------------------------------------------------------------------- the API

class _Job:
    """``fn(*args)`` run in a thread: for work that releases the GIL (hashing, arrow kernels,
    Parquet encoding), so that it overlaps the numpy work of the caller on a second core.
    :meth:`result` waits and returns the value or re-raises the exception. Not a daemon: an
    interrupted caller still lets a started write finish (and rename) or clean up its temp file."""

    def __init__(self, fn, *args):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=False,
                                        name="noisyfr-inject")
        self._thread.start()

    def _run(self, fn, args):
        try:
            self._value = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _path_column(index_paths: pa.Array, rows, open_mask, open_source: pa.Array | None,
                 open_rows) -> pa.Array:
    """The manifest's ``path`` column: the in-set rows' paths, the open-set rows (``open_mask``)
    replaced by ``open_source[open_rows]``."""
    col = index_paths if rows is None else index_paths.take(pa.array(rows))
    if open_source is not None:
        col = pc.replace_with_mask(col, pa.array(open_mask), open_source.take(pa.array(open_rows)))
    return col


def build_manifest(index, *, closed=0.0, closed_mode="symmetric", open=0.0, outliers=None,
                   holdout_ids=0, split=0, merge=0, seed=0, embeddings=None, command=None,
                   out=None) -> tuple[pa.Table, dict]:
    """Compute the noisy manifest of ``index`` without writing anything: ``(arrow Table, meta)``.

    Same arguments as :func:`inject_index` (``out`` only feeds the reconstructed command line).
    """
    from noisyfr import __version__
    from noisyfr.data.index import FaceIndex

    closed, open_, holdout_ids, split, merge, seed = _check_options(
        closed, closed_mode, open, outliers, holdout_ids, split, merge, seed, embeddings)
    source = str(getattr(index, "source", "<index>"))
    n_all = len(index)
    if n_all == 0:
        raise NoisyFRError(f"{source}: dataset has no samples")
    labels0 = np.asarray(index.labels, dtype=np.int64)
    identities = list(index.identities)
    c_all = len(identities)
    if labels0.min() < 0 or labels0.max() >= c_all:
        raise NoisyFRError(f"{source}: labels outside 0..{c_all - 1}")
    if command is None:
        command = build_command(source, out if out is not None else "<memory>", closed=closed,
                                closed_mode=closed_mode, open=open_, outliers=outliers,
                                holdout_ids=holdout_ids, split=split, merge=merge, seed=seed,
                                embeddings=embeddings)
    rng_hold, rng_merge, rng_split, rng_open, rng_draw, rng_closed, rng_select = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7))

    # 1. holdout -> in-set rows, renumbered labels
    if holdout_ids > c_all - 2:
        raise NoisyFRError(f"--holdout-ids {holdout_ids}: {source} has {c_all} identities; "
                           f"at least 2 must stay in the label set")
    held = np.sort(nz.choose_identities(np.arange(c_all), holdout_ids, rng_hold))
    keep_mask = np.ones(c_all, dtype=bool)
    keep_mask[held] = False
    kept = np.flatnonzero(keep_mask)
    remap = np.full(c_all, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    # rows: in-set rows of the index (None when all are in the set: saves two N-sized arrays)
    if holdout_ids:
        in_set = remap[labels0] >= 0
        rows = np.flatnonzero(in_set)
        m = len(rows)
    else:  # nothing held out: remap is the identity
        in_set, rows, m = None, None, n_all
    if m == 0:
        raise NoisyFRError(f"--holdout-ids {holdout_ids}: no samples left in the label set")
    labels = labels0.copy() if rows is None else remap[labels0[rows]]
    c_in = len(kept)
    sizes = np.bincount(labels, minlength=c_in)

    pool = None
    if outliers is not None:
        pool = _open_outliers(outliers, index)
        pool_size = len(pool)
    else:
        held_rows = np.flatnonzero(~in_set) if in_set is not None else np.zeros(0, dtype=np.int64)
        pool_size = len(held_rows)

    final = labels.copy()
    noise = np.zeros(m, dtype=np.int8)

    # 2. merge
    merge_info = []
    if merge:
        candidates = np.flatnonzero(sizes > 0)
        if 2 * merge > len(candidates):
            raise NoisyFRError(f"--merge {merge}: needs {2 * merge} identities with samples, "
                               f"{source} has {len(candidates)} in the label set")
        pairs = nz.choose_identities(candidates, 2 * merge, rng_merge).reshape(merge, 2)
        target = np.arange(c_in)
        target[pairs[:, 1]] = pairs[:, 0]
        hit = np.isin(labels, pairs[:, 1])
        final[hit] = target[labels[hit]]
        noise[hit] = _MERGE
        merge_info = [{"label": int(a), "identity": identities[kept[a]], "merged_label": int(b),
                       "merged_identity": identities[kept[b]], "samples": int(sizes[b])}
                      for a, b in pairs]
        merged_ids = pairs.reshape(-1)
    else:
        merged_ids = np.zeros(0, dtype=np.int64)

    # 3. split
    split_info = []
    if split:
        ok = sizes >= 2
        ok[merged_ids] = False
        candidates = np.flatnonzero(ok)
        if split > len(candidates):
            raise NoisyFRError(f"--split {split}: needs {split} identities with >= 2 samples (not merged), "
                               f"{source} has {len(candidates)}")
        chosen = nz.choose_identities(candidates, split, rng_split)
        hit = nz.split_mask(labels, chosen, rng_split, c_in)
        new_label = np.full(c_in, -1, dtype=np.int64)
        new_label[chosen] = c_in + np.arange(split)
        final[hit] = new_label[labels[hit]]
        noise[hit] = _SPLIT
        split_info = [{"label": int(a), "identity": identities[kept[a]], "new_label": int(c_in + k),
                       "samples": int(sizes[a] // 2)} for k, a in enumerate(chosen)]
    else:
        chosen = np.zeros(0, dtype=np.int64)
    num_classes = c_in + split

    # 4. open and 5. closed: exact stratified counts over the still-clean samples, then one random
    # order per identity: the first open_i samples become open-set, the next closed_i closed-set.
    if merge or split:
        eligible = noise == _CLEAN
        clean_sizes = np.bincount(labels[eligible], minlength=c_in)
    else:  # every sample is still clean
        eligible, clean_sizes = None, sizes
    n_clean = int(clean_sizes.sum())
    need_open, need_closed = nz.exact_count(open_, m), nz.exact_count(closed, m)
    if need_open > n_clean:
        raise NoisyFRError(f"--open {open_}: needs {need_open} clean samples, "
                           f"only {n_clean} left after split/merge")
    if need_open + need_closed > n_clean:
        raise NoisyFRError(f"--closed {closed}: needs {need_closed} clean samples, "
                           f"only {n_clean - need_open} left after split/merge/open")
    # The index's paths as one arrow array (needs the GIL); its fingerprint is hashed in a
    # background thread while the noise is drawn.
    index_paths = paths_array(index)
    fingerprint_job = _Job(fingerprint_dict, index, index_paths)
    open_counts = nz.stratified_counts(clean_sizes, open_, rng_open, reference=m)
    closed_counts = nz.stratified_counts(clean_sizes - open_counts, closed, rng_closed, reference=m)
    if open_ > 0 or closed > 0:
        codes = nz.select_rounds(labels, [open_counts, closed_counts], rng_select,
                                 None if n_clean == m else eligible)
        open_mask = codes == 1
        closed_mask = codes == 2
        del codes
    else:
        open_mask = closed_mask = np.zeros(m, dtype=bool)
    n_open = int(open_counts.sum())

    source_is_pool = None
    draws = None
    pool_paths = open_source = open_src_rows = None
    if n_open:
        draws = nz.draw_outliers(pool_size, n_open, rng_draw)
        noise[open_mask] = _OPEN
        source_is_pool = pool is not None
        if source_is_pool:
            pool_paths = open_source = paths_array(pool)
            open_src_rows = draws
        else:
            open_source, open_src_rows = index_paths, held_rows[draws]
    # the path column is gathered by arrow in a background thread while labels are flipped
    path_job = _Job(_path_column, index_paths, rows, open_mask, open_source, open_src_rows)

    nearest_info = None
    if closed > 0:
        # flip targets: in-set identities still owning their label (not merged away), compacted
        active = np.ones(c_in, dtype=bool)
        if merge:
            active[pairs[:, 1]] = False
        targets = np.flatnonzero(active)
        if len(targets) < 2:
            raise NoisyFRError(f"--closed {closed}: needs at least 2 identities in the label set")
        compact = np.full(c_in, -1, dtype=np.int64)
        compact[targets] = np.arange(len(targets))
        true = compact[labels[closed_mask]]
        if closed_mode == "symmetric":
            flipped = nz.symmetric_flip(true, rng_closed, len(targets))
        elif closed_mode == "pairwise":
            flipped = nz.pairwise_partners(len(targets), rng_closed)[true]
        else:
            if embeddings is not None:
                feats = _identity_features_from_embeddings(embeddings, index, rows, labels, kept, c_in)
                nearest_info = {"features": "embeddings",
                                "embeddings": str(embeddings) if isinstance(embeddings, (str, os.PathLike)) else None}
            else:
                feats = _identity_features_from_images(index, rows, labels, c_in)
                nearest_info = {"features": "mean_images", "max_images": NEAREST_MAX_IMAGES,
                                "image_size": NEAREST_IMAGE_SIZE}
            partners = nz.nearest_partners(feats[targets])
            flipped = partners[true]
            nearest_info["partners"] = {str(int(targets[a])): int(targets[b]) for a, b in enumerate(partners)}
        final[closed_mask] = targets[flipped]
        noise[closed_mask] = _CLOSED

    orig = labels  # no longer needed as "labels" below
    orig[open_mask] = -1

    # Columns as arrow arrays: strings are gathered in C++ (no per-sample Python work);
    # identity / noise / source are dictionary-encoded.
    name_code = labels0 if holdout_ids == 0 else labels0[rows]
    name_code = name_code.astype(np.int32)
    names = pa.array(identities, type=pa.string())
    source_index = rows.copy() if holdout_ids else np.arange(m, dtype=np.int64)
    source_code = np.zeros(m, dtype=np.int8)  # 0: index, 1: outliers
    if n_open:
        open_rows = np.flatnonzero(open_mask)
        if source_is_pool:
            pool_labels = np.asarray(pool.labels, dtype=np.int64)
            names = pa.concat_arrays([names, pa.array(list(pool.identities), type=pa.string())])
            name_code[open_rows] = c_all + pool_labels[draws]
            source_code[open_rows] = 1
            source_index[open_rows] = draws
        else:
            src = held_rows[draws]
            name_code[open_rows] = labels0[src]
            source_index[open_rows] = src
    index_fingerprint = fingerprint_job.result()  # first: it names a paths/labels mismatch
    path_col = path_job.result()
    del index_paths
    table = pa.table({
        "index": pa.array(np.arange(m, dtype=np.int64)),
        "path": path_col,
        "identity": pa.DictionaryArray.from_arrays(pa.array(name_code), names),
        "orig_label": pa.array(orig),
        "label": pa.array(final),
        "noise": pa.DictionaryArray.from_arrays(pa.array(noise), pa.array(list(NOISE_CODES))),
        "source": pa.DictionaryArray.from_arrays(pa.array(source_code), pa.array(["index", "outliers"])),
        "source_index": pa.array(source_index),
    })

    per_code = np.bincount(noise.view(np.uint8), minlength=len(NOISE_CODES))
    counts = {name: int(per_code[code]) for code, name in enumerate(NOISE_CODES)}
    rates = {name: counts[name] / m for name in NOISE_CODES}
    rates["noisy"] = 1.0 - rates["clean"]
    outlier_meta = None
    if pool is not None:
        root = getattr(pool, "source", None)
        if root is not None and not str(root).startswith("synthetic:") and os.path.exists(str(root)):
            root = str(Path(root).resolve())
        kind = "index" if isinstance(outliers, FaceIndex) else "folder"
        outlier_meta = {"kind": kind, "root": None if root is None else str(root),
                        "fingerprint": fingerprint_dict(pool, pool_paths), "pool": int(len(pool))}
    elif holdout_ids:
        outlier_meta = {"kind": "holdout", "root": None, "pool": int(pool_size)}
    classes = [identities[k] for k in kept] + [f"{identities[kept[a]]}#split" for a in chosen]
    meta = {
        "format": "noisyfr-manifest/1",
        "version": __version__,
        "command": command,
        "seed": seed,
        "source": source,
        "fingerprint": index_fingerprint,
        "samples": int(m),
        "num_classes": int(num_classes),
        "num_identities": int(c_in),
        "order": ORDER,
        "requested": {"closed": closed, "closed_mode": closed_mode, "open": open_,
                      "holdout_ids": holdout_ids, "split": split, "merge": merge},
        "counts": counts,
        "rates": rates,
        "outliers": outlier_meta,
        "holdout": {"labels": held.tolist(), "identities": [identities[h] for h in held]},
        "label_map": kept.tolist() if holdout_ids else None,
        "classes": classes,
        "merge": merge_info,
        "split": split_info,
        "nearest": nearest_info,
    }
    return table, meta


def inject_index(index, out, *, closed=0.0, closed_mode="symmetric", open=0.0, outliers=None,
                 holdout_ids=0, split=0, merge=0, seed=0, embeddings=None,
                 command=None) -> tuple[pd.DataFrame, dict]:
    """Inject label noise into ``index`` and write the manifest ``out`` (+ ``out.json``).

    - ``closed``: rate of closed-set flips, ``closed_mode`` in ``symmetric|pairwise|nearest``
      (``nearest`` uses ``embeddings`` — a ``.npy`` path or array, one row per sample or per
      identity — or else per-identity mean images);
    - ``open``: rate of samples replaced by out-of-set images from ``outliers`` (an ImageFolder
      path or a FaceIndex) or from ``holdout_ids`` identities removed from the label set;
    - ``split``: number of identities split over two labels; ``merge``: number of identity pairs
      sharing one label; ``seed``: the only source of randomness;
    - ``command``: the command line recorded in the sidecar (reconstructed when None).

    Output is Parquet, or CSV when ``out`` ends ``.csv``. Invalid options raise NoisyFRError before
    anything is written. Returns ``(manifest DataFrame, meta dict)``.
    """
    out = Path(out)
    if out.is_dir():
        raise NoisyFRError(f"--out {out}: is a folder, expected a manifest file path")
    table, meta = build_manifest(index, closed=closed, closed_mode=closed_mode, open=open,
                                 outliers=outliers, holdout_ids=holdout_ids, split=split, merge=merge,
                                 seed=seed, embeddings=embeddings, command=command, out=out)
    # Parquet encoding (C++, no GIL) overlaps the conversion of the returned DataFrame
    writer = _Job(write_manifest, table, meta, out)
    try:
        df = table.to_pandas(split_blocks=True)
    finally:
        writer.result()
    return df, meta


def summary(out, meta: dict) -> str:
    """One paragraph describing a written manifest: counts and actual rates per noise type."""
    c, r = meta["counts"], meta["rates"]
    parts = [f"clean {c['clean']} ({r['clean']:.2%})"]
    for name in ("closed", "open", "split", "merge"):
        if c[name] or meta["requested"].get(name):
            label = f"closed/{meta['requested']['closed_mode']}" if name == "closed" else name
            parts.append(f"{label} {c[name]} ({r[name]:.2%})")
    hold = len(meta["holdout"]["labels"])
    extra = f"; {hold} identities held out" if hold else ""
    return (f"noisyfr inject: wrote {out} and {out}.json: {meta['samples']} samples, "
            f"{meta['num_classes']} classes, seed {meta['seed']}{extra}; " + ", ".join(parts)
            + f"; noisy {meta['samples'] - c['clean']} ({r['noisy']:.2%}).")


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``noisyfr inject``."""
    parser.add_argument("data", metavar="DATA", help="dataset: ImageFolder dir, train.rec, or synthetic:...")
    parser.add_argument("--out", required=True, metavar="MANIFEST",
                        help="manifest to write (Parquet; CSV when it ends .csv); sidecar MANIFEST.json")
    parser.add_argument("--closed", type=float, default=0.0, metavar="RATE",
                        help="closed-set noise rate in [0, 1] (default 0)")
    parser.add_argument("--closed-mode", default="symmetric", choices=CLOSED_MODES,
                        help="closed-set flip target (default symmetric)")
    parser.add_argument("--embeddings", default=None, metavar="NPY",
                        help="for --closed-mode nearest: [N, d] per-sample or [C, d] per-identity embeddings "
                             "(default: per-identity mean images)")
    parser.add_argument("--open", type=float, default=0.0, metavar="RATE",
                        help="open-set noise rate in [0, 1] (default 0); needs --outliers or --holdout-ids")
    parser.add_argument("--outliers", default=None, metavar="DIR",
                        help="ImageFolder of out-of-set identities used as open-set images")
    parser.add_argument("--holdout-ids", type=int, default=0, metavar="N",
                        help="hold N identities out of the label set and use them as outliers")
    parser.add_argument("--split", type=int, default=0, metavar="N",
                        help="split N identities over two labels each (Type-II noise)")
    parser.add_argument("--merge", type=int, default=0, metavar="N",
                        help="merge N pairs of identities into one label each")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Run ``noisyfr inject``: validate the options, open DATA, write the manifest, print a summary."""
    opts = dict(closed=args.closed, closed_mode=args.closed_mode, open=args.open, outliers=args.outliers,
                holdout_ids=args.holdout_ids, split=args.split, merge=args.merge, seed=args.seed,
                embeddings=args.embeddings)
    _check_options(opts["closed"], opts["closed_mode"], opts["open"], opts["outliers"], opts["holdout_ids"],
                   opts["split"], opts["merge"], opts["seed"], opts["embeddings"])
    from noisyfr.data import open_index

    index = open_index(args.data)
    command = build_command(args.data, args.out, **opts)
    _, meta = inject_index(index, args.out, command=command, **opts)
    print(summary(args.out, meta))
    return 0
