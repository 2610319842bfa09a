"""MarginHead: the shared class-centre layer in front of every loss."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from noisyfr.errors import NoisyFRError
from noisyfr.losses.base import MarginLoss, check_real


class _SubcentreProducts(torch.autograd.Function):
    """``x @ W_k^T`` for every sub-centre k, as [K, B, C] (sub-centre-major, each [B, C] slice
    contiguous), from the weight in its stored layout [C*K, d] (row ``c*K + k``) without copying
    it: each product reads the strided [C, d] view of sub-centre k. Same values as
    ``F.linear(x, W)`` [B, C*K] permuted; the max over K then runs on contiguous slices."""

    @staticmethod
    def forward(ctx, x, weight, num_classes, K):
        w = weight.view(num_classes, K, -1)
        out = x.new_empty(K, x.shape[0], num_classes)
        for k in range(K):
            torch.mm(x, w[:, k].t(), out=out[k])
        ctx.save_for_backward(x, weight)
        ctx.shape = (num_classes, K)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        C, K = ctx.shape
        w = weight.view(C, K, -1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad[0], w[:, 0])
            for k in range(1, K):
                grad_x.addmm_(grad[k], w[:, k])
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(weight)
            gw = grad_w.view(C, K, -1)
            for k in range(K):
                torch.mm(grad[k].t(), x, out=gw[:, k])
        return grad_x, grad_w, None, None


class _MaxOverSubcentres(torch.autograd.Function):
    """``cos_k.max(dim=0).values`` for [K, B, C] in elementwise passes over contiguous slices
    (``max(dim)`` with indices is ~6x slower on CPU); ties go to the first maximal k as in
    ``max(dim)``, and the gradient goes to that k only."""

    @staticmethod
    def forward(ctx, cos_k):
        cos = cos_k[0].clone()
        for k in range(1, cos_k.shape[0]):
            torch.maximum(cos, cos_k[k], out=cos)
        # one-hot (float) of the first maximal k: eq, then drop later ties
        pick = torch.eq(cos_k, cos.unsqueeze(0), out=torch.empty_like(cos_k))
        taken = pick[0].clone()
        for k in range(1, cos_k.shape[0]):
            pick[k].mul_(torch.rsub(taken, 1.0))
            taken.add_(pick[k])
        ctx.save_for_backward(pick)
        return cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (pick,) = ctx.saved_tensors
        return pick.mul_(grad.unsqueeze(0))


def centre_cosines(x: torch.Tensor, weight: torch.Tensor, num_classes: int, K: int):
    """``(cos, cos_k, w_norms)`` of unit features ``x`` [B, d] with the centres ``weight``
    [C*K, d] (row ``c*K + k``): ``cos`` [B, C] (the max over the K sub-centres), ``cos_k``
    [K, B, C] before that max (None when K == 1) and the centre norms [C*K]."""
    # cos = x_hat . W_j / |W_j|: dividing the [B, C] product is cheaper than normalising the
    # [C, d] centres (B < d), with the same value and gradient.
    w_norms = weight.norm(dim=1)
    recip = w_norms.clamp_min(1e-12).reciprocal()
    if K == 1:
        return F.linear(x, weight) * recip, None, w_norms
    # cos = max over the K sub-centres, computed sub-centre-major [K, B, C]
    cos_k = _SubcentreProducts.apply(x, weight, num_classes, K) \
        * recip.view(num_classes, K).t().unsqueeze(1)
    return _MaxOverSubcentres.apply(cos_k), cos_k, w_norms


@torch.no_grad()
def count_subcentres(counts: torch.Tensor, cos_k: torch.Tensor, rows: torch.Tensor,
                     columns: torch.Tensor, classes: torch.Tensor) -> None:
    """Add one to ``counts[classes[i], k_i]`` [C, K] for each i, k_i being the sub-centre of
    entry ``(rows[i], columns[i])`` of ``cos_k`` [K, B, C'] nearest to its sample (the first
    maximal one)."""
    k = cos_k[:, rows, columns].max(dim=0).indices  # first maximal, as max(dim)
    K = counts.shape[1]
    counts.view(-1).index_add_(0, classes * K + k, torch.ones_like(classes))


#: Sub-centre counting window: the dominant sub-centre of a class is the one most of its samples
#: were nearest to during the epoch being trained plus the epoch before it.
SUBCENTRE_WINDOW_EPOCHS = 2


def register_subcentre_counts(module: nn.Module, classes: int, K: int) -> None:
    """The sub-centre counting buffers of a head (in its state dict, so a checkpoint resumes the
    window): ``subcentre_counts`` [classes, K] (the current epoch's), ``subcentre_counts_prev``
    [classes, K] (the previous epoch's) and ``subcentre_epoch`` (the epoch being counted, 0
    before any)."""
    module.register_buffer("subcentre_counts", torch.zeros(classes, K, dtype=torch.long))
    module.register_buffer("subcentre_counts_prev", torch.zeros(classes, K, dtype=torch.long))
    module.register_buffer("subcentre_epoch", torch.zeros((), dtype=torch.long))


@torch.no_grad()
def rotate_subcentre_counts(module: nn.Module, epoch: int) -> None:
    """Start counting ``epoch``: when it differs from the epoch being counted, the current counts
    become the previous epoch's and the current ones restart at zero (the counts of the epoch
    before the previous one are dropped). Calling it again with the same epoch (a resumed run's
    restart, a repeated call) changes nothing."""
    if int(module.subcentre_epoch) == int(epoch):
        return
    module.subcentre_counts_prev.copy_(module.subcentre_counts)
    module.subcentre_counts.zero_()
    module.subcentre_epoch.fill_(int(epoch))


def dominant_subcentres(module: nn.Module) -> torch.Tensor:
    """Each class's dominant sub-centre [classes]: the argmax of the counts of the current and
    the previous epoch (the first maximal one; sub-centre 0 before any count)."""
    return (module.subcentre_counts + module.subcentre_counts_prev).argmax(dim=1)


class MarginHead(nn.Module):
    """Class centres + loss: ``loss_value, logits, cos = head(features, labels)``.

    Features and centres are L2-normalised and ``cos`` [B, C] (after the max over sub-centres) is
    passed to the loss with ``norms`` = feature norms [B]. ``cos`` stays in the autograd graph, so
    ``cos.retain_grad()`` gives dL/dcos. ``loss_value`` is the mean cross-entropy plus the loss's
    penalty (MagFace regulariser, BoundaryFace term). For ``softmax`` the head is an unnormalised
    linear layer (logits = W x + b), and ``cos`` is still the normalised cosine.
    ``loss`` is a loss module or a registered name (built with its defaults).
    After a forward, ``last_labels`` [B] holds the labels the cross-entropy trained on (the
    given labels, or BoundaryFace's corrected ones).
    """

    def __init__(self, embedding_dim: int, num_classes: int, loss: MarginLoss | str = "arcface"):
        super().__init__()
        self.embedding_dim = check_real("MarginHead", "embedding_dim", embedding_dim, lo=1,
                                        integer=True)
        self.num_classes = check_real("MarginHead", "num_classes", num_classes, lo=1, integer=True)
        if isinstance(loss, str):
            from noisyfr.losses import build_loss

            loss = build_loss(loss)
        if not isinstance(loss, MarginLoss):
            raise NoisyFRError(f"MarginHead: invalid parameter loss={loss!r}: must be a loss name "
                               "or a noisyfr.losses loss module")
        self.loss = loss
        self.K = int(loss.subcenters)
        C, d, K = self.num_classes, self.embedding_dim, self.K
        self.weight = nn.Parameter(torch.empty(C * K, d))
        if loss.linear_head:
            self.bias = nn.Parameter(torch.zeros(C))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        else:
            self.register_parameter("bias", None)
            nn.init.normal_(self.weight, 0.0, 0.01)  # insightface's centre init
        if K > 1:
            register_subcentre_counts(self, C, K)
        self.last_labels: torch.Tensor | None = None

    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        """Return ``(loss_value, logits, cos)`` for features [B, d] and int64 labels [B]."""
        if not torch.is_tensor(features) or features.dim() != 2 \
                or features.shape[1] != self.embedding_dim:
            raise NoisyFRError(f"MarginHead: features must be [B, {self.embedding_dim}], got "
                               f"{tuple(getattr(features, 'shape', ()))}")
        norms = features.norm(dim=1)
        x = features / norms.clamp_min(1e-12).unsqueeze(1)
        cos, cos_k, w_norms = centre_cosines(x, self.weight, self.num_classes, self.K)
        if cos_k is not None and self.training and torch.is_tensor(labels) \
                and labels.dtype == torch.int64 and labels.shape == cos.shape[:1] \
                and labels.numel() and 0 <= int(labels.min()) \
                and int(labels.max()) < self.num_classes:
            count_subcentres(self.subcentre_counts, cos_k,
                             torch.arange(labels.shape[0], device=labels.device), labels, labels)
        if self.loss.linear_head:
            out = self.loss.compute(cos, labels, norms=norms, centre_norms=w_norms,
                                    bias=self.bias)
        else:
            out = self.loss.compute(cos, labels, norms=norms)
        self.last_labels = out.labels.detach()
        value = F.cross_entropy(out.logits, out.labels)
        if out.penalty is not None:
            value = value + out.penalty
        return value, out.logits, cos

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the current epoch (counts from 1); with sub-centres, rotate the counting
        window (:func:`rotate_subcentre_counts`)."""
        self.loss.set_epoch(epoch)
        if self.K > 1:
            rotate_subcentre_counts(self, epoch)

    @staticmethod
    def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
        """Samples of the last forward whose margin logits' argmax is their label."""
        return int((logits.detach().argmax(1) == labels).sum())

    @torch.no_grad()
    def class_centres(self) -> torch.Tensor:
        """Normalised class centres [C, d]; with sub-centres, each class's dominant one (the one
        most training samples were nearest to in the current and the previous epoch, see
        :data:`SUBCENTRE_WINDOW_EPOCHS`; sub-centre 0 before any training step)."""
        w = F.normalize(self.weight.detach(), dim=1)
        if self.K == 1:
            return w
        w = w.view(self.num_classes, self.K, -1)
        dom = dominant_subcentres(self)
        return w[torch.arange(self.num_classes, device=w.device), dom]

    def subcentre_outliers(self, features: torch.Tensor, labels: torch.Tensor,
                           threshold_deg: float = 75.0):
        """Sub-center ArcFace outlier query over a whole set of features (see
        :meth:`SubCenterArcFace.outlier_query`)."""
        if not hasattr(self.loss, "outlier_query"):
            raise NoisyFRError(f"MarginHead: loss {self.loss.name} has no sub-centres to query")
        centres = self.weight.detach().view(self.num_classes, self.K, -1)
        return self.loss.outlier_query(features, labels, centres, threshold_deg)
