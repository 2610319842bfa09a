"""The data of a training run: the (noisy) training set and the verification sets."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from noisyfr.errors import NoisyFRError


def open_dataset(cfg: dict[str, Any], transform) -> tuple[Any, Any]:
    """``(dataset, manifest to write)``: :class:`~noisyfr.noise.NoisyDataset` over ``data.train``
    with ``data.manifest``, and the :class:`~noisyfr.noise.Manifest` the run must still write
    (None when there is none).

    With ``data.noise`` and no ``data.manifest``, the manifest is injected in memory (every rank
    draws the same one from the spec's seed) and ``data.manifest`` is set to
    ``output_dir/manifest.parquet``, which the run writes once every input has been checked (an
    existing one is used as is when resuming); with both, the manifest's sidecar must record that
    noise spec (a sweep's shared manifests). A dataset of features (``features:``) drops
    ``transform``: its samples are vectors.
    """
    from noisyfr.data import open_index
    from noisyfr.noise import NoiseSpec, NoisyDataset, read_meta
    from noisyfr.noise.inject import build_command, inject
    from noisyfr.noise.spec import spec_matches_meta

    data = cfg["data"]
    index = open_index(data["train"])
    if getattr(index, "vectors", False):  # a dataset of features: vectors take no image transform
        transform = None
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


def split_identities(orig_labels, max_per_id: int | None, holdout: float, seed: int,
                     names=None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)``: sorted sample indices of the training images and of the held-out
    images, split per identity, seeded.

    ``orig_labels`` [M] are the true identities (the manifest's ``orig_label``); a sample whose
    true identity is outside the label set (open-set noise, -1) is always a training image. Each
    identity's images are shuffled with ``numpy.random.default_rng([seed, 2, identity])``; the
    first ``max_per_id`` are kept (``data.max_per_id``, None: all), and of the ``n`` kept,
    ``round(holdout * n)`` (half up) are held out (``data.holdout``). The same seed gives the same
    split whatever the loss, so runs of one seed are paired. NoisyFRError naming the key and the
    identity (its name from ``names`` when given) when the split leaves an identity without a
    training image."""
    orig = np.asarray(orig_labels, dtype=np.int64)
    train, held = [np.flatnonzero(orig < 0)], []
    for ident in np.unique(orig[orig >= 0]):
        rows = np.flatnonzero(orig == ident)
        rows = rows[np.random.default_rng([seed, 2, int(ident)]).permutation(len(rows))]
        if max_per_id is not None:
            rows = rows[:max_per_id]
        k = int(np.floor(holdout * len(rows) + 0.5))
        if k >= len(rows):
            name = names[ident] if names is not None and ident < len(names) else int(ident)
            raise NoisyFRError(f"config key 'data.holdout': {holdout:g} holds out all {len(rows)} "
                               f"image(s) of identity {name!r}, leaving it no training image "
                               f"(lower data.holdout or raise data.max_per_id)")
        held.append(rows[:k])
        train.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held or [np.zeros(0, np.int64)]))


#: Optional manifest column: True on the rows a run trained on it holds out. ``noisyfr clean``
#: writes it (the held-out images of the run it cleaned), so a run retrained on a cleaned manifest
#: is judged on the same held-out images and never trains on one of them.
HELDOUT_COLUMN = "heldout"


def recorded_heldout(manifest) -> np.ndarray | None:
    """The manifest's :data:`HELDOUT_COLUMN` as a boolean array, or None when it has none (or
    is None). Booleans, 0/1 integers and ``true``/``false`` text (a CSV manifest) are read;
    anything else is a NoisyFRError naming the column."""
    if manifest is None or HELDOUT_COLUMN not in getattr(manifest, "columns", ()):
        return None
    col = manifest[HELDOUT_COLUMN]
    if col.isna().any():
        raise NoisyFRError(f"manifest column {HELDOUT_COLUMN!r}: has missing values")
    if col.dtype == bool:
        return col.to_numpy(dtype=bool)
    values = col.to_numpy()
    if np.issubdtype(values.dtype, np.integer) and np.isin(values, (0, 1)).all():
        return values.astype(bool)
    text = col.astype(str).str.strip().str.lower()
    if text.isin(("true", "false", "1", "0")).all():
        return text.isin(("true", "1")).to_numpy()
    raise NoisyFRError(f"manifest column {HELDOUT_COLUMN!r}: must hold booleans (true/false)")


def split_rows(manifest, orig_labels, max_per_id: int | None, holdout: float, seed: int,
               names=None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)`` sample indices of a run: :func:`split_identities`, unless the run
    holds images out (``holdout`` > 0) and its manifest records which (:data:`HELDOUT_COLUMN`):
    then exactly those rows are held out, whatever the value of ``holdout``, and the others are
    trained on (``max_per_id`` capping them as it caps a drawn split)."""
    fixed = recorded_heldout(manifest) if holdout > 0 else None
    if fixed is None:
        return split_identities(orig_labels, max_per_id, holdout, seed, names)
    orig = np.asarray(orig_labels, dtype=np.int64)
    if len(fixed) != len(orig):
        raise NoisyFRError(f"manifest column {HELDOUT_COLUMN!r}: {len(fixed)} values for {len(orig)} rows")
    rest = np.flatnonzero(~fixed)
    train, _ = split_identities(orig[rest], max_per_id, 0.0, seed, names)
    train, held = np.sort(rest[train]), np.flatnonzero(fixed)
    given = manifest["label"].to_numpy(dtype=np.int64) if "label" in manifest.columns else orig
    check_trained_identities(given[train], orig[held], names)
    return train, held


def check_trained_identities(train_labels, held_identities, names=None) -> None:
    """Every identity with a held-out image keeps a training image (a sample labelled with it):
    else NoisyFRError naming the first identity (its name from ``names`` when given). A run on
    such a manifest could not learn that identity's class (or, with no training image at all,
    would run no step), and its held-out accuracy would not mean what it says."""
    held = np.unique(np.asarray(held_identities, dtype=np.int64))
    lonely = np.setdiff1d(held[held >= 0], np.asarray(train_labels, dtype=np.int64))
    if len(lonely):
        ident = int(lonely[0])
        name = names[ident] if names is not None and ident < len(names) else ident
        more = f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""
        raise NoisyFRError(f"data.manifest: identity {name!r}{more} has held-out images but no training "
                           "image (a cleaning removed them all); refusing to train on it")


def training_subset(dataset, max_samples: int | None, seed: int, rows=None):
    """``dataset`` restricted to ``rows`` (None: every sample), then to a seeded random subset of
    ``max_samples`` of those (in index order)."""
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    if max_samples and max_samples < len(rows):
        pick = np.random.default_rng([seed, 1]).choice(len(rows), max_samples, replace=False)
        rows = rows[np.sort(pick)]
    if len(rows) == len(dataset):
        return dataset
    from torch.utils.data import Subset  # torch where it is used: the held-out split needs none

    return Subset(dataset, rows.tolist())


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
