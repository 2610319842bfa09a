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
import re
import struct
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from noisyfr.errors import NoisyFRError

if TYPE_CHECKING:  # torch is imported lazily: label-only work (noise injection) never loads it
    import torch


#: What PIL raises on bytes that are not a readable image (truncated, corrupt, unknown format,
#: or, through :func:`open_image`, a header claiming more pixels than PIL's decompression-bomb
#: limit ``PIL.Image.MAX_IMAGE_PIXELS``).
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error,
                Image.DecompressionBombError)


def open_image(src) -> Image.Image:
    """``PIL.Image.open(src)`` (a path or a binary file object): the header only, nothing decoded.

    An image whose header claims more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` raises
    ``DecompressionBombError`` (PIL itself only warns up to twice the limit, and decoding would
    allocate them all); other unreadable images raise one of :data:`IMAGE_ERRORS`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(src)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            pixels = re.search(r"\((\d+) pixels\)", str(exc))
            raise Image.DecompressionBombError(
                f"its header claims {pixels[1] if pixels else 'too many'} pixels, more than "
                f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}") from None


def image_error(name: str, exc: BaseException) -> NoisyFRError:
    """The one-line NoisyFRError naming ``name`` for an image that raised one of :data:`IMAGE_ERRORS`."""
    if isinstance(exc, Image.DecompressionBombError):
        return NoisyFRError(f"{name}: image too large: {exc}")
    return NoisyFRError(f"{name}: corrupt or unreadable image ({exc})")


#: The first bytes of every JPEG stream (SOI marker and the next marker's 0xFF).
JPEG_MAGIC = b"\xff\xd8\xff"


def _jpeg_tensor(data: bytes) -> torch.Tensor:
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _torchvision_jpeg(datas, device=None):
    """``torchvision.io.decode_jpeg`` in RGB mode, its deprecation notice silenced (torchvision
    0.29 points to TorchCodec; PIL takes over if torchvision ever drops it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=".*image decoding and encoding capabilities of TorchVision")
        from torchvision.io import ImageReadMode, decode_jpeg

        kwargs = {} if device is None else {"device": device}
        return decode_jpeg(datas, mode=ImageReadMode.RGB, **kwargs)


def _decode_jpeg(data: bytes) -> torch.Tensor | None:
    """JPEG bytes -> uint8 RGB [3, H, W] with ``torchvision.io.decode_jpeg`` (libjpeg-turbo, the
    same pixels as PIL's decoder); None when torchvision cannot decode it (PIL decides then)."""
    try:
        return _torchvision_jpeg(_jpeg_tensor(data))
    except (RuntimeError, ValueError, ImportError):
        return None


def decode_image(data: bytes, name: str = "<bytes>") -> torch.Tensor:
    """Decode encoded image bytes to a uint8 RGB tensor [3, H, W]; NoisyFRError naming ``name``.

    JPEG goes through ``torchvision.io.decode_jpeg`` (about 2x faster than PIL on CPU), every
    other format, and any JPEG it refuses, through PIL. Either way the header's size is held to
    PIL's pixel limit first (:func:`open_image`)."""
    if bytes(data[:3]) == JPEG_MAGIC:
        _check_jpeg_pixels(data, name)
        image = _decode_jpeg(data)
        if image is not None:
            return image
    return _decode_pil(data, name)


def _check_jpeg_pixels(data: bytes, name: str) -> None:
    """NoisyFRError naming ``name`` when a JPEG header claims more pixels than PIL's limit
    (``decode_jpeg`` would allocate them); reading the header costs ~2% of a 112x112 decode."""
    try:
        open_image(io.BytesIO(data)).close()
    except Image.DecompressionBombError as exc:
        raise image_error(name, exc) from None
    except IMAGE_ERRORS:
        pass  # decode_jpeg may still read it; if not, PIL names the problem


def decode_images(datas: Sequence[bytes], names: Sequence[str] | None = None,
                  device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Decode a batch of encoded images to uint8 RGB tensors [3, H, W] on ``device``. On CUDA
    an all-JPEG batch is decoded in one batched ``decode_jpeg`` call on the GPU (nvjpeg); else
    each image goes through :func:`decode_image` (a batched call is no faster on CPU)."""
    import torch

    dev = torch.device(device)
    names = list(names) if names is not None else [f"<bytes {i}>" for i in range(len(datas))]
    if dev.type == "cuda" and datas and all(bytes(d[:3]) == JPEG_MAGIC for d in datas):
        for d, n in zip(datas, names):
            _check_jpeg_pixels(d, n)
        try:
            return list(_torchvision_jpeg([_jpeg_tensor(d) for d in datas], device=dev))
        except (RuntimeError, ValueError, ImportError):
            pass  # one of them is corrupt: decode one by one for the error naming it
    return [decode_image(d, n).to(dev) for d, n in zip(datas, names)]


def decode_array(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes with PIL to a uint8 RGB array [H, W, 3] (no torch involved);
    NoisyFRError naming ``name`` when unreadable or over PIL's pixel limit."""
    try:
        with open_image(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except IMAGE_ERRORS as exc:
        raise image_error(name, exc) from None


def _decode_pil(data: bytes, name: str) -> torch.Tensor:
    import torch

    return torch.from_numpy(decode_array(data, name).copy()).permute(2, 0, 1).contiguous()


def image_size(data: bytes, verify: bool = True) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes, read from the header (and, with ``verify``,
    checked with PIL's cheap ``verify``); raises one of :data:`IMAGE_ERRORS` when unreadable or
    over PIL's pixel limit."""
    with open_image(io.BytesIO(data)) as im:
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

    def load_image(self, i: int) -> torch.Tensor:
        return decode_image(self.read_bytes(i), name=f"{self.source}[{i}] ({self.paths[i]})")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, samples={len(self)}, "
                f"identities={self.num_identities})")
