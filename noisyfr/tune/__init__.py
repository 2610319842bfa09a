"""Ray Tune sweeps: grids of losses x noise settings x seeds (see docs/sweeps.md).

Split by job: :mod:`~noisyfr.tune.spec` (parse, expand and validate a sweep YAML; plan manifests),
:mod:`~noisyfr.tune.trainable` (the Ray function trainable and DDP worker), :mod:`~noisyfr.tune.run`
(Ray set-up, manifests, the Tuner, resume), :mod:`~noisyfr.tune.state` (``sweep.json``) and
:mod:`~noisyfr.tune.results` (results table, summary). ``load_sweep(path_or_dict, overrides=(), sweep_dir=None)`` then
``run_sweep(spec, resume=False, address=None)``.
"""
from __future__ import annotations

from noisyfr.lazy import lazy_getattr

# Resolved on first use, so that ``noisyfr sweep --help`` (noisyfr.tune.cli) imports neither Ray nor pandas.
_LAZY = {"results_table": "noisyfr.tune.results", "summary_markdown": "noisyfr.tune.results",
         "run_sweep": "noisyfr.tune.run", "SweepSpec": "noisyfr.tune.spec", "Trial": "noisyfr.tune.spec",
         "load_stored_sweep": "noisyfr.tune.spec", "load_sweep": "noisyfr.tune.spec"}

__all__ = ["SweepSpec", "Trial", "load_sweep", "load_stored_sweep", "run_sweep", "results_table",
           "summary_markdown"]

__getattr__ = lazy_getattr(__name__, _LAZY)
