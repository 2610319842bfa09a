"""The common face-index interface.

A :class:`FaceIndex` is a read-only, randomly accessible list of labelled face images, whatever
the storage (ImageFolder, insightface RecordIO, synthetic). Every index has:

- ``len(index)``: number of samples;
- ``labels``: int64 numpy array [N], label of each sample (0 .. num_identities-1);
- ``identities``: list of identity names, ``identities[label]`` is that label's name;
- ``paths``: list of N strings, a stable key per sample (relative file path for folders,
  ``"rec/<record id>"`` for RecordIO, ``"<identity>/<k:03d>.png"`` for synthetic). The dataset
  fingerprint is computed from ``paths`` and ``labels``;
- ``source``: the string the index was opened from;
- ``read_bytes(i)``: the encoded image (JPEG/PNG/PGM... bytes);
- ``load_image(i)``: uint8 RGB tensor [3, H, W].
"""
from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from noisyfr.errors import NoisyFRError

if TYPE_CHECKING:  # torch is imported lazily: label-only work (noise injection) never loads it
    import torch


#: What PIL raises on bytes that are not a readable image (truncated, corrupt, unknown format,
#: or a header claiming more pixels than PIL's decompression-bomb limit).
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error,
                Image.DecompressionBombError)


def decode_image(data: bytes, name: str = "<bytes>") -> "torch.Tensor":
    """Decode encoded image bytes to a uint8 RGB tensor [3, H, W]; NoisyFRError naming ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except IMAGE_ERRORS as exc:
        raise NoisyFRError(f"{name}: corrupt or unreadable image ({exc})") from None
    import torch

    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def image_size(data: bytes, verify: bool = True) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes, read from the header (and, with ``verify``,
    checked with PIL's cheap ``verify``); raises one of :data:`IMAGE_ERRORS` when unreadable."""
    with Image.open(io.BytesIO(data)) as im:
        size = im.size
        if verify:
            im.verify()
    return size


class FaceIndex:
    """Base class; subclasses set ``labels``, ``identities``, ``paths``, ``source`` and
    implement :meth:`read_bytes`."""

    labels: np.ndarray
    identities: list[str]
    paths: Sequence[str]
    source: str

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def read_bytes(self, i: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_image(self, i: int) -> "torch.Tensor":
        return decode_image(self.read_bytes(i), name=f"{self.source}[{i}] ({self.paths[i]})")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, samples={len(self)}, "
                f"identities={self.num_identities})")
