"""The pure parts of the training schedule: per-epoch seeds, the learning-rate curve, batches."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the global torch generator for ``epoch`` (augmentation, dropout, workers)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def lr_factor(step: int, cfg: Mapping[str, Any], steps_per_epoch: int) -> float:
    """Learning-rate multiplier for optimiser step ``step`` (0-based).

    Linear warmup over ``optim.warmup_epochs`` (from lr/warmup_steps up to lr), then
    ``cosine``: min + (1 - min) * (1 + cos(pi * p)) / 2; ``poly``: min + (1 - min) * (1 - p)^power;
    ``step``: gamma^(number of optim.lr_steps epochs passed); ``constant``: 1;
    where p is the post-warmup progress in [0, 1) and min = min_lr / lr.
    """
    o = cfg["optim"]
    total = o["epochs"] * steps_per_epoch
    warm = int(round(o["warmup_epochs"] * steps_per_epoch))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    floor = o["min_lr"] / o["lr"]
    sched = o["schedule"]
    if sched == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if sched == "poly":
        return floor + (1.0 - floor) * (1.0 - p) ** o["power"]
    if sched == "step":
        epoch_f = step / steps_per_epoch
        return o["gamma"] ** sum(1 for e in o["lr_steps"] if epoch_f >= e)
    return 1.0


def make_batches(indices: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches; a trailing batch of one sample is merged into the previous one
    (BatchNorm cannot train on a single sample) so that every sample is seen every epoch."""
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


class EpochBatches:
    """A DataLoader batch sampler: :func:`make_batches` over the current epoch's order of
    ``sampler`` (call ``sampler.set_epoch`` first), so one loader serves every epoch. With
    ``skip = k`` an iteration starts at the epoch's batch k (a run resumed mid-epoch): the same
    batches as the uninterrupted epoch from there on, and no image of the first k is loaded.
    ``len`` stays the epoch's whole number of batches."""

    def __init__(self, sampler, batch_size: int):
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.skip = 0

    def __iter__(self):
        return iter(make_batches(list(self.sampler), self.batch_size)[self.skip:])

    def __len__(self) -> int:
        return len(make_batches(list(range(len(self.sampler))), self.batch_size))
