"""Noise detection and noise-rate estimates from the angles of one group of samples: the detection
AUC of theta_y, the bimodal mixture's estimate, the nearest-centre disagreement. Part of
:mod:`noisyfr.analysis.stats`'s API (it re-exports these names); scikit-learn is imported only
inside the functions that use it."""
from __future__ import annotations

import math

import numpy as np

from noisyfr.errors import NoisyFRError


def detection_auc(theta_y, is_noisy) -> float:
    """ROC AUC of ``theta_y`` as a score for "is noisy" (1 = perfect separation, 0.5 = chance).

    NaN when only one class is present.
    """
    y = np.asarray(is_noisy, dtype=bool)
    s = np.asarray(theta_y, dtype=float)
    if y.shape != s.shape:
        raise NoisyFRError(f"detection_auc: theta_y has shape {s.shape} but is_noisy has {y.shape}")
    if y.all() or not y.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score  # scikit-learn only where it is used

    return float(roc_auc_score(y, s))


_CONTROLLER = None


def one_thread():
    """A context limiting the native thread pools (OpenMP, BLAS) to one thread, for the analysis's
    small numeric work. The pools are found once per process (finding them walks every loaded
    library: about 4 ms a call with torch loaded)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


def gaussian_bic(x, reg_covar: float = 1e-6) -> float:
    """BIC of one Gaussian fitted by maximum likelihood to the 1-D sample ``x`` (variance plus
    ``reg_covar``, as scikit-learn's ``GaussianMixture(n_components=1, reg_covar=...)``):
    ``-2 log L + 2 log n``, two parameters (mean, variance)."""
    x = np.asarray(x, dtype=float).ravel()
    n = x.shape[0]
    var = float(np.mean((x - x.mean()) ** 2)) + reg_covar
    log_l = -0.5 * n * (math.log(2 * math.pi * var) + (var - reg_covar) / var)
    return -2.0 * log_l + 2.0 * math.log(n)


#: scikit-learn's GaussianMixture defaults that :func:`two_gaussians` follows
_TOL, _MAX_ITER, _N_INIT, _REG_COVAR = 1e-3, 100, 3, 1e-6


def _gaussians_of(x: np.ndarray, resp: list[np.ndarray]):
    """M step: component weights (the responsibilities' sums), means and variances (plus the
    regularisation) of the 1-D sample ``x`` under the two components' responsibilities ``resp``."""
    nk = np.array([r.sum() for r in resp]) + 10 * np.finfo(np.float64).eps
    means = np.array([r @ x for r in resp]) / nk
    var = np.array([(r * (x - m)) @ (x - m) for r, m in zip(resp, means)]) / nk + _REG_COVAR
    return nk, means, var


def _log_prob_norm(x: np.ndarray, weights, means, var) -> tuple[np.ndarray, list[np.ndarray]]:
    """E step: ``(log p(x_i), the two components' log responsibilities)``."""
    prec = 1.0 / np.sqrt(var)  # the 1 x 1 Cholesky factor of the precision
    weighted = []
    for k in range(2):
        y = x * prec[k] - means[k] * prec[k]
        weighted.append(-0.5 * (math.log(2 * math.pi) + y * y) + (math.log(prec[k]) + math.log(weights[k])))
    hi, lo = np.maximum(*weighted), np.minimum(*weighted)
    with np.errstate(under="ignore"):
        norm = hi + np.log1p(np.exp(lo - hi))
        return norm, [w - norm for w in weighted]


def _nearer_second(xc: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Lloyd's assignment as scikit-learn computes it: 1 where ``c1^2 - 2 x c1`` is below
    ``c0^2 - 2 x c0`` (a tie goes to centre 0), else 0."""
    return (centres[1] ** 2 - 2 * xc * centres[1] < centres[0] ** 2 - 2 * xc * centres[0]).astype(np.int64)


def _kmeans_labels(x: np.ndarray, rng: np.random.RandomState) -> np.ndarray | None:
    """The labels of ``sklearn.cluster.KMeans(n_clusters=2, n_init=1, random_state=rng).fit``
    on the 1-D sample ``x``, drawing from ``rng`` as it does: the data centred, k-means++ seeding
    (the first centre drawn uniformly, the second the better of 2 candidates drawn by squared
    distance), then Lloyd's iterations to the same stopping rule (labels unchanged, or the
    squared centre shift within 1e-4 of the variance; 300 at most), and the labels of the final
    centres. None where a cluster empties (scikit-learn then moves a centre: left to it)."""
    xc = x - x.mean()
    n = xc.shape[0]
    sq = xc * xc
    w = np.ones(n)
    first = rng.choice(n, p=w / w.sum())
    c0 = xc[first]
    closest = np.maximum(-2 * (c0 * xc) + c0 * c0 + sq, 0.0)
    rand = rng.uniform(size=2) * (closest @ w)
    cand = np.minimum(np.searchsorted(np.cumsum(w * closest), rand), n - 1)
    dist = np.maximum(-2 * np.outer(xc[cand], xc) + (xc[cand] ** 2)[:, None] + sq[None, :], 0.0)
    pot = np.minimum(closest, dist) @ w
    centres = np.array([c0, xc[cand[int(np.argmin(pot))]]])
    tol = float(np.var(xc)) * 1e-4
    labels_old = np.full(n, -1)
    strict = False
    for _ in range(300):
        labels = _nearer_second(xc, centres)
        counts = np.bincount(labels, minlength=2)
        if (counts == 0).any():
            return None
        new = np.bincount(labels, weights=xc, minlength=2) / counts
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if np.array_equal(labels, labels_old):
            strict = True
            break
        if shift <= tol:
            break
        labels_old = labels
    if not strict:
        labels = _nearer_second(xc, centres)
    return labels


def two_gaussians(x, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(means, sds, weights, bic)`` of the 2-component Gaussian mixture that
    ``sklearn.mixture.GaussianMixture(n_components=2, n_init=3, random_state=seed,
    reg_covar=1e-6).fit(x)`` gives on the 1-D sample ``x``, and its BIC.

    The same algorithm: each of the 3 initialisations labels the sample as scikit-learn's
    ``KMeans(n_clusters=2, n_init=1)`` does (:func:`_kmeans_labels`), drawing from one
    ``RandomState(seed)`` in turn, then runs
    EM until the mean log-likelihood changes by less than 1e-3 (at most 100 iterations); the
    first initialisation of the highest final likelihood is kept. Written here in 1-D, without
    scikit-learn (its general code spends most of a small fit on dispatch, and importing it costs
    analyze half a second); the EM runs once
    for an initialisation whose labels repeat an earlier one's (it would end the same).
    tests/test_analysis.py checks it against scikit-learn."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.shape[0]
    rng = np.random.RandomState(seed)
    best, best_bound, seen = None, -np.inf, []
    for _ in range(_N_INIT):
        state = rng.get_state()
        labels = _kmeans_labels(x, rng)
        if labels is None:  # an emptied cluster: scikit-learn's own KMeans, from the same draws
            from sklearn.cluster import KMeans

            rng.set_state(state)
            with one_thread():
                labels = KMeans(n_clusters=2, n_init=1, random_state=rng).fit(x[:, None]).labels_
        if any(np.array_equal(labels, s) for s in seen):
            continue
        seen.append(labels)
        nk, means, var = _gaussians_of(x, [(labels == k).astype(np.float64) for k in range(2)])
        weights = nk / n
        bound = -np.inf
        for _ in range(_MAX_ITER):
            prev = bound
            norm, log_resp = _log_prob_norm(x, weights, means, var)
            nk, means, var = _gaussians_of(x, [np.exp(r) for r in log_resp])
            weights = nk / nk.sum()
            bound = float(norm.mean())
            if abs(bound - prev) < _TOL:
                break
        if best is None or bound > best_bound:
            best, best_bound = (weights, means, var), bound
    weights, means, var = best
    log_l = float(_log_prob_norm(x, weights, means, var)[0].sum())
    return means, np.sqrt(var), weights, -2.0 * log_l + 5 * math.log(n)  # 5 free parameters


def bimodal_noise_rate(theta_y, seed: int = 0, min_bic_gain: float = 10.0) -> dict:
    """Estimate the noise rate from the ``theta_y`` distribution alone with a 2-component Gaussian mixture.

    As in Hu et al. (CVPR 2019, "Noise-Tolerant Paradigm for Training Face Recognition CNNs"), the
    distribution of the angle to the labelled class centre becomes bimodal under label noise: clean
    samples form the low-angle mode and mislabelled ones the high-angle mode. We fit
    ``sklearn.mixture.GaussianMixture(n_components=2, n_init=3, random_state=seed)`` to theta_y
    (computed by :func:`two_gaussians`, the same fit without scikit-learn's per-call overhead),
    and one Gaussian in closed form (:func:`gaussian_bic`). When the 2-component fit lowers the
    BIC by at least ``min_bic_gain`` and its modes are separated by Ashman's
    D = |mean difference| / sqrt((sd1^2 + sd2^2) / 2) > 2, the distribution is called bimodal
    and ``estimate`` is the mixture weight of the higher-mean component; otherwise it is unimodal
    and ``estimate`` is 0. Also returned: both components'
    means and standard deviations, ``separation`` (Ashman's D) and ``bimodal``.
    Well-separated modes (separation > 3, n >= 1000) give an estimate within 0.05 of the true
    rate; overlapping modes make it unreliable.
    """
    x = np.asarray(theta_y, dtype=float).reshape(-1, 1)
    if x.shape[0] < 4:
        raise NoisyFRError(f"bimodal_noise_rate: need at least 4 angles, got {x.shape[0]}")
    if np.ptp(x) < 1e-9:
        return {"estimate": 0.0, "mean_low": float(x[0, 0]), "mean_high": float(x[0, 0]),
                "sd_low": 0.0, "sd_high": 0.0, "separation": 0.0, "bimodal": False}
    means, sds, weights, bic2 = two_gaussians(x.ravel(), seed)
    # the 1-component model in closed form (what GaussianMixture(n_components=1) converges to)
    bic1 = gaussian_bic(x.ravel(), reg_covar=1e-6)
    lo, hi = int(np.argmin(means)), int(np.argmax(means))
    pooled = math.sqrt((sds[lo] ** 2 + sds[hi] ** 2) / 2)
    separation = float((means[hi] - means[lo]) / pooled) if pooled > 0 else float("inf")
    # bimodal: the 2-component model is clearly better (BIC) and its modes are separated (Ashman's D > 2)
    bimodal = bool(bic1 - bic2 >= min_bic_gain and separation > 2.0)
    return {"estimate": float(weights[hi]) if bimodal else 0.0,
            "mean_low": float(means[lo]), "mean_high": float(means[hi]),
            "sd_low": float(sds[lo]), "sd_high": float(sds[hi]),
            "separation": separation, "bimodal": bimodal}


def disagreement_rate(theta_y, theta_nearest) -> float:
    """The noise-rate estimate: the fraction of samples whose nearest class centre (plain cosine)
    is not their labelled one, ``mean(theta_nearest < theta_y)``.

    Each sample is compared with its own labelled and nearest centres, so classes whose clean
    samples sit at different angles (the failure of a mixture over theta_y, whose clean mode
    splits in two when the per-class medians differ) do not bias it. Its bias is known: it counts
    the clean samples the model gets wrong as noisy and misses the noisy samples it has
    memorised, ``estimate - rate = (1 - rate) * clean_error - rate * noisy_fit_given``; both
    terms are small in a run that learned and did not memorise, and on clean data the estimate
    is the training error. NaN without samples."""
    th = np.asarray(theta_y, dtype=float)
    near = np.asarray(theta_nearest, dtype=float)
    if th.shape != near.shape:
        raise NoisyFRError(f"disagreement_rate: theta_y has shape {th.shape} but theta_nearest has {near.shape}")
    ok = np.isfinite(th) & np.isfinite(near)
    return float(np.mean(near[ok] < th[ok])) if ok.any() else float("nan")
