"""The defaults and bounds of the analysis options (``noisyfr analyze`` flags, :func:`write_report`
arguments), without numpy or pandas, so that ``noisyfr analyze --help`` shows them cheaply;
:mod:`noisyfr.analysis.stats` re-exports them."""
from __future__ import annotations

DEFAULT_CENTRE_QUANTILE = 0.9
DEFAULT_BINS = 36
#: Default weight column for shares: the per-sample gradient norm on the embedding (comparable
#: across losses, negatives and feature-norm terms included).
DEFAULT_WEIGHT = "grad_norm"
#: Region definitions of :func:`noisyfr.analysis.stats.region_masks`.
REGION_METHODS = ("quantile", "fixed", "2d")
#: Most theta_y bins of the weight-vs-angle table (``--bins``).
MAX_BINS = 3600
#: Largest Gaussian-mixture seed (scikit-learn takes seeds below 2**32).
MAX_MIXTURE_SEED = 2**32 - 1
#: Default fixed region threshold (degrees) of the ``fixed`` and ``2d`` regions.
DEFAULT_REGION_DEG = 60.0
