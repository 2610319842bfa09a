"""Per-sample angle tracking from the training forward/backward pass (no extra forward): the rows
of the angle logs whose contract (columns, types, files, the health metrics) is
:mod:`noisyfr.angle_log`, re-exported here. :func:`batch_rows` / :func:`sharded_batch_rows` give a
batch's rows, :class:`AngleTracker` keeps them over an epoch, :func:`epoch_summary` is what the
trainer reports of them.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from noisyfr.angle_log import (  # noqa: F401 (the angle-log contract, re-exported)
    _FLOATS,
    ANGLE_SCHEMA,
    COLUMNS,
    DEFAULT_LEARNED_ACCURACY,
    DICTIONARY_COLUMNS,
    HEALTH_COLUMNS,
    REQUIRED_COLUMNS,
    ROW_GROUP_ROWS,
    SUBSET_STREAM,
    WEIGHT_COLUMNS,
    _int32,
    check_learned_threshold,
    health_metrics,
    is_logged_epoch,
    keep_samples,
    learned,
    logged_epochs,
    logged_samples,
    rows_frame,
    write_angles,
)
from noisyfr.distributed import all_gather_rows, all_reduce_


def batch_rows(cos: torch.Tensor, labels: torch.Tensor, labels_used: torch.Tensor,
               orig_labels: torch.Tensor, grad_cos: torch.Tensor | None = None,
               grad_feat: torch.Tensor | None = None, scale: float = 1.0,
               theta_dominant: torch.Tensor | None = None,
               feats: torch.Tensor | None = None,
               logits: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample values of one batch as a float tensor [B, 12] in the order of ``_FLOATS``.

    ``cos`` [B, C] (detached or not); ``labels``, ``labels_used``, ``orig_labels`` int64 [B]
    (an ``orig_label`` outside ``0..C-1``, e.g. -1 for open-set noise, gives ``theta_orig = NaN``);
    ``grad_cos`` [B, C] and ``grad_feat`` [B, d]: gradients of the *batch-mean* loss w.r.t. the
    cosines and the backbone's output (times ``scale`` under a gradient scaler), None -> NaN
    weights; ``theta_dominant`` [B] (None: equal to ``theta_y``); ``feats`` [B, d]: the
    backbone's output (None: ``feat_norm`` and ``unit_pull`` NaN); ``logits`` [B, C]: the
    logits the cross-entropy saw, with ``labels_used`` as its labels (None: ``lse_neg`` NaN).
    """
    cos = cos.detach().float().clamp(-1.0, 1.0)
    b, c = cos.shape
    rows = torch.arange(b, device=cos.device)
    if c > 1:
        top_val, top_idx = cos.topk(2, dim=1)
    else:
        top_val = torch.full((b, 2), float("nan"), device=cos.device)
        top_idx = torch.full((b, 2), -1, dtype=torch.long, device=cos.device)
    valid = (orig_labels >= 0) & (orig_labels < c)
    cos_o = torch.where(valid, cos[rows, orig_labels.clamp(0, c - 1)],
                        torch.full_like(top_val[:, 0], float("nan")))
    grad_y = None if grad_cos is None else grad_cos[rows, labels_used].float() * (b / scale)
    grad_norm = None if grad_feat is None else \
        grad_feat.detach().float().norm(dim=1) * (b / scale)
    pull = _unit_pull(feats, grad_feat)
    if pull is not None:
        pull[:, 0] *= b / scale
    return _rows(cos[rows, labels], labels, top_val, top_idx, cos_o,
                 theta_dominant, cos[rows, labels_used], grad_y, grad_norm, pull,
                 None if logits is None else lse_negatives(logits, labels_used))


@torch.no_grad()
def lse_negatives(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log sum_{j != labels_i} exp(logits[i, j])`` [B] in float32 (-inf with one class)."""
    z = logits.detach().float().clone()
    z.scatter_(1, labels.long().unsqueeze(1), float("-inf"))
    return torch.logsumexp(z, dim=1)


def _unit_pull(feats, grad_feat) -> torch.Tensor | None:
    """``[unit_pull, feat_norm]`` [B, 2] of embeddings ``feats`` and their gradient ``grad_feat``
    (unscaled: ``unit_pull`` still carries the caller's batch and loss-scale factors); the first
    column NaN without a gradient; None without ``feats``."""
    if feats is None:
        return None
    f = feats.detach().float()
    norm = f.norm(dim=1)
    if grad_feat is None:
        return torch.stack([torch.full_like(norm, float("nan")), norm], 1)
    x = f / norm.clamp_min(1e-12).unsqueeze(1)
    g = grad_feat.detach().float()
    tangent = g - x * (x * g).sum(1, keepdim=True)
    return torch.stack([norm * tangent.norm(dim=1), norm], 1)


def _rows(cos_y, labels, top_val, top_idx, cos_orig, theta_dominant, cos_used, grad_y,
          grad_norm, pull=None, lse_neg=None) -> torch.Tensor:
    """The [B, 12] rows of :func:`batch_rows` from per-row values: the label's cosine, the two
    largest cosines of the row and their classes, the cosine to the original label (NaN when
    outside the label set), the angle to the dominant centre (None: theta_y), the cosine at the
    label trained on, the per-sample gradient on that cosine and on the embedding (None: NaN),
    ``[unit_pull, feat_norm]`` [B, 2] (None: NaN) and the log-sum-exp of the non-target
    logits [B] (None: NaN)."""
    first_is_label = top_idx[:, 0] == labels
    near_val = torch.where(first_is_label, top_val[:, 1], top_val[:, 0])
    near_idx = torch.where(first_is_label, top_idx[:, 1], top_idx[:, 0])
    theta_y = torch.arccos(cos_y)
    nan = torch.full_like(cos_y, float("nan"))
    weight = nan if grad_y is None else grad_y.abs()
    weight_theta = weight * torch.sqrt((1.0 - cos_used ** 2).clamp_min(0.0))
    theta_dom = theta_y if theta_dominant is None else theta_dominant.detach().float()
    return torch.stack([theta_y, torch.arccos(near_val.clamp(-1.0, 1.0)), near_idx.float(),
                        torch.arccos(cos_orig), theta_dom, weight, weight_theta,
                        nan if grad_norm is None else grad_norm,
                        nan if pull is None else pull[:, 0], nan if pull is None else pull[:, 1],
                        torch.arccos(cos_used.clamp(-1.0, 1.0)),
                        nan if lse_neg is None else lse_neg.to(nan.dtype)], 1)


@torch.no_grad()
def sharded_batch_rows(head, orig_labels: torch.Tensor, grad_cos: torch.Tensor | None,
                       grad_feat: torch.Tensor | None, scale: float = 1.0,
                       feats: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`batch_rows` for this rank's samples of the last step of a Partial FC head
    (:class:`~noisyfr.losses.partial_fc.PartialFCHead`), exact under sampling: ``theta_y`` from
    the cosine trained on, ``theta_nearest`` / ``nearest_label`` from a pass over every rank's
    whole shard (a distributed top-2), ``theta_orig`` / ``theta_dominant`` from the rank holding
    that centre; ``weight`` from the gradient on the label's cosine (the loss is the mean over
    the global batch) and ``grad_norm`` from ``grad_feat`` (this rank's embeddings' gradient,
    which carries the head's ``grad_scale``), ``unit_pull`` / ``feat_norm`` from it and
    ``feats`` (this rank's embeddings; None: NaN), ``theta_used`` = ``theta_y`` (Partial FC
    corrects no label), ``lse_neg`` over the sampled non-target classes of every rank (NaN
    when the head kept no logits). ``orig_labels`` [b] are this rank's rows'."""
    st = head.last
    B, C = st.labels.shape[0], head.num_classes
    b = B // head.world
    mine = slice(head.rank * b, (head.rank + 1) * b)
    orig = all_gather_rows(orig_labels.to(st.labels.device))
    valid = (orig >= 0) & (orig < C)
    cos_o, own_o = head.owned_cosines(st.x, orig.clamp(0, C - 1))
    if head.K > 1:
        cos_d, _ = head.owned_cosines(st.x, st.labels, dominant=True)
    else:
        cos_d = torch.zeros_like(cos_o)
    if grad_cos is None:
        g_y = torch.zeros_like(cos_o)
    else:
        own = st.col >= 0
        g_y = torch.where(own, grad_cos.gather(1, st.col.clamp_min(0).unsqueeze(1)).squeeze(1),
                          torch.zeros_like(cos_o)).float()
    packed = all_reduce_(torch.stack([cos_o, cos_d, g_y], 1))
    top_val, top_idx = head.nearest_two(st.x)
    cos_y = st.cos_y.float().clamp(-1.0, 1.0)
    nan = torch.full_like(cos_y, float("nan"))
    cos_orig = torch.where(valid, packed[:, 0].clamp(-1.0, 1.0), nan)
    theta_dom = torch.arccos(packed[:, 1].clamp(-1.0, 1.0)) if head.K > 1 else None
    grad_y = None if grad_cos is None else packed[:, 2] * (B / scale)
    grad_norm = None if grad_feat is None else \
        all_gather_rows(grad_feat.detach().float().norm(dim=1)) * (B / (head.grad_scale * scale))
    pull = _unit_pull(feats, grad_feat)
    if pull is not None:
        pull = all_gather_rows(pull)
        pull[:, 0] *= B / (head.grad_scale * scale)
    rows = _rows(cos_y, st.labels, top_val, top_idx, cos_orig, theta_dom, cos_y, grad_y,
                 grad_norm, pull, None if st.logits is None else _sharded_lse_neg(st.logits, st.col))
    return rows[mine]


def _sharded_lse_neg(logits: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """The log-sum-exp of every row's non-target logits over every rank's sampled columns
    (``logits`` [B, S] this rank's, ``col`` [B] the target column here or -1)."""
    z = logits.detach().float().clone()
    if z.shape[1]:
        idx = col.clamp_min(0).unsqueeze(1)
        z.scatter_(1, idx, torch.where(col >= 0, torch.full_like(z[:, 0], -math.inf),
                                       z.gather(1, idx).squeeze(1)).unsqueeze(1))
        local = torch.logsumexp(z, dim=1)
    else:
        local = z.new_full((z.shape[0],), -math.inf)
    top = all_reduce_(local.clone(), "max")
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = all_reduce_(torch.exp(local - safe))
    return torch.where(torch.isfinite(top), safe + total.log(), top)


class AngleTracker:
    """Collects per-sample rows over one epoch (kept on the device until :meth:`arrays`)."""

    def __init__(self) -> None:
        self._index: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._used: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []

    def add(self, sample_index: torch.Tensor, labels: torch.Tensor, labels_used: torch.Tensor,
            values: torch.Tensor) -> None:
        """Add a batch: ``values`` from :func:`batch_rows`."""
        self._index.append(sample_index.detach())
        self._labels.append(labels.detach())
        self._used.append(labels_used.detach())
        self._values.append(values.detach())

    def __len__(self) -> int:
        return sum(len(i) for i in self._index)

    def arrays(self) -> dict[str, np.ndarray]:
        """The collected rows as numpy arrays (one host transfer per column): ``sample_index``,
        ``label``, ``label_used`` int32 [N] and ``values`` float32 [N, len(_FLOATS)]."""
        if not self._index:
            return {"sample_index": np.zeros(0, np.int32), "label": np.zeros(0, np.int32),
                    "label_used": np.zeros(0, np.int32),
                    "values": np.zeros((0, len(_FLOATS)), np.float32)}
        return {
            "sample_index": _int32(torch.cat(self._index).cpu().numpy(), "sample_index"),
            "label": _int32(torch.cat(self._labels).cpu().numpy(), "label"),
            "label_used": _int32(torch.cat(self._used).cpu().numpy(), "label_used"),
            "values": torch.cat(self._values).cpu().numpy().astype(np.float32),
        }


def epoch_summary(frame: pd.DataFrame, noise: np.ndarray | None = None,
                  orig_labels: np.ndarray | None = None) -> dict[str, float]:
    """Everything the trainer reports about one epoch's angle rows: :func:`health_metrics`,
    ``theta_clean_mean``/``theta_noisy_mean`` (radians), ``noisy_auc`` (ROC AUC of theta_y for
    noise != clean; NaN without noisy samples) and ``n_corrected`` (rows whose ``label_used``
    differs from ``label``).

    ``noise`` (str) and ``orig_labels`` (int) are arrays indexed by sample_index (None: all clean).
    """
    idx = frame["sample_index"].to_numpy()
    rows = frame
    if noise is not None:
        rows = rows.assign(noise=np.asarray(noise, dtype=object)[idx])
    if orig_labels is not None:
        rows = rows.assign(orig_label=np.asarray(orig_labels, dtype=np.int64)[idx])
    out = health_metrics(rows)
    theta = frame["theta_y"].to_numpy(np.float64)
    flags = (np.zeros(len(frame), dtype=bool) if noise is None
             else rows["noise"].astype(str).to_numpy() != "clean")
    out["theta_clean_mean"] = float(theta[~flags].mean()) if (~flags).any() else math.nan
    out["theta_noisy_mean"] = float(theta[flags].mean()) if flags.any() else math.nan
    out["noisy_auc"] = math.nan
    if flags.any() and (~flags).any():
        from noisyfr.eval import noisy_detection_auc

        out["noisy_auc"] = float(noisy_detection_auc(theta, flags))
    out["n_corrected"] = int((frame["label_used"].to_numpy() != frame["label"].to_numpy()).sum())
    return out
