"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``), without mxnet.

File format (dmlc-core ``recordio``): a ``.rec`` file is a sequence of records, each

    [uint32 magic 0xced7230a][uint32 lrecord][payload part][zero padding to 4 bytes]

with ``cflag = lrecord >> 29`` and ``length = lrecord & (2**29 - 1)``. A payload that contains the
magic number at a 4-byte aligned position is split there into parts (cflag 1 = first, 2 = middle,
3 = last; 0 = a whole record); the magic itself is dropped and re-inserted between parts on
reading. The ``.idx`` file holds text lines ``key<TAB>byte offset`` of each record's first part.

An image record's payload is an ``IRHeader`` (struct ``<IfQQ``: flag, label, id, id2), then
``flag`` float32 labels when ``flag > 0``, then the encoded image. insightface's *arcface layout*
puts a header record at key 0 (flag > 0, labels = [first identity record key, end key]); images are
keys ``1 .. labels[0]-1`` and the identity records ``labels[0] .. labels[1]-1`` each carry the
[start, end) image keys of one identity. The plain *im2rec layout* has no header record: every key
is an image.

Reading: image offsets are computed once when the index is opened (a vectorised header scan);
``read_bytes`` then slices a read-only ``mmap`` of the ``.rec`` (one bytes copy, no system call per
image). The descriptor and the map are per process: re-opened lazily after ``fork`` and dropped
when pickled. Multi-part records (rare) are joined with ``os.pread``. The ``.rec`` must not be
truncated while an index is reading it (the offsets were checked against its size at open time).
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np
from tqdm import tqdm

from noisyfr import numeric
from noisyfr.data.index import IMAGE_ERRORS, FaceIndex, image_size
from noisyfr.errors import NoisyFRError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_REC_HEAD = struct.Struct("<II")
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
_IR_SIZE = IR_HEADER.size  # 24
_SCAN_WIDTH = 8 + _IR_SIZE + 8  # record header + IRHeader + two extra float labels
_SCAN_CHUNK = 1 << 16

# Forked children must not share the parent's file offset state or descriptor lifetime: every
# index re-opens its descriptor lazily when this generation counter has moved.
_FORK_GENERATION = 0


def _after_fork_in_child() -> None:
    global _FORK_GENERATION
    _FORK_GENERATION += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------
def unpack_irheader(payload: bytes) -> tuple[int, float | np.ndarray, int, int, bytes]:
    """Split a record payload into ``(flag, label, id, id2, rest)``; ``label`` is a float32
    array when ``flag > 0``. Raises ``ValueError`` when the payload is too short."""
    if len(payload) < _IR_SIZE:
        raise ValueError(f"record payload of {len(payload)} bytes is shorter than an IRHeader")
    flag, label, rid, id2 = IR_HEADER.unpack_from(payload, 0)
    rest_at = _IR_SIZE
    if flag > 0:
        end = _IR_SIZE + 4 * flag
        if len(payload) < end:
            raise ValueError(f"record payload too short for {flag} labels")
        label = np.frombuffer(payload, dtype="<f4", count=flag, offset=_IR_SIZE).copy()
        rest_at = end
    return flag, label, rid, id2, bytes(payload[rest_at:])


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def read_idx(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``.idx`` file into (keys, offsets) int64 arrays in file order."""
    try:
        data = Path(idx_path).read_bytes().split()
    except OSError as exc:
        raise NoisyFRError(f"{idx_path}: cannot read ({exc.strerror or exc})") from None
    if len(data) % 2:
        raise NoisyFRError(f"{idx_path}: not an index file (expected 'key<TAB>offset' lines)")
    try:
        arr = np.array(data, dtype=np.int64).reshape(-1, 2)
    except (ValueError, OverflowError):
        raise NoisyFRError(f"{idx_path}: not an index file (expected integer "
                           f"'key<TAB>offset' lines)") from None
    keys, offsets = arr[:, 0].copy(), arr[:, 1].copy()
    if len(np.unique(keys)) != len(keys):
        raise NoisyFRError(f"{idx_path}: duplicate record keys")
    if (offsets < 0).any():
        raise NoisyFRError(f"{idx_path}: negative record offset")
    return keys, offsets


def scan_offsets(rec_path: str | os.PathLike) -> np.ndarray:
    """Byte offsets of every record of a ``.rec`` by walking it sequentially (used when the
    ``.idx`` is missing: records are then keyed 0, 1, 2, ... in file order)."""
    size = os.path.getsize(rec_path)
    offsets = []
    with open(rec_path, "rb") as fh:
        pos = 0
        while pos < size:
            fh.seek(pos)
            head = fh.read(8)
            if len(head) < 8:
                raise NoisyFRError(f"{rec_path}: truncated record header at byte {pos}")
            magic, lrec = _REC_HEAD.unpack(head)
            if magic != MAGIC:
                raise NoisyFRError(f"{rec_path}: no RecordIO magic at byte {pos}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag in (0, 1):
                offsets.append(pos)
            pos += 8 + length + (-length) % 4
            if pos > size:
                raise NoisyFRError(f"{rec_path}: truncated: record at byte {offsets[-1]} "
                                   f"runs past the end of the file ({size} bytes)")
    return np.asarray(offsets, dtype=np.int64)


def _read_payload(fd: int, offset: int, size: int, name: str) -> bytes:
    """The full payload of the record starting at ``offset`` (joins multi-part records)."""
    parts = []
    pos = offset
    first = True
    while True:
        if pos + 8 > size:
            raise NoisyFRError(f"{name}: truncated: record header at byte {pos} is past the end "
                               f"of the file ({size} bytes)")
        magic, lrec = _REC_HEAD.unpack(os.pread(fd, 8, pos))
        if magic != MAGIC:
            raise NoisyFRError(f"{name}: no RecordIO magic at byte {pos}")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if first and cflag not in (0, 1):
            raise NoisyFRError(f"{name}: byte {pos} is the middle of a multi-part record")
        if not first and cflag not in (2, 3):
            raise NoisyFRError(f"{name}: broken multi-part record at byte {offset}")
        if pos + 8 + length > size:
            raise NoisyFRError(f"{name}: truncated: record at byte {offset} needs "
                               f"{pos + 8 + length} bytes, the file has {size}")
        parts.append(os.pread(fd, length, pos + 8))
        pos += 8 + length + (-length) % 4
        if cflag in (0, 3):
            break
        first = False
    return _MAGIC_BYTES.join(parts)


def _scan_headers(mm: np.ndarray, size: int, offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised read of the first bytes of the records at ``offsets``."""
    n = len(offsets)
    out = {k: np.empty(n, dtype=dt) for k, dt in
           [("magic", np.uint32), ("lrec", np.uint32), ("flag", np.uint32),
            ("label", np.float32), ("l0", np.float32), ("l1", np.float32)]}
    cols = np.arange(_SCAN_WIDTH, dtype=np.int64)
    for s in range(0, n, _SCAN_CHUNK):
        off = offsets[s:s + _SCAN_CHUNK]
        idx = np.minimum(off[:, None] + cols, max(size - 1, 0))
        raw = np.ascontiguousarray(mm[idx])
        u32 = raw.view("<u4")
        f32 = raw.view("<f4")
        sl = slice(s, s + len(off))
        out["magic"][sl] = u32[:, 0]
        out["lrec"][sl] = u32[:, 1]
        out["flag"][sl] = u32[:, 2]
        out["label"][sl] = f32[:, 3]
        out["l0"][sl] = f32[:, 8]
        out["l1"][sl] = f32[:, 9]
    return out


def _read_property(path: Path, classes: int) -> tuple[int, int, int] | None:
    """``(num_classes, height, width)`` of an insightface ``property`` file, None without one.

    ``classes`` is how many the records show (largest label + 1, or the identity records): a
    property claiming more is refused, not allocated; NoisyFRError naming the file otherwise.
    """
    if not path.is_file():
        return None
    with open(path, "rb") as fh:  # three numbers: never read more than a line's worth
        text = fh.read(256).decode("utf-8", errors="replace").strip()
    fields = [x.strip() for x in text.split(",")]
    if len(fields) < 3:
        raise NoisyFRError(f"{path}: expected 'num_classes,height,width', got {text[:60]!r}")
    num = numeric.integer(fields[0], f"{path}: num_classes", lo=1)
    h, w = (numeric.integer(x, f"{path}: {n}", lo=1) for x, n in zip(fields[1:3], ("height", "width")))
    if num > classes:
        raise NoisyFRError(f"{path}: claims {num} classes, but the records' labels and identity "
                           f"records show {classes}")
    return num, h, w


def _resolve_rec(spec: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(spec)
    if p.is_dir():
        return p / "train.rec", p / "train.idx"
    if p.suffix in (".rec", ".idx"):
        return p.with_suffix(".rec"), p.with_suffix(".idx")
    return Path(str(p) + ".rec"), Path(str(p) + ".idx")


class RecordIOIndex(FaceIndex):
    """A :class:`FaceIndex` over an insightface/MXNet ``.rec`` (+ ``.idx``, + ``property``).

    ``spec`` is the ``.rec`` path, the ``.idx`` path, the common prefix, or a folder holding
    ``train.rec``. Both the arcface layout (header record at key 0) and the plain im2rec layout
    are read; multi-part records are joined. A missing ``.idx`` is rebuilt in memory by a
    sequential scan. ``paths[i]`` is ``"rec/<record key>"``; labels are the IRHeader labels
    (the first float when ``flag > 0``) as int64; identities are the names stored in the
    identity records (as ``noisyfr pack`` writes them) or ``"id<label>"``.

    ``skip_corrupt=True`` checks every image with PIL's cheap ``verify`` when opening and leaves
    out those that fail (counted in ``skipped``).
    """

    def __init__(self, spec: str | os.PathLike, skip_corrupt: bool = False):
        self.source = str(spec)
        self.rec_path, self.idx_path = _resolve_rec(spec)
        self.skipped = 0
        self.layout = "arcface"
        self._fd: int | None = None
        self._fd_gen = -1
        self._mm: mmap.mmap | None = None
        self._mm_gen = -1
        rec = self.rec_path
        if not rec.is_file():
            raise NoisyFRError(f"{rec}: RecordIO file does not exist")
        size = rec.stat().st_size
        self._size = size
        if size == 0:
            raise NoisyFRError(f"{rec}: empty RecordIO file")
        if self.idx_path.is_file():
            keys, offsets = read_idx(self.idx_path)
            if len(keys) == 0:
                raise NoisyFRError(f"{self.idx_path}: empty index file")
            bad = np.flatnonzero(offsets + 8 > size)
            if len(bad):
                k = bad[0]
                raise NoisyFRError(f"{self.idx_path}: offset {offsets[k]} of key {keys[k]} is past "
                                   f"the end of {rec.name} ({size} bytes): truncated .rec or "
                                   f"wrong .idx")
        else:
            offsets = scan_offsets(rec)
            keys = np.arange(len(offsets), dtype=np.int64)
        offset_of = dict(zip(keys.tolist(), offsets.tolist()))
        mm = np.memmap(rec, dtype=np.uint8, mode="r")
        try:
            self._open_records(mm, size, keys, offsets, offset_of, skip_corrupt)
        finally:
            del mm

    # -- opening --------------------------------------------------------------------------------
    def _check(self, hdr: dict, keys: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
        """Validate scanned headers; returns the boolean mask of multi-part records."""
        bad = np.flatnonzero(hdr["magic"] != MAGIC)
        if len(bad):
            k = bad[0]
            raise NoisyFRError(f"{self.idx_path}: key {keys[k]} points at byte {offsets[k]} of "
                               f"{self.rec_path.name}, which is not the start of a record")
        cflag = hdr["lrec"] >> 29
        length = (hdr["lrec"] & _LEN_MASK).astype(np.int64)
        bad = np.flatnonzero((cflag == 2) | (cflag == 3) | (cflag > 3))
        if len(bad):
            k = bad[0]
            raise NoisyFRError(f"{self.idx_path}: key {keys[k]} points into the middle of a "
                               f"multi-part record of {self.rec_path.name}")
        whole = cflag == 0
        bad = np.flatnonzero(whole & (offsets + 8 + length > size))
        if len(bad):
            k = bad[0]
            raise NoisyFRError(f"{self.rec_path}: truncated: record {keys[k]} at byte "
                               f"{offsets[k]} needs {offsets[k] + 8 + length[k]} bytes, the file "
                               f"has {size}")
        return ~whole

    def _payload_of(self, offset: int) -> bytes:
        return _read_payload(self._file(), int(offset), self._size, str(self.rec_path))

    def _open_records(self, mm, size, keys, offsets, offset_of, skip_corrupt) -> None:
        header0 = None
        if 0 in offset_of:
            payload = self._payload_of(offset_of[0])
            try:
                flag, label, _, _, rest = unpack_irheader(payload)
            except ValueError as exc:
                raise NoisyFRError(f"{self.rec_path}: corrupt record 0 ({exc})") from None
            # insightface's header record: >= 2 labels [first identity key, end key], no image
            if flag >= 2 and not rest and np.isfinite(label[:2]).all():
                header0 = (int(label[0]), int(label[1]))
        if header0 is not None:
            id_start, id_end = header0
            if not 1 <= id_start <= id_end or id_end > len(keys):
                raise NoisyFRError(f"{self.rec_path}: header record 0 lists keys "
                                   f"[1, {id_end}) but {self.idx_path.name} holds {len(keys)} keys")
            img_keys = np.arange(1, id_start, dtype=np.int64)
            id_keys = np.arange(id_start, id_end, dtype=np.int64)
        else:
            self.layout = "im2rec"
            img_keys = np.sort(keys)
            id_keys = np.zeros(0, dtype=np.int64)
        if len(img_keys) == 0:
            raise NoisyFRError(f"{self.rec_path}: holds no image records")
        try:
            img_off = np.fromiter((offset_of[k] for k in img_keys.tolist()), np.int64, len(img_keys))
            id_off = np.fromiter((offset_of[k] for k in id_keys.tolist()), np.int64, len(id_keys))
        except KeyError as exc:
            raise NoisyFRError(f"{self.idx_path}: key {exc.args[0]} listed by the header record "
                               f"is missing from the index") from None

        # images: vectorised header scan, multi-part records on the slow path
        hdr = _scan_headers(mm, size, img_off)
        multi = self._check(hdr, img_keys, img_off, size)
        length = (hdr["lrec"] & _LEN_MASK).astype(np.int64)
        flag = hdr["flag"].astype(np.int64)
        labels = np.where(flag > 0, hdr["l0"], hdr["label"]).astype(np.float64)
        img_start = img_off + 8 + _IR_SIZE + 4 * flag
        img_len = length - _IR_SIZE - 4 * flag
        short = np.flatnonzero(~multi & (img_len < 0))
        if len(short):
            k = short[0]
            raise NoisyFRError(f"{self.rec_path}: record {img_keys[k]} is too short for its "
                               f"IRHeader (corrupt file)")
        for j in np.flatnonzero(multi).tolist():
            payload = self._payload_of(img_off[j])
            try:
                f, lab, *_ = unpack_irheader(payload)
            except ValueError as exc:
                raise NoisyFRError(f"{self.rec_path}: corrupt record {img_keys[j]} ({exc})") from None
            labels[j] = lab[0] if f > 0 else lab
            img_start[j] = -1
            img_len[j] = -1
        if not np.isfinite(labels).all() or (labels < 0).any():
            j = np.flatnonzero(~np.isfinite(labels) | (labels < 0))[0]
            raise NoisyFRError(f"{self.rec_path}: record {img_keys[j]} has invalid label "
                               f"{labels[j]}")
        if labels.max() >= numeric.MAX_IDENTITIES:
            j = int(np.argmax(labels))
            raise NoisyFRError(f"{self.rec_path}: record {img_keys[j]} has label {labels[j]:g}, beyond "
                               f"the limit of {numeric.MAX_IDENTITIES} identities (corrupt file)")
        labels = np.rint(labels).astype(np.int64)

        # identities: names stored in the identity records' payloads, else "id<label>"
        names: list[str | None] = []
        if len(id_keys):
            ih = _scan_headers(mm, size, id_off)
            imulti = self._check(ih, id_keys, id_off, size)
            ilen = (ih["lrec"] & _LEN_MASK).astype(np.int64)
            for j in range(len(id_keys)):
                name = None
                if imulti[j]:
                    payload = self._payload_of(id_off[j])
                    f = IR_HEADER.unpack_from(payload)[0]
                    raw = payload[_IR_SIZE + 4 * f:]
                else:
                    f = int(ih["flag"][j])
                    start = int(id_off[j]) + 8 + _IR_SIZE + 4 * f
                    raw = bytes(mm[start:int(id_off[j]) + 8 + int(ilen[j])])
                if raw:
                    try:
                        name = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        name = None
                names.append(name)
        num = max(int(labels.max()) + 1, len(id_keys))
        self.property = _read_property(self.rec_path.parent / "property", num)
        if len(names) == num and all(names) and len(set(names)) == num:
            identities = list(names)  # type: ignore[arg-type]
        else:
            identities = [f"id{k}" for k in range(num)]

        self._keys = img_keys
        self._img_off = img_off
        keep = np.ones(len(img_keys), dtype=bool)
        self._img_start = img_start.tolist()
        self._img_len = img_len.tolist()
        self._offsets = img_off.tolist()
        self.labels = labels
        self.identities = identities
        self.paths = [f"rec/{k}" for k in img_keys.tolist()]
        if skip_corrupt:
            for i in tqdm(range(len(img_keys)), desc="verify", unit="img", disable=None):
                if not _readable(self.read_bytes(i)):
                    keep[i] = False
            if not keep.all():
                sel = np.flatnonzero(keep)
                self.skipped = int((~keep).sum())
                self._keys = img_keys[sel]
                self._img_off = img_off[sel]
                self._img_start = [self._img_start[i] for i in sel.tolist()]
                self._img_len = [self._img_len[i] for i in sel.tolist()]
                self._offsets = [self._offsets[i] for i in sel.tolist()]
                self.labels = labels[sel]
                self.paths = [self.paths[i] for i in sel.tolist()]
                if len(sel) == 0:
                    raise NoisyFRError(f"{self.rec_path}: every image record is corrupt")

    # -- access ---------------------------------------------------------------------------------
    def _file(self) -> int:
        if self._fd is None or self._fd_gen != _FORK_GENERATION:
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._fd_gen = _FORK_GENERATION
        return self._fd

    def _map(self) -> mmap.mmap:
        """This process's read-only map of the whole ``.rec`` (created on first use)."""
        if self._mm is None or self._mm_gen != _FORK_GENERATION:
            try:
                self._mm = mmap.mmap(self._file(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError) as exc:  # e.g. emptied since it was opened
                raise NoisyFRError(f"{self.rec_path}: cannot map the RecordIO file "
                                   f"({getattr(exc, 'strerror', None) or exc})") from None
            self._mm_gen = _FORK_GENERATION
        return self._mm

    @property
    def keys(self) -> np.ndarray:
        """Record key of each sample."""
        return self._keys

    def read_record(self, i: int) -> bytes:
        """The full payload (IRHeader + labels + image) of sample ``i``."""
        return self._payload_of(self._offsets[i])

    def read_bytes(self, i: int) -> bytes:
        """The encoded image of sample ``i`` (a slice of the file's map for single-part records)."""
        mm = self._mm if self._mm_gen == _FORK_GENERATION else None
        if mm is None:
            mm = self._map()
        n = self._img_len[i]
        if n >= 0:
            start = self._img_start[i]
            data = mm[start:start + n]
            if len(data) != n:  # the file was shorter than the offsets when it was mapped
                raise NoisyFRError(f"{self.rec_path}: truncated: record {self.paths[i]} ends "
                                   f"past the end of the file")
            return data
        return unpack_irheader(self.read_record(i))[4]

    def close(self) -> None:
        """Close this process's map and file descriptor (re-opened on the next read)."""
        if self._mm is not None and self._mm_gen == _FORK_GENERATION:
            try:
                self._mm.close()
            except (OSError, ValueError, BufferError):
                pass
        self._mm = None
        if self._fd is not None and self._fd_gen == _FORK_GENERATION:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_fd_gen"] = -1
        state["_mm"] = None
        state["_mm_gen"] = -1
        return state

    def __del__(self):  # pragma: no cover - interpreter-dependent timing
        try:
            self.close()
        except Exception:
            pass


def _readable(data: bytes) -> bool:
    try:
        image_size(data)
        return True
    except IMAGE_ERRORS:
        return False
