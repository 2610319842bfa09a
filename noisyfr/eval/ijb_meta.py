"""IJB-B / IJB-C 1:1 metadata in insightface's layout, read and checked.

``DIR/meta/<t>_face_tid_mid.txt``      one face per line: ``image_name template_id media_id``
``DIR/meta/<t>_name_5pts_score.txt``   the same faces in the same order: ``image_name x1 y1 ... x5
                                       y5 detector_score`` (landmarks in loose-crop pixels)
``DIR/meta/<t>_template_pair_label.txt`` one pair per line: ``template_id template_id label`` (1 =
                                       same subject)
``DIR/loose_crop/<image_name>``        the images

with ``<t>`` the lower-case target (``ijbb``, ``ijbc``). Fields are separated by white space.
Every problem (a missing file, a wrong column count, a value that is not a number, NaN, a pair
naming a template without faces, a missing image) is a one-line NoisyFRError naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisyfr.errors import NoisyFRError

TARGETS = ("IJBB", "IJBC")


@dataclass(frozen=True)
class IJBMeta:
    """The faces, templates and template pairs of one IJB target."""

    target: str
    root: Path
    names: list[str]          # image file names under loose_crop/, one per face
    landmarks: np.ndarray     # float64 [N, 5, 2]
    scores: np.ndarray        # float64 [N], detector scores
    templates: np.ndarray     # int64 [N]
    medias: np.ndarray        # int64 [N]
    pair_t1: np.ndarray       # int64 [P]
    pair_t2: np.ndarray       # int64 [P]
    labels: np.ndarray        # int64 [P], 1 = same subject

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"

    @property
    def num_faces(self) -> int:
        return len(self.names)


def meta_paths(root: str | os.PathLike, target: str) -> dict[str, Path]:
    """The three meta files of ``target`` under ``root`` (key: faces, landmarks, pairs)."""
    t = target.lower()
    meta = Path(root) / "meta"
    return {"faces": meta / f"{t}_face_tid_mid.txt", "landmarks": meta / f"{t}_name_5pts_score.txt",
            "pairs": meta / f"{t}_template_pair_label.txt"}


def _open_text(path: Path, layout: str) -> str:
    if not path.is_file():
        raise NoisyFRError(f"{path}: no such IJB meta file (expected lines '{layout}')")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NoisyFRError(f"{path}: cannot read IJB meta file ({exc})") from None


def _parse_lines(path: Path, layout: str, kinds: str) -> list[list]:
    """Columns of a white-space separated file whose lines have ``len(kinds)`` fields, column ``j``
    parsed as ``kinds[j]`` (``s`` string, ``i`` integer, ``f`` float); blank lines are skipped and
    errors name the line."""
    conv = {"s": str, "i": int, "f": float}
    kind_name = {"i": "an integer", "f": "a number"}
    cols: list[list] = [[] for _ in kinds]
    for lineno, line in enumerate(_open_text(path, layout).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(kinds):
            raise NoisyFRError(f"{path}:{lineno}: expected {len(kinds)} columns '{layout}', "
                               f"got {len(fields)}")
        for j, (field, kind) in enumerate(zip(fields, kinds)):
            try:
                cols[j].append(conv[kind](field))
            except ValueError:
                raise NoisyFRError(f"{path}:{lineno}: column {j + 1} is {field!r}, not "
                                   f"{kind_name[kind]} ('{layout}')") from None
    if not cols[0]:
        raise NoisyFRError(f"{path}: empty IJB meta file (expected lines '{layout}')")
    return cols


def _read_pairs(path: Path, layout: str) -> np.ndarray:
    """int64 [P, 3] of the pair file: a fast C parse, and the line-by-line parser to name the
    problem when the fast parse does not give three integer columns."""
    import pandas as pd

    if not path.is_file():
        raise NoisyFRError(f"{path}: no such IJB meta file (expected lines '{layout}')")
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, engine="c")
        if frame.shape[1] == 3 and all(pd.api.types.is_integer_dtype(t) for t in frame.dtypes):
            return frame.to_numpy(dtype=np.int64)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        pass
    return np.array(_parse_lines(path, layout, "iii"), dtype=np.int64).T


def _check_images(root: Path, names: list[str], where: Path) -> None:
    folder = root / "loose_crop"
    if not folder.is_dir():
        raise NoisyFRError(f"{folder}: no such image folder (IJB images go in DIR/loose_crop/)")
    listed = set(os.listdir(folder))
    for row, name in enumerate(names, 1):
        if name not in listed and not (folder / name).is_file():
            raise NoisyFRError(f"{where}: face {row}: image {folder / name} does not exist")


def read_ijb_meta(root: str | os.PathLike, target: str = "IJBC", check_images: bool = True) -> IJBMeta:
    """Read and check the metadata of ``target`` (``IJBB`` / ``IJBC``, any case) under ``root``."""
    if str(target).upper() not in TARGETS:
        raise NoisyFRError(f"--target: expected one of {', '.join(TARGETS)}, got {target!r}")
    target = str(target).upper()
    root = Path(root)
    if not root.is_dir():
        raise NoisyFRError(f"{root}: no such IJB directory")
    paths = meta_paths(root, target)
    names, templates, medias = _parse_lines(paths["faces"], "image_name template_id media_id", "sii")
    marks = _parse_lines(paths["landmarks"], "image_name x1 y1 ... x5 y5 score", "s" + "f" * 11)
    pairs = _read_pairs(paths["pairs"], "template_id template_id label")
    if len(marks[0]) != len(names):
        raise NoisyFRError(f"{paths['landmarks']}: {len(marks[0])} faces, but {paths['faces'].name} "
                           f"lists {len(names)}")
    for row, (a, b) in enumerate(zip(marks[0], names), 1):
        if a != b:
            raise NoisyFRError(f"{paths['landmarks']}: face {row} is {a!r}, but face {row} of "
                               f"{paths['faces'].name} is {b!r} (the files list the same faces in order)")
    values = np.array(marks[1:], dtype=np.float64).T
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise NoisyFRError(f"{paths['landmarks']}: face {int(bad[0]) + 1} ({names[bad[0]]}): landmark "
                           f"or detector score is NaN or infinite")
    templates = np.asarray(templates, dtype=np.int64)
    medias = np.asarray(medias, dtype=np.int64)
    t1, t2, labels = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    if not np.isin(labels, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(labels, (0, 1)))[0])
        raise NoisyFRError(f"{paths['pairs']}: pair {row + 1}: label {labels[row]} is not 0 or 1")
    known = np.unique(templates)
    for ts in (t1, t2):
        unknown = np.flatnonzero(~np.isin(ts, known))
        if unknown.size:
            row = int(unknown[0])
            raise NoisyFRError(f"{paths['pairs']}: pair {row + 1}: template {ts[row]} has no faces in "
                               f"{paths['faces'].name}")
    if labels.min() == labels.max():
        raise NoisyFRError(f"{paths['pairs']}: needs both genuine (1) and impostor (0) pairs")
    if check_images:
        _check_images(root, names, paths["faces"])
    return IJBMeta(target, root, names, values[:, :10].reshape(-1, 5, 2), values[:, 10], templates,
                   medias, t1, t2, labels)
