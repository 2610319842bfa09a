"""``open_index``: one entry point for every training-set format."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from noisyfr.data.index import FaceIndex
from noisyfr.errors import NoisyFRError


def open_index(spec: str | os.PathLike, skip_corrupt: bool = False) -> FaceIndex:
    """Open a training set as a :class:`~noisyfr.data.index.FaceIndex`.

    ``spec`` is one of:

    - ``synthetic:ids=100,per_id=20,size=112,seed=0`` -> ``SyntheticIndex.from_spec(spec)``;
    - ``features:FEATS.parquet`` (a feature file) or ``synthetic-features:ids=C,dim=d,kappa=K,...``
      (von Mises-Fisher clusters, :func:`noisyfr.data.clusters.from_spec`) -> ``FeatureIndex``,
      whose samples are embeddings (:mod:`noisyfr.data.features`);
    - a folder holding ``train.rec`` and ``train.idx`` (an insightface dataset folder) or a path
      ending in ``.rec``/``.idx``, or a prefix with ``<prefix>.rec`` beside it -> ``RecordIOIndex``;
    - any other folder -> ``ImageFolderIndex`` (``root/<identity>/<image>``).

    ``skip_corrupt=True`` checks every image cheaply and leaves out the bad ones
    (``index.skipped`` counts them). Anything else raises :class:`NoisyFRError` naming ``spec``.
    """
    if isinstance(spec, str) and spec.startswith("synthetic:"):
        synthetic = importlib.import_module("noisyfr.data.synthetic")
        return synthetic.SyntheticIndex.from_spec(spec)
    if isinstance(spec, str) and spec.startswith(("features:", "synthetic-features:")):
        features = importlib.import_module("noisyfr.data.features")
        return features.FeatureIndex.from_spec(spec)
    if not isinstance(spec, (str, os.PathLike)) or str(spec) == "":
        raise NoisyFRError(f"{spec!r}: not a dataset path or synthetic: spec")
    path = Path(spec)
    from noisyfr.data.recordio import RecordIOIndex

    if path.is_dir():
        if (path / "train.rec").is_file() and (path / "train.idx").is_file():
            return RecordIOIndex(path, skip_corrupt=skip_corrupt)
        from noisyfr.data.folder import ImageFolderIndex

        return ImageFolderIndex(path, skip_corrupt=skip_corrupt)
    if path.suffix in (".rec", ".idx"):
        if not path.with_suffix(".rec").is_file():
            raise NoisyFRError(f"{spec}: RecordIO file {path.with_suffix('.rec')} does not exist")
        return RecordIOIndex(path, skip_corrupt=skip_corrupt)
    if Path(str(path) + ".rec").is_file():
        return RecordIOIndex(path, skip_corrupt=skip_corrupt)
    if not path.exists():
        raise NoisyFRError(f"{spec}: does not exist (expected an ImageFolder, a .rec file or a "
                           f"synthetic: spec)")
    raise NoisyFRError(f"{spec}: not an ImageFolder directory, a .rec file or a synthetic: spec")
