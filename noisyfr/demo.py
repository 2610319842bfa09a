"""``noisyfr demo`` (what ``make demo`` runs): the main job on the embedded synthetic default.

Sweeps ``experiments/configs/demo.yaml`` (arcface, cosface, expface x closed-set noise {0, 0.4} on synthetic
identities, CPU, no download) into ``runs/demo``; then writes its analysis report to ``runs/demo/report``. Running it again finishes an interrupted demo, or just rewrites the
results of a finished one.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from noisyfr.errors import NoisyFRError

DEFAULT_CONFIG = "experiments/configs/demo.yaml"
DEFAULT_OUT = "runs/demo"


def _find_config(path: str) -> Path:
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    # Run from outside the repository: fall back to the checkout this package lives in.
    repo = Path(__file__).resolve().parents[1]
    return repo / path if (repo / path).exists() else p

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr demo --out runs/demo']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr demo`` (all optional)."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"sweep YAML (default {DEFAULT_CONFIG})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--no-report", action="store_true", help="skip the analysis report")
    parser.add_argument("--address", help="run on an existing Ray cluster ('auto' or HOST:PORT)")


def run(args: argparse.Namespace) -> int:
    """Run the demo sweep, then its analysis report."""
    from noisyfr.analysis import write_report
    from noisyfr.tune import load_sweep, run_sweep
    from noisyfr.tune.spec import STATE_FILE

    t0 = time.time()
    config = _find_config(args.config)
    if not config.is_file():
        raise NoisyFRError(f"demo config {config}: no such file")
    spec = load_sweep(config, sweep_dir=args.out)
    resume = (spec.sweep_dir / STATE_FILE).exists()
    if resume:
        print(f"noisyfr demo: continuing the sweep in {spec.sweep_dir} (delete it to start afresh)")
    try:
        run_sweep(spec, resume=resume, address=args.address, inputs=[config])
    except NoisyFRError as exc:
        if resume and "differs" in str(exc):
            raise NoisyFRError(f"{exc} (the demo config changed: delete {spec.sweep_dir})") from None
        raise
    print(f"results: {spec.sweep_dir / 'results.csv'}  summary: {spec.sweep_dir / 'summary.md'}")
    if not args.no_report:
        report_dir = spec.sweep_dir / "report"
        write_report(spec.sweep_dir, report_dir)
        print(f"report: {report_dir}")
    print(f"noisyfr demo: done in {time.time() - t0:.0f} s")
    return 0
