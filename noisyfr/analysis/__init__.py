"""Analysis of how margin losses place and weight clean versus noisy samples in angle space.

``write_report(run_or_sweep_dir, out_dir)`` writes ``report.md``/``report.html`` with PNG figures
and CSV tables; the building blocks live in :mod:`~noisyfr.analysis.load` (run/sweep directories),
:mod:`~noisyfr.analysis.stats` (health, distributions, weight shares, regions, AUC, bimodal
noise-rate estimate, accuracy), :mod:`~noisyfr.analysis.plots` (seaborn figures) and
:mod:`~noisyfr.analysis.report`. Submodules and names resolve lazily:
``import noisyfr.analysis; noisyfr.analysis.load.load_runs(...)`` works.
"""
from __future__ import annotations

from noisyfr.lazy import lazy_getattr

_LAZY = {"write_report": "noisyfr.analysis.report"}
_SUBMODULES = ("load", "stats", "plots", "report", "document")

__all__ = [*_LAZY, *_SUBMODULES]

__getattr__ = lazy_getattr(__name__, _LAZY, _SUBMODULES)
