"""Partial FC (model-parallel margin head with sampled negatives, as insightface arcface_torch's
``partial_fc_v2``), for every margin loss through the same ``target_logit``.

Each rank holds a contiguous shard of the class centres (:func:`noisyfr.distributed.shard_range`).
A step all-gathers the features and labels of every rank (the global batch), and each rank
computes the logits of its shard's *sampled* classes: the positive classes of the global batch
that live in the shard plus random negatives, ``int(sample_rate * shard size)`` classes in all
(every positive is kept when they are more). The cross-entropy's softmax runs over the sampled
classes of all ranks (a max and two sums all-reduced), so the loss is the mean over the global
batch and has the same value on every rank. The target logit of a row is computed by the rank
that holds its class, with the loss's own ``_target`` (so ``exact`` / ``detached`` and every
``target_logit`` apply unchanged); running state (``update_state``) sees the whole global batch
on every rank, so it stays identical; CurricularFace's hard negatives are modulated on every
shard against each row's target. With ``sample_rate=1`` nothing is sampled and the loss and the
updates equal those of :class:`~noisyfr.losses.MarginHead` on the global batch.

Gradients: the features' gradient is summed over the ranks' shards and multiplied by
``grad_scale`` (the world size by default, because DistributedDataParallel averages the
backbone's gradients over the ranks). Unsampled centres get a zero gradient (momentum and weight
decay still move them, as in arcface_torch). Negative sampling draws from a generator re-seeded
per epoch from ``(seed, epoch, rank)`` (:meth:`PartialFCHead.set_epoch`), so a resumed run
samples what the uninterrupted run sampled.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from noisyfr.distributed import all_gather_rows, all_reduce_, gather_rows_with_grad, rank_world, shard_range
from noisyfr.errors import NoisyFRError
from noisyfr.losses.base import MarginLoss, _MarginLogits, check_real
from noisyfr.losses.head import (
    centre_cosines,
    count_subcentres,
    dominant_subcentres,
    register_subcentre_counts,
    rotate_subcentre_counts,
)

#: Classes per block of the seeded centre initialisation (independent of the world size).
INIT_BLOCK = 4096
#: Bytes of the [B, block, K] cosine block of the no-grad pass over a whole shard (the
#: nearest-class search of the angle log): the block of classes shrinks as the batch grows.
SCAN_BYTES = 1 << 28


def sample_count(num_local: int, sample_rate: float) -> int:
    """Classes a shard of ``num_local`` computes per step at ``sample_rate`` (before the
    positives: all of them are kept when they are more)."""
    return max(1, int(sample_rate * num_local))


def scan_block(batch: int, K: int) -> int:
    """Classes per block of the nearest-class pass for a global batch of ``batch`` rows."""
    return max(1, SCAN_BYTES // (4 * max(1, batch) * K))


def partial_fc_blocker(loss: MarginLoss) -> str | None:
    """Why ``loss`` cannot run under Partial FC, or None when it can."""
    if loss.partial_fc_blocker:
        return loss.partial_fc_blocker
    if loss.linear_head:
        return "it has an unnormalised linear head"
    if type(loss).correct_labels is not MarginLoss.correct_labels:
        return "its label correction needs each sample's cosine to every class"
    return None


def init_centres(start: int, count: int, K: int, dim: int, seed: int) -> torch.Tensor:
    """Centres [count*K, dim] of classes ``start .. start+count-1``, N(0, 0.01) (insightface's
    init) drawn block by block from generators seeded with ``(seed, block)``: a class's centre does
    not depend on how the classes are sharded."""
    out = torch.empty(count * K, dim)
    first, last = start // INIT_BLOCK, (start + count - 1) // INIT_BLOCK if count else -1
    for block in range(first, last + 1):
        seq = np.random.SeedSequence([int(seed), 0x5043, block])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
        rows = torch.empty(INIT_BLOCK * K, dim).normal_(0.0, 0.01, generator=gen)
        lo, hi = max(start, block * INIT_BLOCK), min(start + count, (block + 1) * INIT_BLOCK)
        out[(lo - start) * K:(hi - start) * K] = rows[(lo - block * INIT_BLOCK) * K:
                                                     (hi - block * INIT_BLOCK) * K]
    return out


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the rows of ``logits`` [B, S] whose columns are spread over the
    ranks (each rank passes its own); ``col`` [B] is a row's target column on this rank, -1 when
    another rank holds it. Returns the loss (identical on every rank) and, per row, whether the
    target logit is the row's largest (the argmax is the label)."""

    @staticmethod
    def forward(ctx, logits, col):
        own = col >= 0
        idx = col.clamp_min(0).unsqueeze(1)
        top = all_reduce_(logits.max(dim=1).values, "max")
        exp = torch.sub(logits, top.unsqueeze(1)).exp_()
        total = all_reduce_(exp.sum(dim=1))
        target = all_reduce_(torch.where(own, logits.gather(1, idx).squeeze(1),
                                         torch.zeros_like(top)))
        loss = (total.log() + top - target).mean()
        ctx.save_for_backward(exp.div_(total.unsqueeze(1)), idx, own)
        correct = target >= top
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _):
        prob, idx, own = ctx.saved_tensors
        scale = grad / prob.shape[0]
        out = prob.mul_(scale)
        out.scatter_add_(1, idx, (own.to(out.dtype) * -scale).unsqueeze(1))
        return out, None


class PartialState(NamedTuple):
    """What the last forward of a :class:`PartialFCHead` saw, for the angle log."""

    x: torch.Tensor  #: unit features of the global batch [B, d] (detached)
    labels: torch.Tensor  #: labels of the global batch [B]
    cos_y: torch.Tensor  #: cosine of each row to its label's centre [B] (as trained on)
    col: torch.Tensor  #: the row's target column in this rank's logits, -1 elsewhere [B]
    correct: torch.Tensor  #: the label is the row's largest logit [B] (bool)
    classes: torch.Tensor  #: the global class of each of this rank's columns [S]
    logits: torch.Tensor | None = None  #: this rank's logits as the cross-entropy saw them [B, S]


class PartialFCHead(nn.Module):
    """Model-parallel margin head: ``loss_value, logits, cos = head(features, labels)``.

    ``features`` [b, d] and ``labels`` [b] are this rank's rows (every rank the same b);
    ``logits`` and ``cos`` [world*b, S] are this rank's sampled columns for the global batch.
    ``weight`` holds the centres of classes ``class_start .. class_start + num_local - 1``
    ([num_local*K, d], row ``c*K + k`` as in :class:`~noisyfr.losses.MarginHead`).
    """

    sharded = True

    def __init__(self, embedding_dim: int, num_classes: int, loss: MarginLoss,
                 sample_rate: float = 1.0, *, seed: int = 0, rank: int | None = None,
                 world: int | None = None, grad_scale: float | None = None):
        super().__init__()
        if not isinstance(loss, MarginLoss):
            raise NoisyFRError(f"PartialFCHead: invalid parameter loss={loss!r}: must be a "
                               "noisyfr.losses loss module")
        why = partial_fc_blocker(loss)
        if why:
            raise NoisyFRError(f"PartialFCHead: loss {loss.name} cannot run under Partial FC: {why}")
        self.sample_rate = check_real("PartialFCHead", "sample_rate", sample_rate, lo=0.0,
                                      lo_open=True, hi=1.0)
        self.embedding_dim = check_real("PartialFCHead", "embedding_dim", embedding_dim, lo=1,
                                        integer=True)
        self.num_classes = check_real("PartialFCHead", "num_classes", num_classes, lo=1,
                                      integer=True)
        here = rank_world()
        self.rank, self.world = (here[0] if rank is None else rank), (here[1] if world is None else world)
        if self.num_classes < self.world:
            raise NoisyFRError(f"PartialFCHead: {self.num_classes} classes cannot be sharded over "
                               f"{self.world} ranks (needs at least one class per rank)")
        self.grad_scale = float(self.world if grad_scale is None else grad_scale)
        self.loss, self.K, self.seed = loss, int(loss.subcenters), int(seed)
        self.class_start, self.num_local = shard_range(self.num_classes, self.rank, self.world)
        self.num_sample = sample_count(self.num_local, self.sample_rate)
        self.weight = nn.Parameter(init_centres(self.class_start, self.num_local, self.K,
                                                self.embedding_dim, self.seed))
        if self.K > 1:
            register_subcentre_counts(self, self.num_local, self.K)
        self._gen: torch.Generator | None = None
        self._epoch = 1
        self.last: PartialState | None = None
        self.last_labels: torch.Tensor | None = None

    # ---- sampling --------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the epoch, re-seed the negative sampling from (seed, epoch, rank) and,
        with sub-centres, rotate the counting window as :class:`~noisyfr.losses.MarginHead`."""
        self.loss.set_epoch(epoch)
        if self.K > 1:
            rotate_subcentre_counts(self, epoch)
        self._epoch = int(epoch)
        self._gen = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            seq = np.random.SeedSequence([self.seed, 0x5046, self._epoch, self.rank])
            self._gen = torch.Generator(device).manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
        return self._gen

    def sampling_state(self) -> torch.Tensor | None:
        """The negative sampling generator's state within the epoch (None before its first draw):
        a run stopped mid-epoch saves it, and :meth:`load_sampling_state` puts it back."""
        return None if self._gen is None else self._gen.get_state()

    def load_sampling_state(self, state: torch.Tensor | None) -> None:
        """Continue the epoch's negative sampling from ``state`` (after :meth:`set_epoch`)."""
        if state is not None:
            self._generator(self.weight.device).set_state(state.cpu())

    def sample(self, local: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
        """Sorted local class indices to compute this step (None: the whole shard): the positive
        classes ``local[own]`` plus uniformly drawn negatives, ``num_sample`` in all (all the
        positives when they are more)."""
        if self.num_sample >= self.num_local:
            return None
        positive = torch.unique(local[own])
        if positive.numel() >= self.num_sample:
            return positive
        score = torch.rand(self.num_local, generator=self._generator(self.weight.device),
                           device=self.weight.device)
        score[positive] = 2.0
        return score.topk(self.num_sample).indices.sort().values

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        """Return ``(loss_value, logits, cos)`` (see the class docstring)."""
        if not torch.is_tensor(features) or features.dim() != 2 \
                or features.shape[1] != self.embedding_dim:
            raise NoisyFRError(f"PartialFCHead: features must be [B, {self.embedding_dim}], got "
                               f"{tuple(getattr(features, 'shape', ()))}")
        if not torch.is_tensor(labels) or labels.dtype != torch.int64 \
                or labels.shape != features.shape[:1]:
            raise NoisyFRError(f"PartialFCHead: labels must be an int64 tensor "
                               f"[{features.shape[0]}], got {tuple(getattr(labels, 'shape', ()))}")
        feats = gather_rows_with_grad(features, self.grad_scale)
        labels_all = all_gather_rows(labels)
        if labels_all.numel() and (int(labels_all.min()) < 0
                                   or int(labels_all.max()) >= self.num_classes):
            raise NoisyFRError(f"PartialFCHead: labels out of range [0, {self.num_classes}): min "
                               f"{int(labels_all.min())}, max {int(labels_all.max())}")
        norms = feats.norm(dim=1)
        x = feats / norms.clamp_min(1e-12).unsqueeze(1)
        local = labels_all - self.class_start
        own = (local >= 0) & (local < self.num_local)
        index = self.sample(local, own)
        if index is None:
            weight, col = self.weight, torch.where(own, local, -1)
        else:
            d = self.embedding_dim
            weight = self.weight.view(self.num_local, self.K, d)[index].view(-1, d)
            col = torch.where(own, torch.searchsorted(index, local.clamp(0, self.num_local - 1)), -1)
        S = weight.shape[0] // self.K
        cos, cos_k, _ = centre_cosines(x, weight, S, self.K)
        if cos_k is not None and self.training:
            rows = own.nonzero().squeeze(1)
            classes = local[rows] if index is None else index[col[rows]]
            count_subcentres(self.subcentre_counts, cos_k, rows, col[rows], classes)
        value, logits, cos_y, correct = self._loss(cos, col, own, labels_all, norms)
        classes = (torch.arange(self.num_local, device=local.device) if index is None
                   else index) + self.class_start
        self.last = PartialState(x.detach(), labels_all, cos_y, col, correct, classes,
                                 logits.detach())
        self.last_labels = labels.detach()
        return value, logits, cos

    def _loss(self, cos, col, own, labels_all, norms):
        loss = self.loss
        with torch.no_grad():
            cos_y = all_reduce_(torch.where(own, cos.gather(1, col.clamp_min(0).unsqueeze(1))
                                            .squeeze(1), torch.zeros_like(norms)))
        if loss.identity_target:
            logits = cos * loss.s
        else:
            if loss.training:
                with torch.no_grad():
                    loss.update_state(cos_y, norms)
            logits, _ = _MarginLogits.apply(cos, norms, col, loss, cos_y)
        value, correct = _ShardedCrossEntropy.apply(logits, col)
        penalty = loss.penalty(None, labels_all, None, norms)
        if penalty is not None:  # the same value everywhere, its gradient counted once
            value = value + (penalty if self.rank == 0 else penalty.detach())
        return value, logits, cos_y, correct

    # ---- queries (no gradient) -------------------------------------------------------------
    def correct_count(self, logits: torch.Tensor, labels: torch.Tensor) -> int:
        """This rank's samples of the last forward whose largest logit (over every rank's
        sampled classes) is their label's."""
        b = labels.shape[0]
        return int(self.last.correct[self.rank * b:(self.rank + 1) * b].sum())

    def _unit_centres(self, rows: torch.Tensor) -> torch.Tensor:
        """Unit centres [n, K, d] of local classes ``rows``."""
        w = self.weight.detach().view(self.num_local, self.K, -1)[rows]
        return F.normalize(w.float(), dim=2)

    @torch.no_grad()
    def owned_cosines(self, x: torch.Tensor, classes: torch.Tensor, dominant: bool = False):
        """``(cos, own)`` for unit features ``x`` [B, d] and global classes [B]: the cosine to
        the class's centre (the max over sub-centres, or the dominant sub-centre with
        ``dominant``) on rows whose class lives on this rank (``own``), 0 elsewhere."""
        local = classes - self.class_start
        own = (local >= 0) & (local < self.num_local)
        rows = local.clamp(0, self.num_local - 1)
        cos_k = torch.einsum("bd,bkd->bk", x.float(), self._unit_centres(rows))
        if dominant and self.K > 1:
            cos = cos_k.gather(1, dominant_subcentres(self)[rows].unsqueeze(1)).squeeze(1)
        else:
            cos = cos_k.max(dim=1).values
        return torch.where(own, cos, torch.zeros_like(cos)), own

    @torch.no_grad()
    def nearest_two(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two largest cosines of unit features ``x`` [B, d] over every class of every rank
        and their global classes, ``(values, classes)`` [B, 2] each (-inf / -1 beyond C), from a
        pass over the whole shard in blocks of at most :data:`SCAN_BYTES` of cosines."""
        x = x.float()
        B = x.shape[0]
        best_v = x.new_full((B, 2), float("-inf"))
        best_i = torch.full((B, 2), -1, dtype=torch.long, device=x.device)
        block = scan_block(B, self.K)
        for lo in range(0, self.num_local, block):
            rows = torch.arange(lo, min(lo + block, self.num_local), device=x.device)
            cos = torch.einsum("bd,nkd->bnk", x, self._unit_centres(rows))
            cos = cos.squeeze(2) if self.K == 1 else cos.amax(dim=2)
            top = cos.topk(min(2, len(rows)), dim=1)  # the block's best two, then merge
            v = torch.cat([best_v, top.values], 1)
            i = torch.cat([best_i, rows[top.indices] + self.class_start], 1)
            top = v.topk(2, dim=1)
            best_v, best_i = top.values, i.gather(1, top.indices)
        v, i = all_gather_rows(best_v.unsqueeze(0)), all_gather_rows(best_i.unsqueeze(0))
        v, i = v.permute(1, 0, 2).reshape(B, -1), i.permute(1, 0, 2).reshape(B, -1)
        top = v.topk(2, dim=1)
        return top.values, i.gather(1, top.indices)
