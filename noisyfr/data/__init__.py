"""Face data: indexes over real formats, verification pairs, noise manifests, datasets.

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
    "read_manifest": "noisyfr.data.manifest",
    "write_manifest": "noisyfr.data.manifest",
    "fingerprint": "noisyfr.data.manifest",
    "NoisyDataset": "noisyfr.data.dataset",
}

__all__ = ["FaceIndex", "decode_image", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'noisyfr.data' has no attribute {name!r}")
