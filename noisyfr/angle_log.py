"""The angle-log contract and the training-health rules, without torch: what training writes and
analysis reads (both import it; :mod:`noisyfr.train.angles` tracks the rows during training).

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
default, config key ``health.learned_accuracy``); with held-out images, when their accuracy reaches
``health.learned_heldout_accuracy`` (:func:`learned_from`). :func:`heldout_noise_rate` estimates
the closed-set noise rate from the held-out images.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from noisyfr import numeric
from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_path

if TYPE_CHECKING:  # numpy and pandas are imported where used: the constants need neither
    import numpy as np
    import pandas as pd

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
#: Default of ``health.learned_heldout_accuracy``: a run with held-out images learned when their
#: last accuracy is at least this.
DEFAULT_LEARNED_HELDOUT = 0.5
#: Default of ``health.learned_accuracy``: a run learned when its last epoch's
#: ``clean_true_accuracy`` is at least this.
DEFAULT_LEARNED_ACCURACY = 0.8


def check_learned_threshold(value, name: str = "learned threshold") -> float:
    """``value`` as a finite float in [0, 1]; NoisyFRError naming ``name`` otherwise."""
    return numeric.real(value, name, lo=0.0, hi=1.0)


def learned(clean_true_accuracy: float, threshold: float = DEFAULT_LEARNED_ACCURACY) -> bool:
    """True when ``clean_true_accuracy`` (a run's last epoch) reaches ``threshold``; False for NaN."""
    return bool(clean_true_accuracy == clean_true_accuracy and clean_true_accuracy >= threshold)


#: The int32 range (numpy's ``iinfo(int32)``).
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _int32(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as int32; NoisyFRError naming the column when one does not fit (a dataset of
    more than 2**31 - 1 samples: beyond every face dataset, WebFace42M has 42M)."""
    import numpy as np

    values = np.asarray(values)
    if values.dtype == np.int32:
        return values
    if values.size and (values.min() < _INT32_MIN or values.max() > _INT32_MAX):
        raise NoisyFRError(f"angle log column {name}: values outside int32 "
                           f"[{values.min()}, {values.max()}]")
    return values.astype(np.int32)


def rows_frame(arrays: dict[str, np.ndarray], epoch: int) -> pd.DataFrame:
    """Build the epoch's angle table, one row per sample (first occurrence kept), sorted by index,
    with the column types of :data:`ANGLE_SCHEMA`."""
    import numpy as np
    import pandas as pd

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
    import numpy as np
    import pyarrow as pa

    return pa.schema([(c, pa.from_numpy_dtype(np.dtype(ANGLE_SCHEMA[c]))) for c in COLUMNS])


def write_angles(frame: pd.DataFrame, output_dir: str | Path, epoch: int) -> Path:
    """Write ``output_dir/angles/epoch_<epoch>.parquet`` atomically, with the column types of
    :data:`ANGLE_SCHEMA` (a frame with other numeric types is cast; a value that does not fit
    raises) in row groups of at most :data:`ROW_GROUP_ROWS` rows, only :data:`DICTIONARY_COLUMNS`
    dictionary-encoded (Snappy compression, pyarrow's default); returns the path."""
    import numpy as np
    import pandas as pd
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
    import numpy as np

    fraction = numeric.real(fraction, "track.angles_fraction", lo=0.0, hi=1.0, lo_open=True)
    if fraction == 1.0:
        return None
    rows = np.unique(np.asarray(sample_indices, dtype=np.int64))
    k = min(len(rows), max(1, int(math.floor(fraction * len(rows) + 0.5))))
    pick = np.random.default_rng([int(seed), *SUBSET_STREAM]).choice(len(rows), k, replace=False)
    return rows[np.sort(pick)]


def keep_samples(frame: pd.DataFrame, samples: np.ndarray | None) -> pd.DataFrame:
    """The rows of ``frame`` whose ``sample_index`` is in ``samples`` (sorted; None: ``frame``)."""
    import numpy as np

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
    import numpy as np

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


def heldout_noise_rate(accuracy: float, given_accuracy: float, num_classes: int) -> float:
    """The closed-set noise rate estimated from the held-out images: they carry the manifest's
    labels like every image, but the model never trained on them, so it cannot have memorised
    a wrong one. With ``a`` = their identification accuracy against the true identity (the same
    for clean and mislabelled images) and ``g`` = their agreement with the given labels,
    ``g = (1 - rate) a + rate (1 - a) / (C - 1)`` under symmetric label flips, so
    ``rate = (a - g) / (a - (1 - a) / (C - 1))``, clipped to [0, 1]. Exactly 0 on clean data
    (g = a); its error is the sampling error of the held-out images (about
    sqrt(rate (1 - rate) / n) / a) and, for asymmetric flips, the (1 - a) / (C - 1) term. NaN
    without held-out images or when a is at chance."""
    a, g = float(accuracy), float(given_accuracy)
    if not (math.isfinite(a) and math.isfinite(g)) or num_classes < 2:
        return math.nan
    denom = a - (1.0 - a) / (num_classes - 1)
    if denom <= 1e-9:
        return math.nan
    return float(min(1.0, max(0.0, (a - g) / denom)))


def learned_from(metrics: dict, health: dict) -> tuple[bool, str]:
    """``(learned, evidence)`` of an epoch's metrics under the ``health`` config section."""
    held = metrics.get("heldout_accuracy", math.nan)
    if isinstance(held, float) and math.isfinite(held):
        return held >= health.get("learned_heldout_accuracy", DEFAULT_LEARNED_HELDOUT), "heldout"
    return learned(metrics.get("clean_true_accuracy", math.nan),
                   health.get("learned_accuracy", DEFAULT_LEARNED_ACCURACY)), "train"
