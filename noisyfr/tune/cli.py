"""``noisyfr sweep``: run a Ray Tune grid of training runs (losses x noise settings x seeds).

A shipped config can be named instead of a path (``noisyfr configs`` lists them).

Examples::

    noisyfr sweep demo --dry-run                    # a shipped config by name: the plan, run nothing
    noisyfr sweep experiments/configs/demo.yaml --out runs/demo
    noisyfr sweep experiments/configs/demo.yaml grid.seed=[0,1,2] optim.epochs=3
    noisyfr sweep --resume --out runs/demo          # finish an interrupted sweep
    noisyfr sweep cfg.yaml --address auto           # join a running Ray cluster (ray start --head)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from noisyfr.cli import intermixed
from noisyfr.errors import NoisyFRError

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr sweep experiments/configs/demo.yaml --out runs/demo', 'noisyfr sweep demo --dry-run']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr sweep``."""
    parser.add_argument("args", nargs="*", metavar="CONFIG|KEY=VALUE",
                        help="sweep YAML or a shipped config's name (training config + grid/noise/resources; "
                             "optional with --resume --out DIR), then dotted-key overrides, "
                             "e.g. optim.epochs=3 grid.seed=[0,1]")
    parser.add_argument("--out", help="sweep directory (default: the config's output_dir, else runs/<name>)")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted sweep in the sweep directory: only unfinished trials run")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the sweep the directory already holds (its trials' runs are deleted)")
    parser.add_argument("--address", help="address of a running Ray cluster ('auto' or HOST:PORT); "
                        "default: start a local Ray")
    parser.add_argument("--device", metavar="DEVICE",
                        help="auto, cpu, cuda or cuda:N for every trial (sets device)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and list the trials and manifests, run nothing")
    intermixed(parser, "args")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``noisyfr sweep``."""
    from noisyfr.tune.run import run_sweep
    from noisyfr.tune.spec import load_stored_sweep, load_sweep, plan_manifests

    items = list(args.args)
    config = items.pop(0) if items and ("=" not in items[0] or Path(items[0]).exists()) else None
    overrides = items
    if config is None:
        if not (args.resume and args.out):
            raise NoisyFRError("sweep: give a CONFIG first (or --resume --out SWEEP_DIR)")
        if overrides or args.device:
            raise NoisyFRError("sweep: overrides and --device need a CONFIG (a resumed sweep keeps its own)")
        spec = load_stored_sweep(args.out)
    else:
        from noisyfr.shipped import config_path

        config = config_path(config, "sweep config")
        if args.device:
            overrides = overrides + [("device", args.device)]
        spec = load_sweep(config, overrides, sweep_dir=args.out)
    if args.dry_run:
        groups = plan_manifests(spec)
        print(f"sweep {spec.name}: {len(spec.trials)} trials, {len(groups)} manifests -> {spec.sweep_dir}")
        for t in spec.trials:
            print(f"  {t.name}" + (f"  manifest={Path(t.manifest).name}" if t.manifest else ""))
        return 0
    run_sweep(spec, resume=args.resume, address=args.address, inputs=[config], overwrite=args.overwrite)
    print(f"results: {spec.sweep_dir / 'results.csv'}  summary: {spec.sweep_dir / 'summary.md'}")
    return 0
