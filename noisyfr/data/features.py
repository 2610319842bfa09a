"""Datasets of face embeddings: ``features:PATH`` as a training set and as a verification set.

A feature file (:mod:`noisyfr.data.feature_store`) holds one pretrained model's embedding per
image. :class:`FeatureIndex` is a :class:`~noisyfr.data.index.FaceIndex` over it: the same
``paths``, ``labels`` and ``identities`` as the image index it was extracted from, so noise
manifests, held-out splits and the fingerprint work unchanged; ``load_image(i)`` gives the
embedding as a float32 vector [dim] (``vectors = True``: no image transform, no flip), and
``read_bytes`` does not exist. :class:`FeatureVerificationSet` is the same for a verification
set's feature file, its pairs from the sidecar's ``pairs``.

Both keep the embeddings as they came (not normalised): a vector backbone
(:mod:`noisyfr.models.vector`) decides what to do with the norm.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from noisyfr.data.feature_store import FeatureTable, read_features
from noisyfr.data.index import FaceIndex
from noisyfr.data.verification import VerificationSet
from noisyfr.errors import NoisyFRError

#: The prefix of a feature-file dataset spec (``features:runs/features/lfw_ge3_dlib.parquet``).
PREFIX = "features:"
#: The prefix of a von Mises-Fisher cluster spec (:mod:`noisyfr.data.clusters`).
SYNTHETIC_PREFIX = "synthetic-features:"


def is_features_spec(spec) -> bool:
    """Whether ``spec`` names a dataset of features (``features:`` or ``synthetic-features:``)."""
    return isinstance(spec, str) and spec.startswith((PREFIX, SYNTHETIC_PREFIX))


def feature_path(spec: str) -> str:
    """``features:PATH`` -> ``PATH`` (NoisyFRError naming ``spec`` when PATH is empty)."""
    path = spec[len(PREFIX):]
    if not path:
        raise NoisyFRError(f"{spec!r}: features: needs a path (features:FEATS.parquet)")
    return path


def content_digest(embeddings: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 (hex) of the embeddings (float32, little-endian) and labels: what a feature
    dataset's manifest records as its content (the pixels of an image index)."""
    h = hashlib.sha256(b"noisyfr-features-v1\0")
    emb = np.ascontiguousarray(embeddings, dtype="<f4")
    h.update(np.asarray(emb.shape, dtype="<i8").tobytes())
    h.update(emb)
    h.update(np.ascontiguousarray(labels, dtype="<i8"))
    return h.hexdigest()


class FeatureIndex(FaceIndex):
    """A face index whose samples are embeddings: ``load_image(i)`` -> float32 tensor [dim]."""

    vectors = True

    def __init__(self, table: FeatureTable, source: str):
        self.table = table
        self.source = str(source)
        self.paths = list(table.paths)
        self.labels = np.asarray(table.labels, dtype=np.int64)
        self.identities = table.class_names
        self.embeddings = np.ascontiguousarray(table.embeddings, dtype=np.float32)

    @classmethod
    def from_table(cls, table: FeatureTable, source: str) -> FeatureIndex:
        if len(table) == 0:
            raise NoisyFRError(f"{source}: holds no features")
        return cls(table, source)

    @classmethod
    def from_spec(cls, spec: str) -> FeatureIndex:
        """``features:PATH`` (a feature file) or ``synthetic-features:...`` (seeded clusters)."""
        if spec.startswith(SYNTHETIC_PREFIX):
            from noisyfr.data import clusters  # written beside this module (issue 25, item 3)

            return cls.from_table(clusters.from_spec(spec), spec)
        path = feature_path(spec)
        if not os.path.isfile(path):
            raise NoisyFRError(f"{spec}: no such feature file")
        table = read_features(path)
        if table.pairs is not None:
            raise NoisyFRError(f"{spec}: a verification set's features (its sidecar has pairs): "
                               f"use it in data.val, not as data.train")
        return cls.from_table(table, spec)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def read_bytes(self, i: int) -> bytes:
        raise NoisyFRError(f"{self.source}: a dataset of features has no images")

    def load_image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.embeddings[int(i)].copy())

    def content_digest(self) -> str:
        return content_digest(self.embeddings, self.labels)


class FeatureVerificationSet(VerificationSet):
    """The pairs of a verification set's feature file (sidecar ``pairs``): ``load_image(i)`` is the
    embedding of row ``i``."""

    vectors = True

    def __init__(self, table: FeatureTable, source: str):
        pairs = table.pairs
        if pairs is None or len(pairs) == 0:
            raise NoisyFRError(f"{source}: its sidecar records no pairs (not a verification set's "
                               f"features)")
        self.table = table
        self.source = str(source)
        self.name = os.path.basename(feature_path(source)).split(".")[0] \
            if source.startswith(PREFIX) else "features"
        self.pairs = pairs[:, :2].copy()
        self.issame = pairs[:, 2].astype(bool)
        self.embeddings = np.ascontiguousarray(table.embeddings, dtype=np.float32)

    @classmethod
    def from_spec(cls, spec: str) -> FeatureVerificationSet:
        path = feature_path(spec)
        if not os.path.isfile(path):
            raise NoisyFRError(f"{spec}: no such feature file")
        return cls(read_features(path), spec)

    @property
    def num_images(self) -> int:
        return int(len(self.embeddings))

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def read_bytes(self, i: int) -> bytes:
        raise NoisyFRError(f"{self.source}: a verification set of features has no images")

    def image_identity(self, i: int) -> str | None:
        return self.table.identities[int(i)]

    def load_image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.embeddings[int(i)].copy())
