"""Feature files: face embeddings of a dataset, one row per image, from a pretrained face model.

The contract shared by ``noisyfr features`` (which writes them) and the ``features:PATH`` dataset
(which trains on them). A feature file is a Parquet table with the columns

- ``path`` (string): the image's stable key in its dataset (``FaceIndex.paths``, or the image's
  path relative to a pairs set's root);
- ``identity`` (string): the identity name of the image (its folder);
- ``label`` (int32): ``0 .. C-1``, the identity's position in the sorted identity names;
- ``embedding`` (fixed-size list of float32, length ``dim``): the model's output as it came,
  not normalised;
- ``norm`` (float32): the L2 norm of ``embedding``;
- ``miss`` (bool): the face detector found no face and the documented fallback box was used,

and a JSON sidecar ``PATH + '.json'`` with at least ``dim``, ``count``, ``model`` (a dict naming
the model), ``preprocessing`` (a dict), ``misses`` (count) and ``fingerprint`` (of the image
contents). A feature file of a verification set also records ``pairs``: a list of
``[row_a, row_b, same]`` (row numbers into the table, ``same`` 1 or 0).

Both files are written to temporary names and renamed together. :func:`read_features` checks
everything a reader relies on and answers bad files with one line naming the file.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path, read_json

#: Columns of a feature file, in order.
COLUMNS = ("path", "identity", "label", "embedding", "norm", "miss")
#: Sidecar keys every feature file has.
META_KEYS = ("dim", "count", "model", "preprocessing", "misses", "fingerprint")


def sidecar_path(path: str | os.PathLike) -> Path:
    """``FEATS.parquet`` -> ``FEATS.parquet.json``."""
    return Path(str(path) + ".json")


@dataclass(frozen=True)
class FeatureTable:
    """A feature file in memory: ``embeddings`` float32 [N, dim], the rest one entry per row."""

    paths: list[str]
    identities: list[str]          # per row
    labels: np.ndarray             # int64 [N]
    embeddings: np.ndarray         # float32 [N, dim]
    norms: np.ndarray              # float32 [N]
    misses: np.ndarray             # bool [N]
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def class_names(self) -> list[str]:
        """Identity names by label (``class_names[label]``)."""
        names: dict[int, str] = {}
        for label, name in zip(self.labels.tolist(), self.identities):
            names.setdefault(int(label), name)
        return [names[i] for i in range(len(names))]

    @property
    def pairs(self) -> np.ndarray | None:
        """int64 [P, 3] (row a, row b, same) of a verification set's features, else None."""
        pairs = self.meta.get("pairs")
        return None if pairs is None else np.asarray(pairs, dtype=np.int64).reshape(-1, 3)


def labels_of(identities: list[str]) -> np.ndarray:
    """Labels ``0 .. C-1`` by the sorted identity names."""
    order = {name: i for i, name in enumerate(sorted(set(identities)))}
    return np.asarray([order[n] for n in identities], dtype=np.int64)


def _check_finite(embeddings: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NoisyFRError(f"{name}: {int(bad.sum())} embedding(s) hold NaN or infinity "
                           f"(first at row {row})")


def to_arrow(table: FeatureTable) -> pa.Table:
    """The Parquet table of ``table`` (columns :data:`COLUMNS`)."""
    emb = np.ascontiguousarray(table.embeddings, dtype=np.float32)
    n, dim = emb.shape
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    return pa.table({
        "path": pa.array(table.paths, type=pa.string()),
        "identity": pa.array(table.identities, type=pa.string()),
        "label": pa.array(np.asarray(table.labels, dtype=np.int32), type=pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "norm": pa.array(np.asarray(table.norms, dtype=np.float32), type=pa.float32()),
        "miss": pa.array(np.asarray(table.misses, dtype=bool), type=pa.bool_()),
    })


def write_features(table: FeatureTable, path: str | os.PathLike) -> Path:
    """Write ``table`` and its sidecar (``dim``, ``count`` and ``misses`` filled in from the
    table); both appear together or not at all. Returns ``path``."""
    path = Path(path)
    _check_finite(table.embeddings, str(path))
    if len(table) == 0:
        raise NoisyFRError(f"{path}: no features to write")
    meta = dict(table.meta)
    meta.update(dim=table.dim, count=len(table), misses=int(np.asarray(table.misses).sum()))
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise NoisyFRError(f"{path}: feature sidecar lacks {missing}")
    arrow = to_arrow(table)
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path) as tmp, atomic_path(sidecar_path(path)) as tmp_meta:
        pq.write_table(arrow, tmp, compression="zstd", row_group_size=65536)
        tmp_meta.write_text(text, encoding="utf-8")
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The sidecar of the feature file ``path``, checked for :data:`META_KEYS`."""
    side = sidecar_path(path)
    if not side.is_file():
        raise NoisyFRError(f"{path}: no sidecar {side.name} (not a noisyfr feature file?)")
    meta = read_json(side, "feature sidecar")
    if not isinstance(meta, dict) or any(k not in meta for k in META_KEYS):
        raise NoisyFRError(f"{side}: not a feature sidecar (needs keys {list(META_KEYS)})")
    return meta


def read_features(path: str | os.PathLike, expect_dim: int | None = None) -> FeatureTable:
    """Read and check a feature file: columns, types, the sidecar's ``dim`` and ``count``,
    finite embeddings, labels that follow the sorted identity names, ``expect_dim`` if given."""
    path = Path(path)
    if not path.is_file():
        raise NoisyFRError(f"{path}: no such feature file")
    meta = read_meta(path)
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise NoisyFRError(f"{path}: cannot read feature file ({str(exc).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in arrow.column_names]
    if missing:
        raise NoisyFRError(f"{path}: feature file lacks columns {missing}")
    emb_type = arrow.schema.field("embedding").type
    if not pa.types.is_fixed_size_list(emb_type) or not pa.types.is_floating(emb_type.value_type):
        raise NoisyFRError(f"{path}: column embedding has type {emb_type}, expected a fixed-size "
                           f"list of floats")
    dim, n = emb_type.list_size, arrow.num_rows
    if int(meta["dim"]) != dim or int(meta["count"]) != n:
        raise NoisyFRError(f"{path}: holds {n} x {dim} embeddings, its sidecar says "
                           f"{meta['count']} x {meta['dim']}")
    if expect_dim is not None and dim != int(expect_dim):
        raise NoisyFRError(f"{path}: embeddings have dimension {dim}, expected {expect_dim}")
    col = arrow.column("embedding").combine_chunks()
    emb = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
    _check_finite(emb, str(path))
    identities = arrow.column("identity").to_pylist()
    labels = np.asarray(arrow.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
    if n and not np.array_equal(labels, labels_of(identities)):
        raise NoisyFRError(f"{path}: labels do not follow the sorted identity names")
    norms = np.asarray(arrow.column("norm").to_numpy(zero_copy_only=False), dtype=np.float32)
    if not np.isfinite(norms).all() or not np.allclose(norms, np.linalg.norm(emb, axis=1),
                                                      rtol=1e-4, atol=1e-5):
        raise NoisyFRError(f"{path}: column norm is not the embeddings' L2 norm")
    table = FeatureTable(paths=arrow.column("path").to_pylist(), identities=identities,
                         labels=labels, embeddings=emb, norms=norms,
                         misses=np.asarray(arrow.column("miss").to_numpy(zero_copy_only=False), dtype=bool),
                         meta=meta)
    pairs = table.pairs
    if pairs is not None and len(pairs) and (pairs[:, :2].min() < 0 or pairs[:, :2].max() >= n
                                              or not np.isin(pairs[:, 2], (0, 1)).all()):
        raise NoisyFRError(f"{path}: sidecar pairs name rows outside 0..{n - 1} or a same flag "
                           f"other than 0/1")
    return table


def table_of(paths: list[str], identities: list[str], embeddings: np.ndarray,
             misses: np.ndarray | None = None, meta: dict | None = None) -> FeatureTable:
    """A :class:`FeatureTable` from rows: labels from the sorted names, norms computed."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(paths) or len(paths) != len(identities):
        raise NoisyFRError(f"features: {len(paths)} paths, {len(identities)} identities and "
                           f"embeddings of shape {emb.shape} do not match")
    norms = np.linalg.norm(emb.astype(np.float64), axis=1).astype(np.float32)
    if not all(math.isfinite(float(x)) for x in norms):
        _check_finite(emb, "features")
    return FeatureTable(paths=list(paths), identities=list(identities), labels=labels_of(identities),
                        embeddings=emb, norms=norms,
                        misses=np.zeros(len(paths), bool) if misses is None else np.asarray(misses, bool),
                        meta=dict(meta or {}))
