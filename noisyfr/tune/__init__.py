"""Ray Tune sweeps: grids of losses x noise settings x seeds (see docs/sweeps.md).

Split by job: :mod:`~noisyfr.tune.spec` (parse, expand and validate a sweep YAML; plan manifests),
:mod:`~noisyfr.tune.trainable` (the Ray function trainable and DDP worker), :mod:`~noisyfr.tune.run`
(Ray set-up, manifests, the Tuner, resume) and :mod:`~noisyfr.tune.results` (results table,
summary). ``load_sweep(path_or_dict, overrides=(), sweep_dir=None)`` then
``run_sweep(spec, resume=False, address=None)``.
"""
from noisyfr.tune.results import results_table, summary_markdown
from noisyfr.tune.run import run_sweep
from noisyfr.tune.spec import SweepSpec, Trial, load_stored_sweep, load_sweep

__all__ = ["SweepSpec", "Trial", "load_sweep", "load_stored_sweep", "run_sweep", "results_table",
           "summary_markdown"]
