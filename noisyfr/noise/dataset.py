"""``NoisyDataset``: a face index seen through a noise manifest, as a torch Dataset."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from noisyfr.errors import NoisyFRError


class NoisyDataset(Dataset):
    """Samples of ``index`` with the labels of ``manifest``: ``dataset[i] -> (image, label, i)``.

    - ``index``: a :class:`~noisyfr.data.index.FaceIndex` (the source the manifest was made from);
    - ``manifest``: a manifest path, a ``(DataFrame, meta)`` pair as returned by
      :func:`~noisyfr.noise.manifest.read_manifest`, or ``None`` (all samples clean, labels from the index);
    - ``transform``: applied to the uint8 [3, H, W] image (e.g. ``face_transform(112)``); None keeps it;
    - ``outliers``: optional, an already opened outlier FaceIndex (checked against the sidecar's
      fingerprint); by default the outlier folder recorded in the sidecar is opened on first use.

    The manifest's fingerprint must match ``index`` (NoisyFRError naming both otherwise).
    Open-set rows read their image from the outlier folder recorded in the sidecar (opened lazily,
    in the worker that needs it). Attributes: ``num_classes``, ``labels`` and ``orig_labels``
    (int64 arrays [M]), ``noise`` (str array [M]), ``manifest`` (DataFrame or None), ``meta`` (dict
    or None). The dataset is picklable and keeps no open file handles, so it works in DataLoader
    workers.
    """

    def __init__(self, index, manifest=None, transform=None, *, outliers=None):
        self.index = index
        self.transform = transform
        self._outliers = None
        self._outliers_given = False
        if manifest is None:
            self.manifest = None
            self.meta = None
            self.labels = np.asarray(index.labels, dtype=np.int64).copy()
            self.orig_labels = self.labels.copy()
            self.noise = np.full(len(self.labels), "clean", dtype=object)
            self.num_classes = int(index.num_identities)
            self._source = np.zeros(len(self.labels), dtype=np.int8)
            self._source_index = np.arange(len(self.labels), dtype=np.int64)
            self.manifest_name = None
            return
        from noisyfr.noise.manifest import fingerprint_mismatch, read_manifest, validate_manifest

        if isinstance(manifest, (str, os.PathLike)):
            self.manifest_name = str(manifest)
            df, meta = read_manifest(manifest)
        else:
            try:
                df, meta = manifest
            except (TypeError, ValueError):
                raise NoisyFRError("manifest: expected a path or a (DataFrame, meta) pair") from None
            self.manifest_name = "<manifest DataFrame>"
            if not isinstance(df, pd.DataFrame) or not isinstance(meta, dict):
                raise NoisyFRError("manifest: expected a path or a (DataFrame, meta) pair")
            df = validate_manifest(df, meta, name=self.manifest_name)
        source = str(getattr(index, "source", "<index>"))
        why = fingerprint_mismatch(meta["fingerprint"], index, self.manifest_name)
        if why:
            raise NoisyFRError(f"{self.manifest_name}: fingerprint does not match the dataset {source} "
                               f"({why})")
        self.manifest = df
        self.meta = meta
        self.labels = df["label"].to_numpy(dtype=np.int64)
        self.orig_labels = df["orig_label"].to_numpy(dtype=np.int64)
        self.noise = df["noise"].to_numpy(dtype=object)
        self.num_classes = int(meta["num_classes"])
        m = len(df)
        if "source_index" in df.columns:
            src = df["source"].to_numpy(dtype=object) if "source" in df.columns else np.full(m, "index", dtype=object)
            self._source = (src == "outliers").astype(np.int8)
            self._source_index = df["source_index"].to_numpy(dtype=np.int64)
        else:
            if m != len(index):
                raise NoisyFRError(f"{self.manifest_name}: has {m} rows but no 'source_index' column, "
                                   f"and the dataset {source} has {len(index)} samples")
            self._source = np.zeros(m, dtype=np.int8)
            self._source_index = np.arange(m, dtype=np.int64)
        in_index = self._source == 0
        if np.any(self._source_index[in_index] < 0) or np.any(self._source_index[in_index] >= len(index)):
            raise NoisyFRError(f"{self.manifest_name}: 'source_index' outside the dataset {source}")
        self._outliers_given = False
        if np.any(self._source == 1):
            outl = meta.get("outliers") or {}
            self._outlier_root = str(outl["root"]) if outl.get("root") else None
            self._outlier_fingerprint = outl.get("fingerprint")
            if outliers is not None:
                self.attach_outliers(outliers)
            elif self._outlier_root is None:
                raise NoisyFRError(f"{self.manifest_name}: has outlier rows but the sidecar names no "
                                   f"outlier folder (pass outliers=)")
            elif not Path(self._outlier_root).is_dir() and not self._outlier_root.startswith("synthetic:"):
                raise NoisyFRError(f"{self.manifest_name}: outlier folder {self._outlier_root} not found")

    def attach_outliers(self, outliers) -> None:
        """Use an already opened outlier FaceIndex (checked against the sidecar's fingerprint)."""
        self._check_outliers(outliers)
        self._outliers = outliers
        self._outliers_given = True

    def _check_outliers(self, outliers) -> None:
        from noisyfr.noise.manifest import fingerprint_mismatch

        fp = getattr(self, "_outlier_fingerprint", None)
        why = fp and fingerprint_mismatch(fp, outliers, f"{self.manifest_name} (outliers)")
        if why:
            raise NoisyFRError(f"{self.manifest_name}: outlier folder {getattr(outliers, 'source', '?')} "
                               f"does not match the fingerprint recorded in the sidecar ({why})")

    def _outlier_index(self):
        if self._outliers is None:
            from noisyfr.data import open_index

            outliers = open_index(self._outlier_root)
            self._check_outliers(outliers)
            self._outliers = outliers
        return self._outliers

    def __len__(self) -> int:
        return int(len(self.labels))

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"NoisyDataset index {i} out of range 0..{len(self) - 1}")
        j = int(self._source_index[i])
        image = self._outlier_index().load_image(j) if self._source[i] else self.index.load_image(j)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i]), i

    def is_noisy(self) -> np.ndarray:
        """Bool array [M]: True where the row's noise is not ``clean``."""
        return self.noise != "clean"

    def __getstate__(self):
        state = self.__dict__.copy()
        if not state.get("_outliers_given"):
            state["_outliers"] = None  # reopened lazily in the worker
        return state

    def __repr__(self) -> str:
        noisy = int(np.count_nonzero(self.is_noisy()))
        return (f"NoisyDataset(samples={len(self)}, classes={self.num_classes}, noisy={noisy}, "
                f"manifest={self.manifest_name!r})")

