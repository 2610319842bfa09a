"""Writing insightface RecordIO: ``pack_index`` turns any face index into ``train.rec``,
``train.idx`` and ``property`` (arcface layout; the format is described in
:mod:`noisyfr.data.recordio`)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from noisyfr.data.index import IMAGE_ERRORS, FaceIndex, image_size
from noisyfr.data.recordio import _MAGIC_BYTES, _REC_HEAD, IR_HEADER, MAGIC
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_write


def pack_irheader(label: float | Iterable[float], record_id: int, id2: int = 0) -> bytes:
    """The IRHeader bytes for ``label`` (a number: flag 0; a sequence: flag = its length and
    the labels follow the header as float32, header label 0), as ``mxnet.recordio.pack`` does."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return IR_HEADER.pack(0, float(label), int(record_id), int(id2))
    arr = np.asarray(list(label), dtype="<f4")
    return IR_HEADER.pack(int(arr.size), 0.0, int(record_id), int(id2)) + arr.tobytes()


def encode_record(payload: bytes) -> bytes:
    """One payload as RecordIO bytes, exactly as dmlc-core's ``RecordIOWriter`` writes it
    (split into cflag 1/2/3 parts where the magic number occurs at a 4-byte aligned position)."""
    n = len(payload)
    if n >= (1 << 29):
        raise NoisyFRError(f"record of {n} bytes: RecordIO records must be < 2**29 bytes")
    out = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            out.append(_REC_HEAD.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (pos - start)))
            out.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    out.append(_REC_HEAD.pack(MAGIC, ((3 if start else 0) << 29) | (n - start)))
    out.append(payload[start:])
    pad = (-n) % 4
    if pad:
        out.append(b"\0" * pad)
    return b"".join(out)


def prefix_paths(out_prefix: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The ``.rec``, ``.idx`` and ``property`` paths of an output prefix (a folder means
    ``FOLDER/train``)."""
    p = Path(out_prefix)
    if p.is_dir() or str(out_prefix).endswith(os.sep):
        p = p / "train"
    if p.suffix in (".rec", ".idx"):
        p = p.with_suffix("")
    return Path(str(p) + ".rec"), Path(str(p) + ".idx"), p.parent / "property"


def pack_index(index: FaceIndex, out_prefix: str | os.PathLike, verify: bool = True,
               skip_corrupt: bool = False, progress: bool | None = None) -> dict:
    """Write ``index`` as insightface ``<out_prefix>.rec``, ``.idx`` and ``property`` (arcface layout).

    Images keep their encoded bytes (no re-encoding) and are written grouped by label (stable
    order), keys ``1..N``; key 0 is the header record and keys ``N+1..N+C`` the identity-range
    records, whose payload after the labels is the identity name (UTF-8; ignored by insightface).
    ``property`` is ``"num_classes,H,W"`` from the first image. With ``verify`` every image is
    checked with PIL's cheap ``verify``: a bad one raises :class:`NoisyFRError` naming it, or is
    left out and counted when ``skip_corrupt``. All three files are written atomically.
    ``out_prefix`` may be an existing folder (then ``<folder>/train.*``). Returns a summary dict
    (``rec``, ``idx``, ``property``, ``images``, ``identities``, ``skipped``).
    """
    rec_path, idx_path, prop_path = prefix_paths(out_prefix)
    n = len(index)
    if n == 0:
        raise NoisyFRError(f"{index.source}: nothing to pack (no images)")
    labels = np.asarray(index.labels, dtype=np.int64)
    num_classes = len(index.identities)
    order = np.argsort(labels, kind="stable")
    counts = np.zeros(num_classes, dtype=np.int64)
    skipped = 0
    first_size = None
    idx_lines = []
    with atomic_write(rec_path) as frec:
        head_len = len(encode_record(pack_irheader([0.0, 0.0], 0)))
        frec.write(b"\0" * head_len)  # header record rewritten once N is known
        pos = head_len
        key = 1
        for i in tqdm(order.tolist(), desc="pack", unit="img", disable=None if progress is None
                      else not progress):
            data = index.read_bytes(i)
            if verify or first_size is None:
                try:
                    size = image_size(data, verify)
                except IMAGE_ERRORS as exc:
                    if skip_corrupt:
                        skipped += 1
                        continue
                    raise NoisyFRError(f"{index.source}: corrupt image {index.paths[i]} "
                                       f"({exc})") from None
                if first_size is None:
                    first_size = size
            rec = encode_record(pack_irheader(float(labels[i]), key) + data)
            frec.write(rec)
            idx_lines.append(f"{key}\t{pos}\n")
            pos += len(rec)
            counts[labels[i]] += 1
            key += 1
        num_images = key - 1
        if num_images == 0:
            raise NoisyFRError(f"{index.source}: every image is corrupt, nothing to pack")
        id_start = num_images + 1
        starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
        for c in range(num_classes):
            rec = encode_record(pack_irheader([float(starts[c]), float(starts[c] + counts[c])],
                                              key) + index.identities[c].encode("utf-8"))
            frec.write(rec)
            idx_lines.append(f"{key}\t{pos}\n")
            pos += len(rec)
            key += 1
        frec.seek(0)
        frec.write(encode_record(pack_irheader([float(id_start), float(id_start + num_classes)], 0)))
        with atomic_write(idx_path, "w") as fidx:
            fidx.write("0\t0\n")
            fidx.writelines(idx_lines)
            with atomic_write(prop_path, "w") as fprop:
                w, h = first_size
                fprop.write(f"{num_classes},{h},{w}\n")
    return {"rec": str(rec_path), "idx": str(idx_path), "property": str(prop_path),
            "images": num_images, "identities": num_classes, "skipped": skipped}
