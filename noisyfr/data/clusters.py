"""Class clusters: ``synthetic-features:`` specs, von Mises-Fisher clusters on the unit sphere.

``synthetic-features:ids=1000,dim=64,kappa=100,per_id=20,seed=0`` is a
:class:`~noisyfr.data.feature_store.FeatureTable` of ``ids`` identities whose embeddings are unit
vectors in ``dim`` dimensions: each identity has a mean direction drawn uniformly on the sphere,
and its samples are drawn from the von Mises-Fisher distribution around it with concentration
``kappa`` (``scipy.stats.vonmises_fisher``). The concentration sets how far samples sit from their
class mean: the expected cosine is :func:`mean_cosine` ``A_d(kappa) = I_{d/2}(kappa) /
I_{d/2-1}(kappa)``. docs/clusters.md gives the relation between ``kappa`` and the angle a trained
head places clean samples at.

Keys (``-`` may replace ``_``; every one optional, defaults in :data:`DEFAULTS`):

- ``ids``: identities in the label set; ``dim``: embedding dimension (>= 2);
- ``kappa``: concentration (> 0); ``per_id``: samples per identity (the largest class);
- ``seed``: the only source of randomness (same spec, same bytes);
- ``imbalance``: a power (Zipf) exponent ``a`` >= 0: identity ``i`` (0-based) gets
  ``max(min_per_id, round(per_id * (i + 1) ** -a))`` samples (``a = 0``: all get ``per_id``);
- ``min_per_id``: the floor of those counts;
- ``open_ids``: that many more identities, drawn exactly like the others (uniform mean, same
  ``kappa``, counts continuing the imbalance law), for open-set noise: train with
  ``data.noise: {open: RATE, holdout_ids: open_ids}`` (``noisyfr inject --open RATE --holdout-ids
  K``), which takes ``open_ids`` identities (chosen by the noise seed) out of the label set and
  uses their samples as the outliers. Every cluster is an independent draw of the same law, so
  any ``open_ids`` of them are clusters outside the label set; the ``ids`` that stay form the
  label set.

Generation is vectorised: one draw of every sample around a fixed pole, then one Householder
reflection per class maps the pole onto the class mean (an orthogonal map, so the reflected
samples follow the von Mises-Fisher law around that mean).
"""
from __future__ import annotations

import numpy as np

from noisyfr import numeric
from noisyfr.data.feature_store import FeatureTable, table_of
from noisyfr.data.specs import spec_items
from noisyfr.errors import NoisyFRError

PREFIX = "synthetic-features"
#: Version of the generator: it changes whenever the same spec would give other bytes.
GENERATOR_VERSION = 1
DEFAULTS = {"ids": 100, "dim": 64, "kappa": 100.0, "per_id": 20, "seed": 0, "imbalance": 0.0,
            "min_per_id": 2, "open_ids": 0}
#: Most rows of a table, and most float values (rows x dim) it may hold (2 GiB as float64).
MAX_ROWS = 10_000_000
MAX_VALUES = 2**28
MAX_KAPPA = 1e6
#: Largest ``dim``: scipy's sampler finds its rotation by a QR decomposition of a dim x dim matrix
#: (one per table; about 4 s at 1,024 on the busy 2-core development machine, 8x per doubling).
MAX_DIM = 2048
#: Integer keys with their inclusive bounds; the rest (kappa, imbalance) are reals.
INT_BOUNDS = {"ids": (2, numeric.MAX_IDENTITIES), "dim": (2, MAX_DIM),
              "per_id": (1, MAX_ROWS), "seed": (0, numeric.MAX_SEED),
              "min_per_id": (1, MAX_ROWS), "open_ids": (0, numeric.MAX_IDENTITIES)}


def parse_spec(spec: str) -> dict:
    """``synthetic-features[:key=value,...]`` -> the full, validated parameter dict.

    An unknown, repeated or valueless key, a bad number, or a table too large is a one-line
    NoisyFRError naming the spec and the key."""
    if not isinstance(spec, str) or not (spec == PREFIX or spec.startswith(PREFIX + ":")):
        raise NoisyFRError(f"synthetic features spec {spec!r}: must look like "
                           f"'{PREFIX}:ids=100,dim=64,kappa=100,per_id=20,seed=0'")
    where = f"synthetic features spec {spec!r}"
    params = dict(DEFAULTS)
    params.update(spec_items(spec[len(PREFIX) + 1:], DEFAULTS, where))
    return check_params(params, where)


def check_params(params: dict, where: str = PREFIX) -> dict:
    """Validate a parameter dict (every key of :data:`DEFAULTS`); NoisyFRError ``"<where>: <key>: ..."``."""
    out = {k: numeric.integer(params[k], f"{where}: {k}", lo=lo, hi=hi)
           for k, (lo, hi) in INT_BOUNDS.items()}
    out["kappa"] = numeric.real(params["kappa"], f"{where}: kappa", lo=0.0, hi=MAX_KAPPA, lo_open=True)
    out["imbalance"] = numeric.real(params["imbalance"], f"{where}: imbalance", lo=0.0, hi=10.0)
    if out["min_per_id"] > out["per_id"]:
        raise NoisyFRError(f"{where}: min_per_id {out['min_per_id']} exceeds per_id {out['per_id']}")
    total = out["ids"] + out["open_ids"]
    if total > numeric.MAX_IDENTITIES:
        raise NoisyFRError(f"{where}: ids + open_ids = {total} exceeds the limit "
                           f"{numeric.MAX_IDENTITIES}")
    rows = int(counts_of(total, out["per_id"], out["imbalance"], out["min_per_id"]).sum()) \
        if total * out["min_per_id"] <= MAX_ROWS else total * out["min_per_id"]
    if rows > MAX_ROWS or rows * out["dim"] > MAX_VALUES:
        raise NoisyFRError(f"{where}: {rows} samples x dim {out['dim']} exceeds the limits "
                           f"({MAX_ROWS} samples, {MAX_VALUES} values)")
    return {k: out[k] for k in DEFAULTS}


def counts_of(ids: int, per_id: int, imbalance: float = 0.0, min_per_id: int = 1) -> np.ndarray:
    """Samples of each identity: ``max(min_per_id, round(per_id * (i + 1) ** -imbalance))``,
    int64 [ids] (rounding half to even)."""
    rank = np.arange(1, ids + 1, dtype=np.float64)
    counts = np.rint(per_id * rank ** -float(imbalance)).astype(np.int64)
    return np.maximum(counts, int(min_per_id))


def mean_cosine(kappa, dim: int):
    """``A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa)``: the expected cosine between a von
    Mises-Fisher sample in ``dim`` dimensions and its mean direction.

    From scaled Bessel functions (``scipy.special.ive``: large ``kappa`` does not overflow); where
    they underflow (a high dimension and a small ``kappa``), from the continued fraction
    ``I_v / I_{v-1} = 1 / (2v / kappa + I_{v+1} / I_v)``, evaluated backwards from a depth at which
    its terms are negligible (it converges fast exactly there: ``kappa`` well below ``v``)."""
    from scipy.special import ive

    kappa = np.asarray(kappa, dtype=np.float64)
    v = dim / 2.0
    with np.errstate(invalid="ignore", divide="ignore", under="ignore"):
        ratio = np.asarray(ive(v, kappa) / ive(v - 1.0, kappa), dtype=np.float64)
    bad = ~np.isfinite(ratio) | (ratio <= 0)
    if bad.any():
        k = np.broadcast_to(kappa, ratio.shape)[bad]
        tail = np.zeros_like(k)
        for n in range(int(4 * np.max(k)) + 200, -1, -1):
            tail = 1.0 / (2.0 * (v + n) / k + tail)
        ratio = ratio.copy()
        ratio[bad] = tail
    return ratio if ratio.ndim else ratio[()]


def kappa_for_cosine(cosine: float, dim: int) -> float:
    """The ``kappa`` whose :func:`mean_cosine` in ``dim`` dimensions is ``cosine`` (in (0, 1))."""
    from scipy.optimize import brentq

    c = numeric.real(cosine, "cosine", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    # A_d(kappa) < kappa / d, so the root lies above c d (and the Bessel ratio underflows near 0)
    return float(brentq(lambda k: float(mean_cosine(k, dim)) - c, c * dim / 2.0, MAX_KAPPA,
                        xtol=1e-10))


def draw_clusters(params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class means float64 [C + K, d], labels int64 [N], unit embeddings float64 [N, d]) for
    a validated parameter dict; rows grouped by label in label order."""
    from scipy.stats import uniform_direction, vonmises_fisher

    total, dim = params["ids"] + params["open_ids"], params["dim"]
    rng_means, rng_samples = (np.random.default_rng(s)
                              for s in np.random.SeedSequence(params["seed"]).spawn(2))
    means = np.atleast_2d(uniform_direction(dim).rvs(total, random_state=rng_means))
    counts = counts_of(total, params["per_id"], params["imbalance"], params["min_per_id"])
    labels = np.repeat(np.arange(total, dtype=np.int64), counts)
    pole = np.zeros(dim)
    pole[-1] = 1.0
    x = np.atleast_2d(vonmises_fisher(pole, params["kappa"]).rvs(len(labels), random_state=rng_samples))
    # Householder reflection H_c = I - 2 v v^T with v = (pole - mean_c) / |pole - mean_c| maps the
    # pole onto mean_c; a mean (numerically) at the pole keeps the identity map.
    v = pole - means
    length = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.where(length > 1e-12, v / np.maximum(length, 1e-300), 0.0)
    vl = v[labels]
    x = x - 2.0 * np.einsum("nd,nd->n", vl, x)[:, None] * vl
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return means, labels, x


def from_spec(spec: str) -> FeatureTable:
    """The :class:`FeatureTable` of a ``synthetic-features:`` spec (see the module docstring).

    Identities are named ``id00000``, ``id00001``, ... (zero-padded so that the sorted names keep
    the draw order, so labels are the draw order); paths are ``<identity>/<k>``; ``norm`` is 1.
    The sidecar records the full parameters, the generator version and ``mean_cosine``."""
    params = parse_spec(spec)
    means, labels, x = draw_clusters(params)
    total = len(means)
    width = max(5, len(str(total - 1)))
    names = np.asarray([f"id{i:0{width}d}" for i in range(total)], dtype=object)
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=total))[:-1]])
    within = np.arange(len(labels)) - starts[labels]
    identities = names[labels].tolist()
    paths = [f"{n}/{k:05d}" for n, k in zip(identities, within.tolist())]
    canonical = PREFIX + ":" + ",".join(f"{k}={params[k]:g}" if isinstance(params[k], float)
                                        else f"{k}={params[k]}" for k in DEFAULTS)
    meta = {"model": {"name": "vonmises_fisher", "generator_version": GENERATOR_VERSION,
                      "spec": canonical, **params},
            "preprocessing": {"normalised": True},
            "fingerprint": {"spec": canonical},
            "mean_cosine": float(mean_cosine(params["kappa"], params["dim"])),
            "label_set_ids": params["ids"], "open_ids": params["open_ids"]}
    return table_of(paths, identities, x.astype(np.float32), meta=meta)
