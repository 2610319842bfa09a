"""Face data: indexes over real formats (ImageFolder, RecordIO, synthetic) and verification pairs.

Noise manifests and the dataset seen through one live in :mod:`noisyfr.noise`.

Names are imported lazily from their submodules so that ``import noisyfr.data`` stays cheap.
"""
from __future__ import annotations

from noisyfr.data.index import FaceIndex, decode_image, decode_images
from noisyfr.lazy import lazy_getattr

_LAZY = {
    "open_index": "noisyfr.data.open",
    "ImageFolderIndex": "noisyfr.data.folder",
    "RecordIOIndex": "noisyfr.data.recordio",
    "pack_index": "noisyfr.data.recordio_pack",
    "load_pairs": "noisyfr.data.pairs",
    "VerificationSet": "noisyfr.data.verification",
    "SyntheticIndex": "noisyfr.data.synthetic",
    "SyntheticPairs": "noisyfr.data.synthetic_pairs",
}

__all__ = ["FaceIndex", "decode_image", "decode_images", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
