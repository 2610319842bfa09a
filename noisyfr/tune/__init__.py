"""Ray Tune sweeps: grids of losses x noise settings x seeds (see docs/sweeps.md).

``load_sweep(path_or_dict, overrides=(), sweep_dir=None)`` parses and validates a sweep YAML;
``run_sweep(spec, resume=False, address=None)`` runs it and writes ``results.parquet``, ``results.csv`` and
``summary.md`` into the sweep directory.
"""
from noisyfr.tune.sweep import SweepSpec, Trial, load_sweep, results_table, run_sweep, summary_markdown

__all__ = ["SweepSpec", "Trial", "load_sweep", "run_sweep", "results_table", "summary_markdown"]
