"""Held-out health: identification of unseen images of the training identities.

With ``data.holdout`` > 0 each training identity's images are split, seeded and stratified
(:func:`noisyfr.train.data.split_identities`), into training images and held-out images that are
never trained on. After every epoch the held-out images are embedded as evaluation embeds them
(:func:`noisyfr.eval.embed.embed_dataset`: eval mode, flip-sum, no augmentation) and each is
identified by its nearest class centre of the head (plain cosine, no margin; a Sub-center
ArcFace class by its nearest sub-centre). ``heldout_accuracy`` is the fraction identified as
their *true* identity: the held-out images act as a clean validation set of the training
identities (as a curated validation set would), so neither the noise labels of the training
samples nor their memorisation can raise it. A run that memorises its noisy labels has a high
train-pass accuracy and a low held-out one.

A run *learned* (:func:`learned_from`) when its last epoch's ``heldout_accuracy`` reaches
``health.learned_heldout_accuracy`` (0.5 by default); a run without held-out images falls back to
the train-pass rule (``clean_true_accuracy >= health.learned_accuracy``), and
``learned_on`` says which evidence decided (``heldout`` or ``train``).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch.utils.data import Subset

from noisyfr.angle_log import DEFAULT_LEARNED_HELDOUT, heldout_noise_rate, learned_from  # noqa: F401 (re-exported)


class _Images(torch.utils.data.Dataset):
    """The images of a dataset of ``(image, label, index)`` triples, for the embedding loop."""

    def __init__(self, dataset, vectors: bool = False):
        self.dataset = dataset
        self.vectors = vectors  # embeddings of a features: dataset: embedded without flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0]


def heldout_set(dataset, rows: np.ndarray, transform):
    """The held-out images ``rows`` of ``dataset`` (a NoisyDataset) seen through the evaluation
    ``transform``, their true labels and their given labels; None when there are none."""
    if len(rows) == 0:
        return None
    view = copy.copy(dataset)  # the same manifest and index, another transform
    vectors = bool(getattr(getattr(dataset, "index", None), "vectors", False))
    view.transform = None if vectors else transform
    return (_Images(Subset(view, [int(i) for i in rows]), vectors),
            np.asarray(dataset.orig_labels, dtype=np.int64)[rows],
            np.asarray(dataset.labels, dtype=np.int64)[rows])


@torch.no_grad()
def nearest_centre(head, feats: torch.Tensor) -> torch.Tensor:
    """The class of the nearest centre (plain cosine) of each unit feature row [N, d]; a
    Partial FC head scans every rank's shard (every rank must call)."""
    if getattr(head, "sharded", False):
        return head.nearest_two(feats)[1][:, 0]
    w = torch.nn.functional.normalize(head.weight.detach().float(), dim=1)
    cos = feats @ w.t()
    K = getattr(head, "K", 1)
    if K > 1:
        cos = cos.view(cos.shape[0], -1, K).amax(dim=2)
    return cos.argmax(dim=1)


def heldout_accuracy(model, head, held, device, batch_size: int = 256) -> dict[str, float]:
    """``heldout_accuracy``: the fraction of the held-out images (``held`` from
    :func:`heldout_set`) whose nearest class centre is their true identity, and
    ``heldout_given_accuracy``: the fraction whose nearest centre is their *given* label (the
    manifest's, noisy where the noise reached them; what :func:`heldout_noise_rate` reads).
    NaN when ``held`` is None."""
    from noisyfr.eval.embed import embed_dataset

    if held is None:
        return {"heldout_accuracy": math.nan, "heldout_given_accuracy": math.nan}
    images, true, given = held
    feats, _ = embed_dataset(model, images, batch_size=batch_size, device=device,
                             desc="held-out", flip=not getattr(images, "vectors", False))
    pred = nearest_centre(head, torch.from_numpy(feats).to(device)).cpu().numpy()
    return {"heldout_accuracy": float(np.mean(pred == true)),
            "heldout_given_accuracy": float(np.mean(pred == given))}
