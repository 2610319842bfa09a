"""Verification pairs: LFW-style ``pairs.txt`` and insightface ``.bin`` files.

``.bin`` files are pickles of ``(list of encoded images, list of bools)``. They are read with a
restricted unpickler that can only build bytes/bytearray/list/tuple/bool/int/float/str: a pickle
that names any other global (a function, a class, numpy, ``os.system`` ...) is refused before
anything in it runs.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noisyfr.data.verification import VerificationSet  # also importable from here, as before
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_write


class PairsTxtSet(VerificationSet):
    """An LFW ``pairs.txt`` with its image files (``files[i]`` is image ``i``'s path)."""

    def __init__(self, name: str, source: str, files: list[Path], pairs: np.ndarray,
                 issame: np.ndarray):
        self.name, self.source, self.files = name, source, files
        self.pairs, self.issame = pairs, issame

    @property
    def num_images(self) -> int:
        return len(self.files)

    def image_name(self, i: int) -> str:
        return str(self.files[i])

    def image_identity(self, i: int) -> str:
        return self.files[i].parent.name

    def read_bytes(self, i: int) -> bytes:
        try:
            return self.files[i].read_bytes()
        except OSError as exc:
            raise NoisyFRError(f"{self.files[i]}: cannot read image ({exc.strerror or exc})") from None


class BinSet(VerificationSet):
    """An insightface ``.bin``: images ``2k`` and ``2k+1`` form pair ``k``."""

    def __init__(self, name: str, source: str, images: Sequence[bytes], issame: np.ndarray):
        self.name, self.source, self._images = name, source, images
        self.issame = issame
        self.pairs = np.arange(2 * len(issame), dtype=np.int64).reshape(-1, 2)

    @property
    def num_images(self) -> int:
        return len(self._images)

    def read_bytes(self, i: int) -> bytes:
        return bytes(self._images[i])


# ----------------------------------------------------------------------------------------------
# pairs.txt
# ----------------------------------------------------------------------------------------------
def _lfw_file(images: Path, name: str, num: str, where: str) -> Path:
    try:
        n = int(num)
    except ValueError:
        raise NoisyFRError(f"{where}: image number {num!r} is not an integer") from None
    return images / name / f"{name}_{n:04d}.jpg"


def _load_pairs_txt(path: Path, root: str | os.PathLike | None) -> PairsTxtSet:
    images = Path(root) if root is not None else path.parent / "images"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise NoisyFRError(f"{path}: cannot read pairs file ({exc})") from None
    files: list[Path] = []
    position: dict[Path, int] = {}
    pairs: list[tuple[int, int]] = []
    issame: list[bool] = []

    def index_of(f: Path) -> int:
        if f not in position:
            position[f] = len(files)
            files.append(f)
        return position[f]

    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        where = f"{path}:{lineno}"
        if not fields:
            continue
        if lineno == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
            continue  # header "<folds> <pairs per fold>"
        if len(fields) == 3:
            a = _lfw_file(images, fields[0], fields[1], where)
            b = _lfw_file(images, fields[0], fields[2], where)
            same = True
        elif len(fields) == 4:
            a = _lfw_file(images, fields[0], fields[1], where)
            b = _lfw_file(images, fields[2], fields[3], where)
            same = False
        else:
            raise NoisyFRError(f"{where}: expected 'name n1 n2' or 'name1 n1 name2 n2', "
                               f"got {len(fields)} fields")
        pairs.append((index_of(a), index_of(b)))
        issame.append(same)
    if not pairs:
        raise NoisyFRError(f"{path}: no pairs found")
    for f in files:
        if not f.is_file():
            raise NoisyFRError(f"{path}: image file {f} does not exist")
    name = path.parent.name if path.stem == "pairs" and path.parent.name else path.stem
    return PairsTxtSet(name, str(path), files, np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
                       np.asarray(issame, dtype=bool))


# ----------------------------------------------------------------------------------------------
# .bin
# ----------------------------------------------------------------------------------------------
class _RefusedGlobal(pickle.UnpicklingError):
    pass


def _safe_bytes(*args):
    if args and isinstance(args[0], (int, float)):
        raise _RefusedGlobal("bytes(<number>)")
    return bytes(*args)


def _safe_bytearray(*args):
    if args and isinstance(args[0], (int, float)):
        raise _RefusedGlobal("bytearray(<number>)")
    return bytearray(*args)


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal("_codecs.encode with non-latin1 arguments")
    return codecs.encode(obj, "latin1")


_ALLOWED = {
    "bytes": _safe_bytes, "bytearray": _safe_bytearray, "list": list, "tuple": tuple,
    "bool": bool, "int": int, "float": float, "str": str,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only the builtin constructors of bytes/bytearray/list/tuple/bool/int/float/str."""

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name in _ALLOWED:
            return _ALLOWED[name]
        if module == "_codecs" and name == "encode":
            return _safe_codecs_encode
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _RefusedGlobal("a persistent id")


def _load_bin(path: Path) -> BinSet:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NoisyFRError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise NoisyFRError(f"{path}: refused: the pickle references {exc}; a .bin may only hold "
                           f"bytes/bytearray/list/tuple/bool/int/float/str") from None
    except Exception as exc:  # any malformed pickle
        raise NoisyFRError(f"{path}: not a valid .bin pickle ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2
            and isinstance(obj[0], (list, tuple)) and isinstance(obj[1], (list, tuple))):
        raise NoisyFRError(f"{path}: expected a pickle of (list of images, list of bools)")
    images, issame = obj
    if not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise NoisyFRError(f"{path}: the image list must hold encoded images (bytes)")
    if not all(isinstance(s, (bool, int)) and s in (0, 1) for s in issame):
        raise NoisyFRError(f"{path}: the issame list must hold bools")
    if len(images) != 2 * len(issame) or not issame:
        raise NoisyFRError(f"{path}: {len(images)} images for {len(issame)} pairs "
                           f"(expected 2 images per pair, at least one pair)")
    return BinSet(path.stem, str(path), images, np.asarray(issame, dtype=bool))


def load_pairs(path: str | os.PathLike, root: str | os.PathLike | None = None) -> VerificationSet:
    """Load a verification set: an LFW-style ``pairs.txt`` or an insightface ``.bin``.

    ``pairs.txt``: lines ``name n1 n2`` (same person) and ``name1 n1 name2 n2`` (different), an
    optional header (``10 300``); images ``<name>/<name>_<NNNN>.jpg`` under ``root`` or under
    ``images/`` beside the file. A folder holding ``pairs.txt`` is accepted too. ``.bin``: the
    pickle ``(images, issame)``, loaded with a restricted unpickler; pair ``k`` is images
    ``(2k, 2k+1)``. Bad input raises :class:`NoisyFRError` naming the file.

    ``synthetic-pairs:ids=100,per_id=10,first_id=100000,pairs=600,size=112,seed=0`` (keys
    optional) builds a :class:`~noisyfr.data.synthetic_pairs.SyntheticPairs` set over synthetic
    identities never seen by a ``synthetic:`` training set with ``ids <= first_id``.

    ``features:FEATS.parquet`` (a verification set's feature file, pairs in its sidecar) builds a
    :class:`~noisyfr.data.features.FeatureVerificationSet`, whose images are embeddings.
    """
    if isinstance(path, str) and (path == "synthetic-pairs" or path.startswith("synthetic-pairs:")):
        from noisyfr.data.synthetic_pairs import SyntheticPairs

        return SyntheticPairs.from_spec(path)
    if isinstance(path, str) and path.startswith("features:"):
        from noisyfr.data.features import FeatureVerificationSet

        return FeatureVerificationSet.from_spec(path)
    p = Path(path)
    if p.is_dir() and (p / "pairs.txt").is_file():
        p = p / "pairs.txt"
    if not p.exists():
        raise NoisyFRError(f"{path}: verification file does not exist")
    if not p.is_file():
        raise NoisyFRError(f"{path}: not a pairs.txt or .bin file")
    if p.suffix == ".bin":
        return _load_bin(p)
    return _load_pairs_txt(p, root)


def write_bin(vset: VerificationSet, path: str | os.PathLike) -> Path:
    """Write ``vset`` as an insightface ``.bin`` (pickle of (2P encoded images, P bools), images
    in pair order, original bytes kept), atomically. Returns the path."""
    images = []
    for a, b in np.asarray(vset.pairs).tolist():
        images.append(vset.read_bytes(a))
        images.append(vset.read_bytes(b))
    issame = [bool(s) for s in np.asarray(vset.issame).tolist()]
    out = Path(path)
    with atomic_write(out) as fh:
        pickle.dump((images, issame), fh, protocol=4)
    return out


#: insightface's standard verification sets, shipped as ``<name>.bin`` beside ``train.rec``.
#: the five sets papers report, as insightface names their ``.bin`` files
STANDARD_SETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")


def is_set_name(value) -> bool:
    """True for a bare verification-set name (``lfw``, ``agedb_30``): letters, digits, ``_`` and
    ``-`` only, so not a path and not a ``synthetic-pairs:`` spec."""
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", value) is not None


def set_file(name: str, folder: str | Path) -> Path | None:
    """``folder/<name>.bin`` when that file exists, else None (the one rule for bare set names:
    ``data.val`` beside ``data.train`` and ``noisyfr eval --val NAME --data-dir DIR``)."""
    path = Path(folder) / f"{name}.bin"
    return path if path.is_file() else None


def bin_beside(name: str, train: str, what: str = "data.val") -> Path:
    """``<name>.bin`` beside the training set ``train``: in its folder when ``train`` is a folder
    (arcface_torch's ``rec`` directory), beside it when it is a file (``train.rec``). NoisyFRError
    naming ``what`` when there is no such file."""
    if not isinstance(train, str) or train.startswith("synthetic:") or not Path(train).exists():
        raise NoisyFRError(f"{what} {name!r}: a set name needs a data.train folder or file to look "
                           f"beside, got {train!r}")
    folder = Path(train) if Path(train).is_dir() else Path(train).parent
    path = set_file(name, folder)
    if path is None:
        raise NoisyFRError(f"{what} {name!r}: no {name}.bin beside data.train (looked for {folder / (name + '.bin')})")
    return path
