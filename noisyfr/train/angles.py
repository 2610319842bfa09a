"""Per-sample angle tracking from the training forward/backward pass (no extra forward), and the
training-health metrics derived from it. This module owns the angle-log contract.

For every sample of a batch, from the head's cosine matrix ``cos`` [B, C] (before the margin):

- ``label``: the label given by the data (after noise injection); ``label_used``: the label the
  loss actually trained on (BoundaryFace may correct it; otherwise equal to ``label``);
- ``theta_y``: ``arccos(cos[i, label_i])``, the angle to the labelled class centre (the nearest
  of its sub-centres for Sub-center ArcFace);
- ``theta_nearest`` / ``nearest_label``: the smallest angle to any *other* centre and its class;
- ``theta_orig``: the angle to the original (true) label's centre from the manifest; equal to
  ``theta_y`` for clean samples, NaN when the true identity is outside the label set (open set,
  ``orig_label == -1``);
- ``theta_dominant``: the angle to the labelled class's *dominant* centre (Sub-center ArcFace:
  the sub-centre most samples of the class were nearest to during the current epoch so far plus
  the previous epoch, the paper's noise criterion measured over a recent window, see
  :func:`noisyfr.losses.head.rotate_subcentre_counts`); equal to ``theta_y`` for single-centre
  losses;
- ``weight``: ``|dL_i / d cos_{i, label_used}|``, the per-sample gradient magnitude on the cosine
  of the class trained on (the mean-loss gradient times the batch size). Its unit is the loss's
  scale ``s`` times a probability; for plain ``softmax`` (logits ``|x| |W_j| cos_j + b_j``) the
  scale is the product of the feature and centre norms instead of ``s``;
- ``weight_theta``: ``|dL_i / d theta_{label_used}|`` = ``weight * sin(theta_{label_used})``;
- ``grad_norm``: ``||dL_i / d f_i||``, the norm of the per-sample gradient on the embedding ``f``
  the backbone outputs (before L2 normalisation): the real pull of the sample on the backbone,
  negatives, hard-negative modulation and feature-norm terms included. It mixes two things: the
  pull on the direction, which scales as 1/|f|, and for norm-dependent losses (MagFace, AdaFace,
  plain softmax) the pull on the norm;
- ``unit_pull``: ``|f| * ||(I - x x^T) dL_i/df||`` with ``x = f/|f|``: the tangential pull on the
  unit embedding, i.e. the norm of the gradient w.r.t. the direction ``x`` projected on the
  sphere's tangent plane (the component along ``x`` changes no cosine). It does not depend on
  the feature norm's scale, so it is the pull comparable across losses and across runs whose
  norms differ. For a loss that depends on ``f`` through ``x`` only (every normalised loss but
  MagFace's margin and regulariser and AdaFace's margin), ``unit_pull = feat_norm * grad_norm``;
- ``feat_norm``: ``|f|``, the norm of the backbone output before L2 normalisation. Not a
  gradient: it is logged beside the weights but is not one of :data:`WEIGHT_COLUMNS`;
- ``theta_used``: ``arccos(cos[i, label_used_i])``, the angle to the centre of the class trained
  on. Equal to ``theta_y`` unless BoundaryFace corrected the label (Partial FC never does);
- ``lse_neg``: ``log sum_{j != label_used} exp(z_j)`` over the logits ``z`` the cross-entropy
  saw (``s cos_j`` for a margin loss, with whatever the loss does to the non-target entries:
  CurricularFace's hard-negative modulation included; ``W x + b`` for plain softmax; under
  Partial FC over the classes sampled for the step, across every rank). With the target logit
  ``z_y`` the sample's softmax probability is ``p = sigmoid(z_y - lse_neg)``; it is the
  geometry the counterfactual weights of :mod:`noisyfr.analysis.counterfactual` hold fixed.
  Not a weight (not one of :data:`WEIGHT_COLUMNS`). Logs written before it read it as NULL.

Which angle pairs with which weight: ``weight``, ``weight_theta`` are taken at ``label_used``,
so plot them against ``theta_used`` (or against ``theta_y`` only where ``label_used ==
label``); ``grad_norm`` and ``unit_pull`` are per sample, not per class, and pair with either
(``theta_y`` shows where the given label sits, ``theta_used`` where training pulls).

All angles are in radians. Rows are kept on the training device during the epoch (no host sync per
step) and written once per epoch to ``angles/epoch_<E>.parquet`` (E from 1), with the column types
of :data:`ANGLE_SCHEMA` (int32 indices and labels, float32 values) in row groups of at most
:data:`ROW_GROUP_ROWS` rows (:func:`write_angles`). ``track.angles_every`` writes only the epochs
of :func:`logged_epochs`; ``track.angles_fraction`` writes only the rows of a fixed seeded subset of
the samples (:func:`logged_samples`). The health metrics are computed from every row of every
epoch either way.

Health (:func:`health_metrics`), from the same rows with the plain cosine argmax (no margin):
``clean_true_accuracy`` (clean samples predicted as their label), ``noisy_fit_given`` /
``noisy_fit_true`` (closed-set noisy samples predicted as their given, wrong label = memorised /
as their true label), ``theta_clean_median`` / ``theta_noisy_median`` (radians). A run *learned*
(:func:`learned`) when its last epoch's ``clean_true_accuracy`` reaches a threshold (0.8 by
default, config key ``health.learned_accuracy``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisyfr import numeric
from noisyfr.distributed import all_gather_rows, all_reduce_
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path

#: Columns of ``angles/epoch_<E>.parquet``, in order.
COLUMNS = ("sample_index", "epoch", "label", "label_used", "theta_y", "theta_nearest",
           "nearest_label", "theta_orig", "theta_dominant", "weight", "weight_theta", "grad_norm",
           "unit_pull", "feat_norm", "theta_used", "lse_neg")
#: Columns every angle log has had; the others of :data:`COLUMNS` were added later (an older log
#: is read with them filled in, see :mod:`noisyfr.analysis.load`).
REQUIRED_COLUMNS = ("sample_index", "epoch", "label", "theta_y", "theta_nearest", "nearest_label",
                    "theta_orig", "weight")
#: Column types of ``angles/epoch_<E>.parquet`` as written now (numpy dtype names; the Arrow types
#: are ``pyarrow.from_numpy_dtype`` of them: ``int32`` and ``float``). Logs written before the
#: int32 columns have int64 there; readers accept both.
ANGLE_SCHEMA = {"sample_index": "int32", "epoch": "int32", "label": "int32", "label_used": "int32",
                "theta_y": "float32", "theta_nearest": "float32", "nearest_label": "int32",
                "theta_orig": "float32", "theta_dominant": "float32", "weight": "float32",
                "weight_theta": "float32", "grad_norm": "float32", "unit_pull": "float32",
                "feat_norm": "float32", "theta_used": "float32", "lse_neg": "float32"}
#: Most rows in one Parquet row group of an angle log (a reader scans the groups of one file on
#: several threads).
ROW_GROUP_ROWS = 131072
#: Columns written dictionary-encoded: those with few distinct values (labels, the epoch). Every
#: other column is all but unique per row (the sample index, every float) and is written PLAIN:
#: pyarrow's default dictionary attempt there (given up for PLAIN after 1 MB per column chunk)
#: makes the file half as large again and its writing several times slower.
DICTIONARY_COLUMNS = ("epoch", "label", "label_used", "nearest_label")
#: The numpy stream of the logged subset (``track.angles_fraction``):
#: ``default_rng([seed, *SUBSET_STREAM])``. Other run streams: ``[seed, epoch]`` (per-epoch
#: torch seeds), ``[seed, 1]`` (``data.max_samples``), ``[seed, 2, identity]`` (held-out split),
#: ``[seed, 0x5043, block]`` / ``[seed, 0x5046, ...]`` (Partial FC); three values whose second is
#: none of theirs collide with none of them (numpy pads a key with zeros, so ``[seed, k]`` would
#: be epoch ``k``'s key).
SUBSET_STREAM = (0x414E, 1)
#: Per-sample weight columns; ``noisyfr analyze --weight`` picks one of them.
WEIGHT_COLUMNS = ("weight", "weight_theta", "grad_norm", "unit_pull")
#: Float values per sample kept by the tracker, in order (the columns after the labels).
_FLOATS = ("theta_y", "theta_nearest", "nearest_label", "theta_orig", "theta_dominant", "weight",
           "weight_theta", "grad_norm", "unit_pull", "feat_norm", "theta_used", "lse_neg")
#: Health metrics of one epoch (see :func:`health_metrics`).
HEALTH_COLUMNS = ("clean_true_accuracy", "noisy_fit_given", "noisy_fit_true",
                  "theta_clean_median", "theta_noisy_median")
#: Default of ``health.learned_accuracy``: a run learned when its last epoch's
#: ``clean_true_accuracy`` is at least this.
DEFAULT_LEARNED_ACCURACY = 0.8


def check_learned_threshold(value, name: str = "learned threshold") -> float:
    """``value`` as a finite float in [0, 1]; NoisyFRError naming ``name`` otherwise."""
    return numeric.real(value, name, lo=0.0, hi=1.0)


def learned(clean_true_accuracy: float, threshold: float = DEFAULT_LEARNED_ACCURACY) -> bool:
    """True when ``clean_true_accuracy`` (a run's last epoch) reaches ``threshold``; False for NaN."""
    return bool(clean_true_accuracy == clean_true_accuracy and clean_true_accuracy >= threshold)


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


_INT32 = np.iinfo(np.int32)


def _int32(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as int32; NoisyFRError naming the column when one does not fit (a dataset of
    more than 2**31 - 1 samples: beyond every face dataset, WebFace42M has 42M)."""
    values = np.asarray(values)
    if values.dtype == np.int32:
        return values
    if values.size and (values.min() < _INT32.min or values.max() > _INT32.max):
        raise NoisyFRError(f"angle log column {name}: values outside int32 "
                           f"[{values.min()}, {values.max()}]")
    return values.astype(np.int32)


def rows_frame(arrays: dict[str, np.ndarray], epoch: int) -> pd.DataFrame:
    """Build the epoch's angle table, one row per sample (first occurrence kept), sorted by index,
    with the column types of :data:`ANGLE_SCHEMA`."""
    idx = _int32(arrays["sample_index"], "sample_index")
    _, first = np.unique(idx, return_index=True)  # sorted unique sample indices
    val = np.asarray(arrays["values"], dtype=np.float32)[first]
    col = {name: val[:, i] for i, name in enumerate(_FLOATS)}
    near = col["nearest_label"]
    col["nearest_label"] = np.where(np.isfinite(near), near, -1).astype(np.int32)
    return pd.DataFrame({
        "sample_index": idx[first],
        "epoch": np.full(len(first), epoch, dtype=np.int32),
        "label": _int32(arrays["label"], "label")[first],
        "label_used": _int32(arrays["label_used"], "label_used")[first],
        **col,
    }, columns=list(COLUMNS))


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.from_numpy_dtype(np.dtype(ANGLE_SCHEMA[c]))) for c in COLUMNS])


def write_angles(frame: pd.DataFrame, output_dir: str | Path, epoch: int) -> Path:
    """Write ``output_dir/angles/epoch_<epoch>.parquet`` atomically, with the column types of
    :data:`ANGLE_SCHEMA` (a frame with other numeric types is cast; a value that does not fit
    raises) in row groups of at most :data:`ROW_GROUP_ROWS` rows, only :data:`DICTIONARY_COLUMNS`
    dictionary-encoded (Snappy compression, pyarrow's default); returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(output_dir) / "angles" / f"epoch_{epoch}.parquet"
    typed = pd.DataFrame({c: _int32(frame[c].to_numpy(), c) if ANGLE_SCHEMA[c] == "int32"
                          else frame[c].to_numpy(np.float32) for c in COLUMNS})
    table = pa.Table.from_pandas(typed, schema=_arrow_schema(), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS,
                       use_dictionary=list(DICTIONARY_COLUMNS))
    return path


def is_logged_epoch(epoch: int, total_epochs: int, every: int) -> bool:
    """True when epoch ``epoch`` (from 1) of a run of ``total_epochs`` writes its angle log under
    ``track.angles_every = every``: every ``every``-th epoch, and always the last."""
    return epoch == total_epochs or epoch % every == 0


def logged_epochs(total_epochs: int, every: int) -> list[int]:
    """The epochs (from 1, increasing) whose angle logs a run of ``total_epochs`` epochs writes
    with ``track.angles_every = every``: ``every, 2 every, ...`` and always ``total_epochs``
    (``logged_epochs(7, 3) == [3, 6, 7]``, ``logged_epochs(2, 5) == [2]``). NoisyFRError for
    ``total_epochs < 1`` or ``every < 1``."""
    total = numeric.integer(total_epochs, "total_epochs", lo=1)
    every = numeric.integer(every, "track.angles_every", lo=1)
    return [e for e in range(every, total + 1, every) if e != total] + [total]


def logged_samples(sample_indices, fraction: float, seed: int) -> np.ndarray | None:
    """The sample indices whose rows the angle logs keep under ``track.angles_fraction =
    fraction``: sorted int64, ``round(fraction * n)`` (half up, at least 1) of the ``n`` distinct
    ``sample_indices`` (the run's training samples), drawn without replacement with
    ``numpy.random.default_rng([seed, *SUBSET_STREAM])``; None (every sample) when ``fraction``
    is 1. The same seed and samples give the same subset (every epoch, every rank, on resume)."""
    fraction = numeric.real(fraction, "track.angles_fraction", lo=0.0, hi=1.0, lo_open=True)
    if fraction == 1.0:
        return None
    rows = np.unique(np.asarray(sample_indices, dtype=np.int64))
    k = min(len(rows), max(1, int(math.floor(fraction * len(rows) + 0.5))))
    pick = np.random.default_rng([int(seed), *SUBSET_STREAM]).choice(len(rows), k, replace=False)
    return rows[np.sort(pick)]


def keep_samples(frame: pd.DataFrame, samples: np.ndarray | None) -> pd.DataFrame:
    """The rows of ``frame`` whose ``sample_index`` is in ``samples`` (sorted; None: ``frame``)."""
    if samples is None:
        return frame
    keep = np.isin(frame["sample_index"].to_numpy(), samples, assume_unique=True)
    return frame[keep].reset_index(drop=True)


def health_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Training health of one epoch from its angle rows, with the plain cosine argmax (no margin).

    ``frame`` needs ``label, theta_y, theta_nearest, nearest_label`` plus ``noise`` (manifest
    noise type per row; absent = all clean) and ``orig_label`` (absent = ``label``). The
    prediction is ``label`` when ``theta_y <= theta_nearest``, else ``nearest_label``. Returns
    :data:`HEALTH_COLUMNS`: ``clean_true_accuracy`` over clean rows, ``noisy_fit_given`` and
    ``noisy_fit_true`` over closed-set noisy rows, ``theta_clean_median`` and
    ``theta_noisy_median`` (radians; noisy = any noise type but clean). NaN where a group is empty.
    """
    label = frame["label"].to_numpy(np.int64)
    theta = frame["theta_y"].to_numpy(np.float64)
    near = frame["theta_nearest"].to_numpy(np.float64)
    pred = np.where(~(theta > near), label, frame["nearest_label"].to_numpy(np.int64))
    noise = (frame["noise"].astype(str).to_numpy() if "noise" in frame.columns
             else np.full(len(frame), "clean"))
    orig = frame["orig_label"].to_numpy(np.int64) if "orig_label" in frame.columns else label
    clean, closed = noise == "clean", noise == "closed"

    def mean(x):
        return float(np.mean(x)) if len(x) else math.nan

    def median(x):
        return float(np.median(x)) if len(x) else math.nan

    return {
        "clean_true_accuracy": mean(pred[clean] == label[clean]),
        "noisy_fit_given": mean(pred[closed] == label[closed]),
        "noisy_fit_true": mean(pred[closed] == orig[closed]),
        "theta_clean_median": median(theta[clean]),
        "theta_noisy_median": median(theta[~clean]),
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
