"""Noise detection and noise-rate estimates from the angles of one group of samples: the detection
AUC of theta_y, the bimodal mixture's estimate, the nearest-centre disagreement. Part of
:mod:`noisyfr.analysis.stats`'s API (it re-exports these names); scikit-learn is imported only
inside the functions that use it."""
from __future__ import annotations

import math
import warnings

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


def bimodal_noise_rate(theta_y, seed: int = 0, min_bic_gain: float = 10.0) -> dict:
    """Estimate the noise rate from the ``theta_y`` distribution alone with a 2-component Gaussian mixture.

    As in Hu et al. (CVPR 2019, "Noise-Tolerant Paradigm for Training Face Recognition CNNs"), the
    distribution of the angle to the labelled class centre becomes bimodal under label noise: clean
    samples form the low-angle mode and mislabelled ones the high-angle mode. We fit
    ``sklearn.mixture.GaussianMixture`` with 2 components (seeded, 3 initialisations) to theta_y,
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
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    # one thread: the k-means initialisation's OpenMP pool spins on a busy machine (12x slower on
    # 2 shared cores), and 1-D fits of a few thousand angles gain nothing from threads
    with warnings.catch_warnings(), one_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(n_components=2, n_init=3, random_state=seed, reg_covar=1e-6).fit(x)
    # the 1-component model in closed form (what GaussianMixture(n_components=1) converges to)
    bic1 = gaussian_bic(x.ravel(), reg_covar=1e-6)
    means = gm.means_.ravel()
    sds = np.sqrt(gm.covariances_.reshape(-1))
    lo, hi = int(np.argmin(means)), int(np.argmax(means))
    pooled = math.sqrt((sds[lo] ** 2 + sds[hi] ** 2) / 2)
    separation = float((means[hi] - means[lo]) / pooled) if pooled > 0 else float("inf")
    # bimodal: the 2-component model is clearly better (BIC) and its modes are separated (Ashman's D > 2)
    bimodal = bool(bic1 - gm.bic(x) >= min_bic_gain and separation > 2.0)
    return {"estimate": float(gm.weights_[hi]) if bimodal else 0.0,
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
