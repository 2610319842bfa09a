"""Analysis of how margin losses place and weight clean versus noisy samples in angle space.

``write_report(run_or_sweep_dir, out_dir)`` writes ``report.md``/``report.html`` with PNG figures
and CSV tables; the building blocks live in :mod:`~noisyfr.analysis.load` (run/sweep directories),
:mod:`~noisyfr.analysis.stats` (distributions, weight shares, regions, AUC, bimodal noise-rate
estimate, accuracy), :mod:`~noisyfr.analysis.plots` (seaborn figures) and
:mod:`~noisyfr.analysis.synthetic` (run directories with a known structure, for tests and demos).
"""
from __future__ import annotations


def write_report(run_or_sweep_dir, out_dir, **kwargs):
    """Analyse a run or sweep directory and write the report into ``out_dir``; return report.md's path.

    See :func:`noisyfr.analysis.report.write_report` for the options.
    """
    from noisyfr.analysis.report import write_report as _write

    return _write(run_or_sweep_dir, out_dir, **kwargs)


__all__ = ["write_report"]
