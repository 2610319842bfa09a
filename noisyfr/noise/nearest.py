"""Identity features for the ``nearest`` closed-set mode: a noisy label goes to the most
cosine-similar other identity, by user embeddings or by mean grey thumbnails."""
from __future__ import annotations

import os

import numpy as np

from noisyfr.errors import NoisyFRError
from noisyfr.noise.spec import cli_flag

NEAREST_MAX_IMAGES = 32   # images per identity averaged for the nearest-identity mean image
NEAREST_IMAGE_SIZE = 32   # side of the grey thumbnail used for mean images


def identity_features_from_embeddings(embeddings, index, rows, labels, kept, num_ids):
    """Per-identity features from ``embeddings`` (a ``.npy`` path or array): one row per sample
    (summed per identity after L2 normalisation) or one row per identity of the index."""
    flag = cli_flag("embeddings")
    name = str(embeddings) if isinstance(embeddings, (str, os.PathLike)) else "<embeddings array>"
    if isinstance(embeddings, (str, os.PathLike)):
        try:
            emb = np.load(embeddings, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise NoisyFRError(f"{flag} {name}: cannot read ({str(exc).splitlines()[0]})") from None
    else:
        emb = np.asarray(embeddings)
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
        raise NoisyFRError(f"{flag} {name}: expected a numeric [N, d] array, got shape {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise NoisyFRError(f"{flag} {name}: contains NaN or infinite values")
    if emb.shape[0] == len(index):
        import torch

        src = torch.from_numpy(np.ascontiguousarray(emb if rows is None else emb[rows], dtype=np.float64))
        src = torch.nn.functional.normalize(src, dim=1)
        feats = torch.zeros(num_ids, emb.shape[1], dtype=torch.float64)
        feats.index_add_(0, torch.from_numpy(labels), src)
        return feats.numpy()
    if emb.shape[0] == index.num_identities:
        return np.asarray(emb[kept], dtype=np.float64)
    raise NoisyFRError(f"{flag} {name}: {emb.shape[0]} rows, expected one per sample "
                       f"({len(index)}) or per identity ({index.num_identities})")


def identity_features_from_images(index, rows, labels, num_ids):
    """Per-identity mean of small grey thumbnails (up to NEAREST_MAX_IMAGES each), centred."""
    from torchvision.transforms.v2 import functional as F
    from tqdm import tqdm

    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=num_ids)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.arange(len(order)) - starts[labels[order]]
    use = order[rank < NEAREST_MAX_IMAGES]
    use.sort()
    s = NEAREST_IMAGE_SIZE
    feats = np.zeros((num_ids, s * s), dtype=np.float64)
    for j in tqdm(use, desc="mean images", unit="img", disable=None):
        img = index.load_image(int(j if rows is None else rows[j])).float().mean(dim=0, keepdim=True)
        thumb = F.resize(img, [s, s], antialias=True).reshape(-1).numpy()
        feats[labels[j]] += thumb
    counts = np.bincount(labels[use], minlength=num_ids).astype(np.float64)
    feats /= np.maximum(counts, 1.0)[:, None]
    present = counts > 0
    if present.any():
        feats[present] -= feats[present].mean(axis=0)
    return feats
