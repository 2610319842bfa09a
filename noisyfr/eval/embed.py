"""Embeddings of image collections: the one forward loop of evaluation, ``embed``, and IJB.

Convention (insightface's): the embedding of an image is ``model(x) + model(flip(x))`` (horizontal
flip; ``flip=False`` keeps ``model(x)``), computed in ``model.eval()`` under ``torch.no_grad()``;
its norm is kept apart and the row is L2-normalised unless ``normalize=False``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from noisyfr.errors import NoisyFRError


class TransformedImages(Dataset):
    """``transform(load_image(i))`` for i in ``range(count)``: a face index or a verification set
    seen as a dataset of preprocessed tensors."""

    def __init__(self, load_image: Callable[[int], torch.Tensor], count: int, transform):
        self.load_image, self.count, self.transform = load_image, int(count), transform

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.load_image(i))


def check_batch_size(batch_size) -> int:
    """``batch_size`` when it is a positive integer, else NoisyFRError naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NoisyFRError(f"batch_size: must be a positive integer, got {batch_size!r}")
    return batch_size


@contextlib.contextmanager
def _worker_errors():
    """A NoisyFRError raised in a DataLoader worker comes back as one line again (the loader
    re-raises it with 'Caught NoisyFRError in DataLoader worker ...' and a traceback)."""
    try:
        yield
    except NoisyFRError as exc:
        text = str(exc).strip()
        if not text.startswith("Caught ") or "\n" not in text:
            raise
        raise NoisyFRError(text.splitlines()[-1].split(": ", 1)[-1]) from None


def embed_dataset(model: torch.nn.Module, dataset: Dataset, *, flip: bool = True,
                  normalize: bool = True, batch_size: int = 64,
                  device: str | torch.device = "cpu", num_workers: int = 0,
                  desc: str = "embed") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every item of ``dataset`` (float tensors [3, S, S]), in order.

    Returns ``(features, norms)``: float32 [N, d] (unit rows when ``normalize``) and float32 [N],
    the norm of each embedding before normalisation. The model must already live on ``device``;
    its training mode is restored afterwards. A progress bar runs on a terminal.
    """
    batch_size = check_batch_size(batch_size)
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    feats, norms = [], []
    try:
        with torch.no_grad(), _worker_errors():
            for x in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
                x = x.to(device, non_blocking=True)
                emb = model(x)
                if flip:
                    emb = emb + model(torch.flip(x, dims=[3]))
                emb = emb.float()
                norm = emb.norm(dim=1)
                if normalize:
                    emb = torch.nn.functional.normalize(emb, dim=1)
                feats.append(emb.cpu())
                norms.append(norm.cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise NoisyFRError(f"{desc}: no images to embed")
    return (torch.cat(feats).numpy().astype(np.float32, copy=False),
            torch.cat(norms).numpy().astype(np.float32, copy=False))
