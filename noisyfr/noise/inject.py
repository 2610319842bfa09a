"""Controlled label noise: ``inject(index, spec) -> Manifest``. The source dataset is never touched.

Order of application (fixed; different noise types never hit the same sample):

1. ``holdout``: ``holdout_ids`` identities (chosen by seed) leave the label set; their images
   become the open-set outlier pool; the remaining labels are renumbered ``0..C'-1``.
2. ``merge``: ``merge`` pairs of identities; every sample of the second takes the first's label.
3. ``split``: ``split`` identities (not merged) move ``floor(n_i/2)`` random samples each to a
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
Each step is one function of the labels and its random generator, in :mod:`noisyfr.noise.draw`.
"""
from __future__ import annotations

import os
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from noisyfr.errors import NoisyFRError
from noisyfr.noise import draw as nz
from noisyfr.noise.manifest import fingerprint_dict, paths_array, write_manifest
from noisyfr.noise.nearest import (
    NEAREST_IMAGE_SIZE,
    NEAREST_MAX_IMAGES,
    identity_features_from_embeddings,
    identity_features_from_images,
)
from noisyfr.noise.spec import NOISE_TYPES, NoiseSpec, cli_flag

_CLEAN, _CLOSED, _OPEN, _SPLIT, _MERGE = range(len(NOISE_TYPES))
ORDER = ["holdout", "merge", "split", "open", "closed"]


@dataclass
class Manifest:
    """An injected manifest in memory: the arrow ``table`` (columns of
    :mod:`noisyfr.noise.manifest`) and its sidecar ``meta``. ``frame`` converts to pandas on
    first use; :meth:`write` writes both files atomically."""

    table: pa.Table
    meta: dict
    _frame: pd.DataFrame | None = None

    @property
    def frame(self) -> pd.DataFrame:
        """The manifest as a DataFrame (converted once)."""
        if self._frame is None:
            self._frame = self.table.to_pandas(split_blocks=True)
        return self._frame

    def write(self, path: str | os.PathLike) -> Path:
        """Write the manifest (Parquet, or CSV when ``path`` ends ``.csv``) and ``path + '.json'``."""
        return write_manifest(self.table, self.meta, path)


def build_command(source: str, out, spec: NoiseSpec) -> str:
    """The ``noisyfr inject`` command line equivalent to ``spec`` (recorded in the sidecar)."""
    argv = ["noisyfr", "inject", str(source), "--out", str(out)]
    if spec.closed:
        argv += ["--closed", repr(float(spec.closed)), "--closed-mode", spec.closed_mode]
    if spec.embeddings is not None:
        argv += ["--embeddings", spec.embeddings if isinstance(spec.embeddings, str) else "<array>"]
    if spec.open:
        argv += ["--open", repr(float(spec.open))]
    if spec.outliers is not None:
        argv += ["--outliers", str(getattr(spec.outliers, "source", spec.outliers))]
    for key in ("holdout_ids", "split", "merge"):
        if getattr(spec, key):
            argv += [cli_flag(key), str(getattr(spec, key))]
    argv += ["--seed", str(spec.seed or 0)]
    return shlex.join(argv)


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


# --------------------------------------------------------------------------- inputs

def _open_outliers(outliers, index):
    """Open the outlier folder (or take a ready FaceIndex) and refuse shared identity names."""
    from noisyfr.data.index import FaceIndex

    flag = cli_flag("outliers")
    if isinstance(outliers, FaceIndex):
        pool = outliers
        name = str(getattr(pool, "source", "outliers"))
    else:
        path = Path(outliers)
        name = str(path)
        if not path.exists():
            raise NoisyFRError(f"{flag} {path}: folder not found")
        if not path.is_dir():
            raise NoisyFRError(f"{flag} {path}: not a folder (expected an ImageFolder of out-of-set identities)")
        if not any(path.iterdir()):
            raise NoisyFRError(f"{flag} {path}: folder is empty")
        from noisyfr.data import open_index

        pool = open_index(str(path))
    if len(pool) == 0:
        raise NoisyFRError(f"{flag} {name}: no images")
    shared = sorted(set(pool.identities) & set(index.identities))
    if shared:
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        raise NoisyFRError(f"{flag} {name}: shares identities with the dataset: "
                           f"{', '.join(shared[:3])}{more}")
    return pool


def _path_column(index_paths: pa.Array, rows, open_mask, open_source: pa.Array | None,
                 open_rows) -> pa.Array:
    """The manifest's ``path`` column: the in-set rows' paths, the open-set rows (``open_mask``)
    replaced by ``open_source[open_rows]``."""
    col = index_paths if rows is None else index_paths.take(pa.array(rows))
    if open_source is not None:
        col = pc.replace_with_mask(col, pa.array(open_mask), open_source.take(pa.array(open_rows)))
    return col


# --------------------------------------------------------------------------- the steps

class _Injection:
    """The state of one injection, carried through the steps of :func:`inject` in order."""

    def __init__(self, index, spec: NoiseSpec):
        self.index, self.spec = index, spec
        self.source = str(getattr(index, "source", "<index>"))
        n_all = len(index)
        if n_all == 0:
            raise NoisyFRError(f"{self.source}: dataset has no samples")
        self.labels0 = np.asarray(index.labels, dtype=np.int64)
        self.identities = list(index.identities)
        self.c_all = len(self.identities)
        if self.labels0.min() < 0 or self.labels0.max() >= self.c_all:
            raise NoisyFRError(f"{self.source}: labels outside 0..{self.c_all - 1}")
        (self.rng_hold, self.rng_merge, self.rng_split, self.rng_open, self.rng_draw,
         self.rng_closed, self.rng_select) = (
            np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed or 0).spawn(7))

    def holdout(self) -> None:
        """Step 1: in-set rows and renumbered labels; the outlier pool's size."""
        n, c_all, spec = len(self.index), self.c_all, self.spec
        if spec.holdout_ids > c_all - 2:
            raise NoisyFRError(f"{cli_flag('holdout_ids')} {spec.holdout_ids}: {self.source} has {c_all} "
                               "identities; at least 2 must stay in the label set")
        self.held = np.sort(nz.choose_identities(np.arange(c_all), spec.holdout_ids, self.rng_hold))
        keep_mask = np.ones(c_all, dtype=bool)
        keep_mask[self.held] = False
        self.kept = np.flatnonzero(keep_mask)
        remap = np.full(c_all, -1, dtype=np.int64)
        remap[self.kept] = np.arange(len(self.kept))
        # rows: in-set rows of the index (None when all are in the set: saves two N-sized arrays)
        if spec.holdout_ids:
            in_set = remap[self.labels0] >= 0
            self.rows = np.flatnonzero(in_set)
            self.held_rows = np.flatnonzero(~in_set)
        else:  # nothing held out: remap is the identity
            self.rows, self.held_rows = None, np.zeros(0, dtype=np.int64)
        self.m = n if self.rows is None else len(self.rows)
        if self.m == 0:
            raise NoisyFRError(f"{cli_flag('holdout_ids')} {spec.holdout_ids}: no samples left in the label set")
        self.labels = self.labels0.copy() if self.rows is None else remap[self.labels0[self.rows]]
        self.c_in = len(self.kept)
        self.sizes = np.bincount(self.labels, minlength=self.c_in)
        self.pool = _open_outliers(spec.outliers, self.index) if spec.outliers is not None else None
        self.pool_size = len(self.pool) if self.pool is not None else len(self.held_rows)
        self.final = self.labels.copy()
        self.noise = np.zeros(self.m, dtype=np.int8)

    def _name(self, label: int) -> str:
        return self.identities[self.kept[label]]

    def merge(self) -> None:
        """Step 2: ``merge`` pairs of identities share the first one's label."""
        k = self.spec.merge
        self.merge_info, self.pairs, self.merged_ids = [], None, np.zeros(0, dtype=np.int64)
        if not k:
            return
        candidates = np.flatnonzero(self.sizes > 0)
        if 2 * k > len(candidates):
            raise NoisyFRError(f"{cli_flag('merge')} {k}: needs {2 * k} identities with samples, "
                               f"{self.source} has {len(candidates)} in the label set")
        pairs = nz.choose_identities(candidates, 2 * k, self.rng_merge).reshape(k, 2)
        target = np.arange(self.c_in)
        target[pairs[:, 1]] = pairs[:, 0]
        hit = np.isin(self.labels, pairs[:, 1])
        self.final[hit] = target[self.labels[hit]]
        self.noise[hit] = _MERGE
        self.merge_info = [{"label": int(a), "identity": self._name(a), "merged_label": int(b),
                            "merged_identity": self._name(b), "samples": int(self.sizes[b])}
                           for a, b in pairs]
        self.pairs, self.merged_ids = pairs, pairs.reshape(-1)

    def split(self) -> None:
        """Step 3: ``split`` identities give half their samples to a new label each."""
        k, c_in = self.spec.split, self.c_in
        self.split_info, self.chosen = [], np.zeros(0, dtype=np.int64)
        if k:
            ok = self.sizes >= 2
            ok[self.merged_ids] = False
            candidates = np.flatnonzero(ok)
            if k > len(candidates):
                raise NoisyFRError(f"{cli_flag('split')} {k}: needs {k} identities with >= 2 samples "
                                   f"(not merged), {self.source} has {len(candidates)}")
            chosen = nz.choose_identities(candidates, k, self.rng_split)
            hit = nz.split_mask(self.labels, chosen, self.rng_split, c_in)
            new_label = np.full(c_in, -1, dtype=np.int64)
            new_label[chosen] = c_in + np.arange(k)
            self.final[hit] = new_label[self.labels[hit]]
            self.noise[hit] = _SPLIT
            self.split_info = [{"label": int(a), "identity": self._name(a), "new_label": int(c_in + i),
                                "samples": int(self.sizes[a] // 2)} for i, a in enumerate(chosen)]
            self.chosen = chosen
        self.num_classes = c_in + k

    def select_open_closed(self) -> None:
        """Steps 4-5 (selection): exact stratified counts over the still-clean samples, then one
        random order per identity: the first open_i samples become open-set, the next closed_i
        closed-set. Starts hashing the index's fingerprint in the background."""
        spec, m = self.spec, self.m
        if spec.merge or spec.split:
            eligible = self.noise == _CLEAN
            clean_sizes = np.bincount(self.labels[eligible], minlength=self.c_in)
        else:  # every sample is still clean
            eligible, clean_sizes = None, self.sizes
        n_clean = int(clean_sizes.sum())
        need_open, need_closed = nz.exact_count(spec.open, m), nz.exact_count(spec.closed, m)
        if need_open > n_clean:
            raise NoisyFRError(f"{cli_flag('open')} {spec.open}: needs {need_open} clean samples, "
                               f"only {n_clean} left after split/merge")
        if need_open + need_closed > n_clean:
            raise NoisyFRError(f"{cli_flag('closed')} {spec.closed}: needs {need_closed} clean samples, "
                               f"only {n_clean - need_open} left after split/merge/open")
        # The index's paths as one arrow array (needs the GIL); its fingerprint is hashed in a
        # background thread while the noise is drawn.
        self.index_paths = paths_array(self.index)
        self.fingerprint_job = _Job(fingerprint_dict, self.index, self.index_paths)
        open_counts = nz.stratified_counts(clean_sizes, spec.open, self.rng_open, reference=m)
        closed_counts = nz.stratified_counts(clean_sizes - open_counts, spec.closed, self.rng_closed,
                                             reference=m)
        if spec.open > 0 or spec.closed > 0:
            codes = nz.select_rounds(self.labels, [open_counts, closed_counts], self.rng_select,
                                     None if n_clean == m else eligible)
            self.open_mask, self.closed_mask = codes == 1, codes == 2
        else:
            self.open_mask = self.closed_mask = np.zeros(m, dtype=bool)
        self.n_open = int(open_counts.sum())

    def open_set(self) -> None:
        """Step 4: draw the outlier images; gather the path column in the background."""
        self.draws = self.pool_paths = open_source = open_rows = None
        if self.n_open:
            self.draws = nz.draw_outliers(self.pool_size, self.n_open, self.rng_draw)
            self.noise[self.open_mask] = _OPEN
            if self.pool is not None:
                self.pool_paths = open_source = paths_array(self.pool)
                open_rows = self.draws
            else:
                open_source, open_rows = self.index_paths, self.held_rows[self.draws]
        self.path_job = _Job(_path_column, self.index_paths, self.rows, self.open_mask, open_source,
                             open_rows)

    def closed_set(self) -> None:
        """Step 5: flip the selected samples' labels to other in-set identities."""
        spec, self.nearest_info = self.spec, None
        if spec.closed <= 0:
            return
        # flip targets: in-set identities still owning their label (not merged away), compacted
        active = np.ones(self.c_in, dtype=bool)
        if self.pairs is not None:
            active[self.pairs[:, 1]] = False
        targets = np.flatnonzero(active)
        if len(targets) < 2:
            raise NoisyFRError(f"{cli_flag('closed')} {spec.closed}: needs at least 2 identities in the label set")
        compact = np.full(self.c_in, -1, dtype=np.int64)
        compact[targets] = np.arange(len(targets))
        true = compact[self.labels[self.closed_mask]]
        if spec.closed_mode == "symmetric":
            flipped = nz.symmetric_flip(true, self.rng_closed, len(targets))
        elif spec.closed_mode == "pairwise":
            flipped = nz.pairwise_partners(len(targets), self.rng_closed)[true]
        else:
            partners = nz.nearest_partners(self._nearest_features()[targets])
            flipped = partners[true]
            self.nearest_info["partners"] = {str(int(targets[a])): int(targets[b])
                                             for a, b in enumerate(partners)}
        self.final[self.closed_mask] = targets[flipped]
        self.noise[self.closed_mask] = _CLOSED

    def _nearest_features(self) -> np.ndarray:
        emb = self.spec.embeddings
        if emb is not None:
            self.nearest_info = {"features": "embeddings",
                                 "embeddings": emb if isinstance(emb, str) else None}
            return identity_features_from_embeddings(emb, self.index, self.rows, self.labels,
                                                      self.kept, self.c_in)
        self.nearest_info = {"features": "mean_images", "max_images": NEAREST_MAX_IMAGES,
                             "image_size": NEAREST_IMAGE_SIZE}
        return identity_features_from_images(self.index, self.rows, self.labels, self.c_in)

    def table(self) -> pa.Table:
        """The manifest columns as arrow arrays: strings are gathered in C++ (no per-sample
        Python work); identity / noise / source are dictionary-encoded."""
        m, rows, holdout = self.m, self.rows, self.spec.holdout_ids
        orig = self.labels  # no longer needed as "labels" below
        orig[self.open_mask] = -1
        name_code = (self.labels0 if holdout == 0 else self.labels0[rows]).astype(np.int32)
        names = pa.array(self.identities, type=pa.string())
        source_index = rows.copy() if holdout else np.arange(m, dtype=np.int64)
        source_code = np.zeros(m, dtype=np.int8)  # 0: index, 1: outliers
        if self.n_open:
            open_rows = np.flatnonzero(self.open_mask)
            if self.pool is not None:
                pool_labels = np.asarray(self.pool.labels, dtype=np.int64)
                names = pa.concat_arrays([names, pa.array(list(self.pool.identities), type=pa.string())])
                name_code[open_rows] = self.c_all + pool_labels[self.draws]
                source_code[open_rows] = 1
                source_index[open_rows] = self.draws
            else:
                src = self.held_rows[self.draws]
                name_code[open_rows] = self.labels0[src]
                source_index[open_rows] = src
        self.index_fingerprint = self.fingerprint_job.result()  # first: it names a paths/labels mismatch
        path_col = self.path_job.result()
        del self.index_paths
        return pa.table({
            "index": pa.array(np.arange(m, dtype=np.int64)),
            "path": path_col,
            "identity": pa.DictionaryArray.from_arrays(pa.array(name_code), names),
            "orig_label": pa.array(orig),
            "label": pa.array(self.final),
            "noise": pa.DictionaryArray.from_arrays(pa.array(self.noise), pa.array(list(NOISE_TYPES))),
            "source": pa.DictionaryArray.from_arrays(pa.array(source_code), pa.array(["index", "outliers"])),
            "source_index": pa.array(source_index),
        })

    def meta(self, command: str) -> dict:
        """The sidecar: seed, requested and actual rates, counts, classes, provenance."""
        from noisyfr import __version__
        from noisyfr.data.index import FaceIndex

        spec, m = self.spec, self.m
        per_code = np.bincount(self.noise.view(np.uint8), minlength=len(NOISE_TYPES))
        counts = {name: int(per_code[code]) for code, name in enumerate(NOISE_TYPES)}
        rates = {name: counts[name] / m for name in NOISE_TYPES}
        rates["noisy"] = 1.0 - rates["clean"]
        outlier_meta = None
        if self.pool is not None:
            root = getattr(self.pool, "source", None)
            if root is not None and not str(root).startswith("synthetic:") and os.path.exists(str(root)):
                root = str(Path(root).resolve())
            kind = "index" if isinstance(spec.outliers, FaceIndex) else "folder"
            outlier_meta = {"kind": kind, "root": None if root is None else str(root),
                            "fingerprint": fingerprint_dict(self.pool, self.pool_paths),
                            "pool": int(len(self.pool))}
        elif spec.holdout_ids:
            outlier_meta = {"kind": "holdout", "root": None, "pool": int(self.pool_size)}
        classes = ([self._name(k) for k in range(self.c_in)]
                   + [f"{self._name(a)}#split" for a in self.chosen])
        return {
            "format": "noisyfr-manifest/1", "version": __version__, "command": command,
            "seed": spec.seed or 0, "source": self.source, "fingerprint": self.index_fingerprint,
            "samples": int(m), "num_classes": int(self.num_classes), "num_identities": int(self.c_in),
            "order": ORDER,
            "requested": {"closed": spec.closed, "closed_mode": spec.closed_mode, "open": spec.open,
                          "holdout_ids": spec.holdout_ids, "split": spec.split, "merge": spec.merge},
            "counts": counts, "rates": rates, "outliers": outlier_meta,
            "holdout": {"labels": self.held.tolist(), "identities": [self.identities[h] for h in self.held]},
            "label_map": self.kept.tolist() if spec.holdout_ids else None,
            "classes": classes, "merge": self.merge_info, "split": self.split_info,
            "nearest": self.nearest_info,
        }


def inject(index, spec: NoiseSpec, *, command: str | None = None) -> Manifest:
    """Inject the label noise of ``spec`` into ``index``: the :class:`Manifest` (nothing written).

    ``spec.seed`` is the only source of randomness (None counts as 0). ``command`` is the command
    line recorded in the sidecar (reconstructed from ``spec`` when None). Invalid inputs raise
    NoisyFRError before any work.
    """
    if not isinstance(spec, NoiseSpec):
        raise NoisyFRError(f"inject: expected a NoiseSpec, got {type(spec).__name__}")
    job = _Injection(index, spec)
    job.holdout()
    job.merge()
    job.split()
    job.select_open_closed()
    job.open_set()
    job.closed_set()
    table = job.table()
    if command is None:
        command = build_command(job.source, "<memory>", spec)
    return Manifest(table, job.meta(command))


def inject_to(index, spec: NoiseSpec, out: str | os.PathLike, *, command: str | None = None,
              frame: bool = True) -> Manifest:
    """:func:`inject`, then write the manifest ``out`` (+ ``out.json``). With ``frame`` the pandas
    conversion of the manifest overlaps the Parquet encoding (both release the GIL)."""
    out = Path(out)
    if out.is_dir():
        raise NoisyFRError(f"{cli_flag('out')} {out}: is a folder, expected a manifest file path")
    manifest = inject(index, spec, command=command or build_command(
        str(getattr(index, "source", "<index>")), out, spec))
    writer = _Job(manifest.write, out)
    try:
        if frame:
            manifest.frame  # noqa: B018  (converted while the writer encodes)
    finally:
        writer.result()
    return manifest


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
