"""ImageFolder layout: ``root/<identity>/<image>``, any image format PIL reads.

Indexing only lists files (``os.scandir``, no ``stat`` and no image decoding), so it scales to
CASIA-WebFace size (~500k files). Identities are the sub-folders sorted by name (label = position),
files inside each are sorted by name. Hidden entries (name starting with ``.``), files whose
extension PIL cannot open, files directly in ``root`` and sub-folders without images are ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from noisyfr.data.index import FaceIndex, decode_image, image_error, open_image
from noisyfr.errors import NoisyFRError

_IMAGE_EXTENSIONS: frozenset[str] | None = None


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) of every format PIL can open."""
    global _IMAGE_EXTENSIONS
    if _IMAGE_EXTENSIONS is None:
        Image.init()
        _IMAGE_EXTENSIONS = frozenset(ext.lower() for ext, fmt in
                                      Image.registered_extensions().items() if fmt in Image.OPEN)
    return _IMAGE_EXTENSIONS


def image_problem(path: str | os.PathLike) -> BaseException | None:
    """Cheap integrity check with PIL's ``verify`` (parses headers/chunks, does not decode): the
    exception that makes ``path`` unusable, or None.

    Catches non-images, wrong contents, broken PNG chunks and headers claiming too many pixels;
    a JPEG cut short after its header may still pass and then fails when loaded (with an error
    naming the file)."""
    try:
        with open_image(path) as im:
            im.verify()
        return None
    except Exception as exc:  # PIL raises many types for bad files; any of them means "corrupt"
        return exc


def bad_images(root: Path, paths, desc: str) -> dict[str, BaseException]:
    """The images ``root/<path>`` that :func:`image_problem` finds unusable: path -> reason, in
    the order of ``paths`` (a progress bar named ``desc`` on a terminal)."""
    return {p: exc for p in tqdm(paths, desc=desc, unit="img", disable=None)
            if (exc := image_problem(root / p)) is not None}


class ImageFolderIndex(FaceIndex):
    """A :class:`FaceIndex` over ``root/<identity>/<image>``.

    ``paths[i]`` is ``"<identity>/<file>"`` relative to ``root``. ``skip_corrupt=True`` verifies
    every file cheaply when indexing and leaves out the bad ones (their count is ``skipped``,
    their relative paths ``skipped_paths``); otherwise a corrupt file surfaces when it is loaded,
    as a :class:`NoisyFRError` naming it.
    """

    def check_files(self) -> None:
        """Verify every image cheaply (:func:`bad_images`, about 40 us an image): a
        NoisyFRError naming the first bad one and how many there are. ``train`` calls it before
        it writes anything."""
        bad = list(bad_images(self.root, self.paths, "check images").items())
        if bad:
            first = image_error(str(self.root / bad[0][0]), bad[0][1])
            more = f"; {len(bad) - 1} more image(s) are bad too" if len(bad) > 1 else ""
            raise NoisyFRError(f"{first}{more} (remove {'them' if more else 'it'}, or pack the folder "
                               f"with --skip-corrupt)")

    def __init__(self, root: str | os.PathLike, skip_corrupt: bool = False):
        self.source = str(root)
        self.root = Path(root)
        if not self.root.exists():
            raise NoisyFRError(f"{root}: folder does not exist")
        if not self.root.is_dir():
            raise NoisyFRError(f"{root}: not a folder")
        exts = image_extensions()
        identities: list[str] = []
        paths: list[str] = []
        labels: list[int] = []
        try:
            with os.scandir(self.root) as it:
                subdirs = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
            for name in subdirs:
                with os.scandir(self.root / name) as it:
                    files = sorted(e.name for e in it
                                   if not e.name.startswith(".")
                                   and os.path.splitext(e.name)[1].lower() in exts
                                   and e.is_file())
                if not files:
                    continue
                label = len(identities)
                identities.append(name)
                paths.extend(f"{name}/{f}" for f in files)
                labels.extend([label] * len(files))
        except OSError as exc:
            raise NoisyFRError(f"{root}: cannot list folder ({exc.strerror or exc})") from None
        if not paths:
            raise NoisyFRError(f"{root}: no images found (expected {root}/<identity>/<image>)")
        self.skipped = 0
        self.skipped_paths: list[str] = []
        if skip_corrupt:
            bad = bad_images(self.root, paths, "verify")
            keep = [p not in bad for p in paths]
            if bad:
                self.skipped_paths = [p for p, k in zip(paths, keep) if not k]
                self.skipped = len(self.skipped_paths)
                paths = [p for p, k in zip(paths, keep) if k]
                labels = [lab for lab, k in zip(labels, keep) if k]
                if not paths:
                    raise NoisyFRError(f"{root}: every image is corrupt")
                # identities that lost all their images are dropped; labels stay contiguous
                used = sorted(set(labels))
                remap = {old: new for new, old in enumerate(used)}
                identities = [identities[old] for old in used]
                labels = [remap[lab] for lab in labels]
        self.identities = identities
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def file(self, i: int) -> Path:
        """Absolute path of sample ``i``."""
        return self.root / self.paths[i]

    def read_bytes(self, i: int) -> bytes:
        """The file's bytes; :class:`NoisyFRError` naming it when it cannot be read."""
        path = self.root / self.paths[i]
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise NoisyFRError(f"{path}: cannot read image ({exc.strerror or exc})") from None

    def load_image(self, i: int) -> torch.Tensor:
        """uint8 RGB tensor [3, H, W]; a corrupt file raises :class:`NoisyFRError` naming it."""
        return decode_image(self.read_bytes(i), name=str(self.root / self.paths[i]))
