"""Face data: indexes over real formats (ImageFolder, RecordIO, synthetic) and verification pairs.

Noise manifests and the dataset seen through one live in :mod:`noisyfr.noise`.

Names are imported lazily from their submodules so that ``import noisyfr.data`` stays cheap.
"""
from __future__ import annotations

import importlib

from noisyfr.data.index import FaceIndex, decode_image

_LAZY = {
    "open_index": "noisyfr.data.open",
    "ImageFolderIndex": "noisyfr.data.folder",
    "RecordIOIndex": "noisyfr.data.recordio",
    "pack_index": "noisyfr.data.recordio",
    "load_pairs": "noisyfr.data.pairs",
    "VerificationSet": "noisyfr.data.pairs",
    "SyntheticIndex": "noisyfr.data.synthetic",
}

__all__ = ["FaceIndex", "decode_image", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'noisyfr.data' has no attribute {name!r}")
