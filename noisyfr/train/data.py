"""The data of a training run: the (noisy) training set and the verification sets."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset

from noisyfr.errors import NoisyFRError


def open_dataset(cfg: dict[str, Any], transform) -> tuple[Any, Any]:
    """``(dataset, manifest to write)``: :class:`~noisyfr.noise.NoisyDataset` over ``data.train``
    with ``data.manifest``, and the :class:`~noisyfr.noise.Manifest` the run must still write
    (None when there is none).

    With ``data.noise`` and no ``data.manifest``, the manifest is injected in memory (every rank
    draws the same one from the spec's seed) and ``data.manifest`` is set to
    ``output_dir/manifest.parquet``, which the run writes once every input has been checked (an
    existing one is used as is when resuming); with both, the manifest's sidecar must record that
    noise spec (a sweep's shared manifests).
    """
    from noisyfr.data import open_index
    from noisyfr.noise import NoiseSpec, NoisyDataset, read_meta
    from noisyfr.noise.inject import build_command, inject
    from noisyfr.noise.spec import spec_matches_meta

    data = cfg["data"]
    index = open_index(data["train"])
    if hasattr(index, "check_files"):  # a folder: every image is opened before anything is written
        index.check_files()
    pending = None
    if data["noise"] is not None:
        spec = NoiseSpec.from_mapping(data["noise"])
        if data["manifest"] is None:
            path = Path(cfg["output_dir"]) / "manifest.parquet"
            data["manifest"] = str(path)
            if not (cfg["resume"] and path.is_file()):
                pending = inject(index, spec, command=build_command(str(index.source), path, spec))
                dataset = NoisyDataset(index, manifest=(pending.frame, pending.meta), transform=transform)
                dataset.manifest_name = str(path)
                return dataset, pending
        elif not spec_matches_meta(spec, read_meta(data["manifest"])):
            raise NoisyFRError(f"data.manifest {data['manifest']}: was not made with data.noise "
                               f"{spec.to_dict()} (its sidecar records another noise spec)")
    return NoisyDataset(index, manifest=data["manifest"], transform=transform), pending


def check_labels(dataset, num_classes: int) -> None:
    """Every training label must be a class of the head: NoisyFRError naming the first that is not."""
    labels = np.asarray(dataset.labels, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise NoisyFRError(f"data.train: sample {i} has label {int(labels[i])} outside the head's "
                           f"{num_classes} classes (0..{num_classes - 1})")


def training_subset(dataset, max_samples: int | None, seed: int):
    """``dataset``, or a seeded random subset of ``max_samples`` of it (in index order)."""
    if not max_samples or max_samples >= len(dataset):
        return dataset
    pick = np.random.default_rng([seed, 1]).choice(len(dataset), max_samples, replace=False)
    return Subset(dataset, np.sort(pick).tolist())


def verification_sets(paths: list[str]) -> list[tuple[str, Any]]:
    """``(unique name, VerificationSet)`` for each ``data.val`` entry (a repeated name gets ``_2``...)."""
    from noisyfr.data import load_pairs

    vsets: list[tuple[str, Any]] = []
    for path in paths:
        vset = load_pairs(path)
        name, k = str(vset.name), 2
        while name in {n for n, _ in vsets}:
            name, k = f"{vset.name}_{k}", k + 1
        vsets.append((name, vset))
    return vsets
