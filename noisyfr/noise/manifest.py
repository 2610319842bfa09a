"""Noise manifests: one row per training sample, plus a JSON sidecar.

Columns (required): ``index`` (0..M-1, the sample_index), ``path``, ``identity``, ``orig_label``,
``label``, ``noise`` (``clean|closed|open|split|merge``). Columns written by ``noisyfr inject`` in
addition: ``source`` (``index`` or ``outliers``: where the image is read from) and ``source_index``
(row in that index). ``orig_label`` is -1 for open-set rows.

The sidecar ``<manifest>.json`` holds the seed, requested and actual rates, counts, ``num_classes``,
``fingerprint`` (``{"samples": N, "sha256": ..., "content": ...}`` of the source index: paths and
labels, and the pixels of a sample of its images), the package version and
the command line. Writing is deterministic (same content -> same bytes) and atomic.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path, read_json
from noisyfr.noise.spec import NOISE_TYPES

REQUIRED_COLUMNS = ("index", "path", "identity", "orig_label", "label", "noise")
INT_COLUMNS = ("index", "orig_label", "label", "source_index")
STR_COLUMNS = ("path", "identity", "noise", "source")
SOURCES = ("index", "outliers")

# Fixed Parquet writer settings: same table -> same bytes.
# Snappy and no column statistics keep a 5.8M-row manifest fast to write; paths (unique) are not
# dictionary-encoded, the low-cardinality string columns are.
_PARQUET_OPTIONS = dict(compression="snappy", use_dictionary=["identity", "noise", "source"],
                        write_statistics=False, version="2.6", data_page_version="1.0",
                        store_schema=False)


def _check_path_count(index, n_paths: int) -> None:
    if n_paths != len(index.labels):
        raise NoisyFRError(f"{getattr(index, 'source', index)}: {n_paths} paths but "
                           f"{len(index.labels)} labels")


def paths_array(index) -> pa.Array:
    """The index's ``paths`` as an arrow ``large_string`` array (one conversion, reused)."""
    paths = index.paths
    if not isinstance(paths, (list, tuple)):
        paths = [str(p) for p in paths]
    _check_path_count(index, len(paths))
    try:
        return pa.array(paths, type=pa.large_string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # e.g. Path objects
        return pa.array([str(p) for p in paths], type=pa.large_string())


def fingerprint(index, paths: pa.Array | None = None) -> str:
    """SHA-256 (hex) of a face index's sample count, ``paths`` and ``labels``.

    Two indexes over the same samples in the same order with the same labels have the same
    fingerprint, whatever their storage. Hashed, in order: ``b"noisyfr-fingerprint-v2\\0"``, the
    sample count as int64, the end offset of every path in the concatenated UTF-8 bytes (int64,
    N values), those concatenated bytes, and the labels (int64); all little-endian. ``paths`` may
    pass the already converted :func:`paths_array` of the index.
    """
    labels = np.ascontiguousarray(np.asarray(index.labels), dtype="<i8")
    arr = paths_array(index) if paths is None else paths
    _check_path_count(index, len(arr))
    if arr.null_count:
        raise NoisyFRError(f"{getattr(index, 'source', index)}: paths contain missing values")
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(off_buf, dtype="<i8")[arr.offset:arr.offset + n + 1] if n else np.zeros(1, "<i8")
    h = hashlib.sha256()
    h.update(b"noisyfr-fingerprint-v2\0")
    h.update(np.int64(n).astype("<i8").tobytes())
    ends = offsets[1:] - offsets[0] if offsets[0] else offsets[1:]
    h.update(ends.astype("<i8", copy=False))  # numpy buffers are hashed without bytes copies
    if n:
        h.update(memoryview(data_buf)[int(offsets[0]):int(offsets[-1])])
    h.update(labels)
    return h.hexdigest()


#: Images whose pixels :func:`content_fingerprint` hashes (evenly spaced over the index).
CONTENT_SAMPLES = 16


def content_fingerprint(index, samples: int = CONTENT_SAMPLES) -> str | None:
    """SHA-256 (hex) of the pixels of ``samples`` evenly spaced images of a face index (the first
    and the last included), or None for an index that holds labels only (no ``read_bytes``).

    The pixels (decoded by PIL, no torch) are hashed, not the encoded bytes, so a folder, its
    ``.rec`` pack and the ``synthetic:`` index that ``noisyfr synth`` wrote agree, and a PNG
    encoder upgrade changes nothing. Hashed, in order: ``b"noisyfr-content-v1\0"``, then per
    sampled image its position and its ``[H, W, 3]`` shape (int64 little-endian) and its uint8
    RGB pixels. An unreadable sampled image raises NoisyFRError naming it.
    """
    from noisyfr.data.index import decode_array

    if callable(getattr(index, "content_digest", None)):  # a dataset of features: its vectors
        return index.content_digest()
    n = len(index.labels)
    h = hashlib.sha256(b"noisyfr-content-v1\0")
    for i in np.unique(np.linspace(0, n - 1, min(n, samples)).round().astype(np.int64)).tolist():
        try:
            data = index.read_bytes(i)
        except (NotImplementedError, AttributeError):
            return None
        arr = decode_array(data, f"{getattr(index, 'source', '<index>')}[{i}] ({index.paths[i]})")
        h.update(np.array([i, *arr.shape], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(arr))
    return h.hexdigest()


def fingerprint_dict(index, paths: pa.Array | None = None) -> dict:
    """``{"samples": len(index), "sha256": fingerprint(index), "content":
    content_fingerprint(index)}`` as stored in the sidecar (no ``content`` for a labels-only index)."""
    content = content_fingerprint(index)
    return {"samples": int(len(index)), "sha256": fingerprint(index, paths),
            **({} if content is None else {"content": content})}


def fingerprint_mismatch(expected: dict, index, name: str) -> str | None:
    """Why ``index`` differs from the sidecar fingerprint ``expected`` (None when it matches): its
    sample count, its paths and labels, or the pixels of the sampled images.

    A fingerprint without ``content`` (written by an older noisyfr, or from a labels-only
    index) is checked on the count, paths and labels only, and a warning naming the
    manifest ``name`` says so: re-run ``noisyfr inject`` to record the content.
    """
    if expected["samples"] != len(index):
        return f"made from {expected['samples']} samples, the dataset has {len(index)}"
    actual = fingerprint(index)
    if expected["sha256"] != actual:
        return f"paths or labels differ: hash {expected['sha256'][:12]} vs {actual[:12]}"
    if "content" not in expected:
        warnings.warn(f"{name}: the sidecar's fingerprint has no 'content' (an older manifest): only "
                      "paths and labels were checked against the dataset, not its images; re-run "
                      "noisyfr inject to record it", UserWarning, stacklevel=3)
        return None
    content = content_fingerprint(index)
    if content is not None and content != expected["content"]:
        return (f"same paths and labels, but the pixels of the sampled images differ: content hash "
                f"{str(expected['content'])[:12]} vs {content[:12]}")
    return None


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar of a manifest: the manifest path with ``.json`` appended."""
    return Path(str(path) + ".json")


def _is_csv(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".csv")


def _to_table(manifest: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(manifest, pa.Table):
        table = manifest
    else:
        table = pa.Table.from_pandas(manifest, preserve_index=False)
    fields = []
    for field in table.schema:
        if field.name in INT_COLUMNS:
            fields.append(pa.field(field.name, pa.int64()))
        elif field.name in STR_COLUMNS:
            t = field.type
            keep = (pa.types.is_string(t) or pa.types.is_large_string(t)
                    or (pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type)
                                                       or pa.types.is_large_string(t.value_type))))
            fields.append(pa.field(field.name, t if keep else pa.string()))
        else:
            fields.append(pa.field(field.name, field.type))
    return table.cast(pa.schema(fields)).replace_schema_metadata(None)


_JSON_INDENT = 2
_JSON_SCALARS = (str, int, float, bool, type(None))


def _json_flat(obj) -> bool:
    """True for a list/dict whose items are all JSON scalars (the bulk of a sidecar)."""
    values = obj.values() if isinstance(obj, dict) else obj
    return all(type(v) in _JSON_SCALARS for v in values)


def _dumps_indented(obj, level: int) -> str:
    """``json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)``, nested
    ``level`` deep, byte for byte. Flat containers (tens of thousands of class names or label
    lists) go through the C encoder with the newline + indent as item separator: encoded JSON
    never holds a raw newline, so this is exactly the indented layout, without the per-item
    Python of ``json``'s indenting encoder."""
    opts = dict(sort_keys=True, ensure_ascii=False, allow_nan=False)
    is_dict = isinstance(obj, dict)
    if not isinstance(obj, (list, tuple, dict)) or not obj:
        return json.dumps(obj, **opts)
    inner = "\n" + " " * (_JSON_INDENT * (level + 1))
    outer = "\n" + " " * (_JSON_INDENT * level)
    if _json_flat(obj):
        text = json.dumps(obj, separators=("," + inner, ": "), **opts)
        return text[0] + inner + text[1:-1] + outer + text[-1]
    if is_dict:
        if not all(isinstance(k, str) for k in obj):  # non-string keys: json's own rules
            return json.dumps(obj, indent=_JSON_INDENT, **opts).replace("\n", outer)
        items = [json.dumps(k, ensure_ascii=False) + ": " + _dumps_indented(obj[k], level + 1)
                 for k in sorted(obj)]
        return "{" + inner + ("," + inner).join(items) + outer + "}"
    items = [_dumps_indented(v, level + 1) for v in obj]
    return "[" + inner + ("," + inner).join(items) + outer + "]"


def dumps_meta(meta: dict) -> str:
    """The sidecar text: sorted keys, 2-space indent, trailing newline (deterministic).

    Byte-identical to ``json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=False,
    allow_nan=False) + "\\n"``, several times faster on a web-scale sidecar.
    """
    return _dumps_indented(meta, 0) + "\n"


def write_manifest(manifest: pd.DataFrame | pa.Table, meta: dict, path: str | os.PathLike) -> Path:
    """Write ``manifest`` (Parquet, or CSV when ``path`` ends ``.csv``) and its sidecar ``path + '.json'``.

    Both files are written to temporary names and renamed only when both are complete. Returns
    the manifest path.
    """
    path = Path(path)
    table = _to_table(manifest)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise NoisyFRError(f"{path}: manifest to write lacks columns {missing}")
    text = dumps_meta(meta)
    with atomic_path(path) as tmp_manifest, atomic_path(sidecar_path(path)) as tmp_meta:
        if _is_csv(path):
            table.to_pandas().to_csv(tmp_manifest, index=False, lineterminator="\n")
        else:
            pq.write_table(table, tmp_manifest, **_PARQUET_OPTIONS)
        tmp_meta.write_text(text, encoding="utf-8")
    return path


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if _is_csv(path):
            dtypes = {c: "string" for c in STR_COLUMNS}
            df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_filter=False)
        else:
            df = pq.read_table(path).to_pandas()
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NoisyFRError(f"{path}: not a readable manifest ({msg})") from None
    return df


def validate_manifest(df: pd.DataFrame, meta: dict, name: str = "<manifest>") -> pd.DataFrame:
    """Check columns, dtypes and values of a manifest against its sidecar; return a normalised copy.

    Raises NoisyFRError naming ``name`` on the first problem found.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise NoisyFRError(f"{name}: missing columns {missing}")
    for key in ("num_classes", "fingerprint"):
        if key not in meta:
            raise NoisyFRError(f"{name}: sidecar lacks key {key!r}")
    fp = meta["fingerprint"]
    if not (isinstance(fp, dict) and isinstance(fp.get("samples"), int) and isinstance(fp.get("sha256"), str)
            and isinstance(fp.get("content", ""), str)):
        raise NoisyFRError(f"{name}: sidecar 'fingerprint' must be {{'samples': int, 'sha256': str, "
                           "'content': str}}")
    num_classes = meta["num_classes"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise NoisyFRError(f"{name}: sidecar 'num_classes' must be a positive integer, got {num_classes!r}")
    df = df.copy()
    for col in INT_COLUMNS:
        if col not in df.columns:
            continue
        if not pd.api.types.is_integer_dtype(df[col].dtype):
            raise NoisyFRError(f"{name}: column {col!r} must hold integers, got {df[col].dtype}")
        df[col] = df[col].astype(np.int64)
    for col in STR_COLUMNS:
        if col in df.columns:
            if df[col].isna().any():
                raise NoisyFRError(f"{name}: column {col!r} has missing values")
            df[col] = df[col].astype(str)
    m = len(df)
    if not np.array_equal(df["index"].to_numpy(), np.arange(m)):
        raise NoisyFRError(f"{name}: column 'index' must be 0..{m - 1} in order")
    if "samples" in meta and meta["samples"] != m:
        raise NoisyFRError(f"{name}: {m} rows but the sidecar says {meta['samples']} samples")
    noise = df["noise"].to_numpy(dtype=object)
    bad = sorted(set(np.unique(noise)) - set(NOISE_TYPES)) if m else []
    if bad:
        raise NoisyFRError(f"{name}: unknown noise values {bad[:5]} (expected one of {list(NOISE_TYPES)})")
    label = df["label"].to_numpy()
    orig = df["orig_label"].to_numpy()
    if m and (label.min() < 0 or label.max() >= num_classes):
        raise NoisyFRError(f"{name}: 'label' out of range 0..{num_classes - 1}")
    if m and (orig.min() < -1 or orig.max() >= num_classes):
        raise NoisyFRError(f"{name}: 'orig_label' out of range -1..{num_classes - 1}")
    is_open = noise == "open"
    if np.any((orig == -1) & ~is_open):
        raise NoisyFRError(f"{name}: 'orig_label' is -1 on a row whose noise is not 'open'")
    clean = noise == "clean"
    if np.any(label[clean] != orig[clean]):
        raise NoisyFRError(f"{name}: a 'clean' row has label != orig_label")
    if "source" in df.columns:
        bad_src = sorted(set(np.unique(df["source"].to_numpy(dtype=object))) - set(SOURCES)) if m else []
        if bad_src:
            raise NoisyFRError(f"{name}: unknown source values {bad_src[:5]} (expected {list(SOURCES)})")
        if "source_index" not in df.columns:
            raise NoisyFRError(f"{name}: column 'source' needs 'source_index'")
    return df


def read_meta(path: str | os.PathLike) -> dict:
    """Read a manifest's sidecar ``path + '.json'`` (NoisyFRError naming it when missing/corrupt)."""
    side = sidecar_path(path)
    meta = read_json(side, "manifest sidecar")
    if not isinstance(meta, dict):
        raise NoisyFRError(f"{side}: sidecar must hold a JSON object")
    return meta


def read_manifest(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and validate a manifest (Parquet or ``.csv``) and its sidecar: ``(DataFrame, meta)``."""
    path = Path(path)
    if not path.exists():
        raise NoisyFRError(f"{path}: manifest not found")
    if not path.is_file():
        raise NoisyFRError(f"{path}: manifest is not a file")
    meta = read_meta(path)
    df = _read_table(path)
    return validate_manifest(df, meta, name=str(path)), meta
