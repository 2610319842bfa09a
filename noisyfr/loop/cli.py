"""``noisyfr loop CONFIG.yaml [--out DIR] [--resume]``: train on noisy labels, clean with each
rule, retrain on each cleaned manifest, and report how much of the oracle's accuracy each rule
recovers (:mod:`noisyfr.loop.run`, docs/cleaning.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from noisyfr.cli import intermixed
from noisyfr.errors import NoisyFRError

#: Command lines shown by ``--help``.
EXAMPLES = [
    "noisyfr loop experiments/configs/clean_loop.yaml --out runs/clean_loop",
    "noisyfr loop experiments/configs/clean_loop.yaml --out runs/clean_loop --resume",
    "noisyfr loop --resume --out runs/clean_loop",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr loop``."""
    parser.add_argument("args", nargs="*", metavar="CONFIG|KEY=VALUE",
                        help="loop YAML or a shipped config's name (a training config plus a 'loop' section; "
                             "optional with --resume --out DIR), then dotted-key overrides, "
                             "e.g. optim.epochs=3 loop.seeds=[0]")
    parser.add_argument("--out", help="loop directory (default: the config's output_dir, else runs/<name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a loop in --out: finished trainings and cleanings are skipped")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config (importing its plugins, as every command that reads it "
                             "does) and count the stages; train and write nothing")
    intermixed(parser, "args")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``noisyfr loop``."""
    from noisyfr.loop.run import PLAN_FILE, load_plan, run_loop
    from noisyfr.outputs import check_output

    items = list(args.args)
    config = items.pop(0) if items and ("=" not in items[0] or Path(items[0]).exists()) else None
    if config is None:
        if not (args.resume and args.out):
            raise NoisyFRError("loop: give a CONFIG first (or --resume --out DIR)")
        if items:
            raise NoisyFRError("loop: overrides need a CONFIG (a resumed loop keeps its own)")
        stored = Path(args.out) / PLAN_FILE
        if not stored.is_file():
            raise NoisyFRError(f"--out {args.out}: holds no loop ({PLAN_FILE}) to resume")
        config = stored
        plan = load_plan(stored)
    else:
        from noisyfr.shipped import config_path

        config = config_path(config, "loop config")
        plan = load_plan(config, items)
    out = Path(args.out or plan.base.get("output_dir") or Path("runs") / str(plan.base.get("name") or "loop"))
    from noisyfr.train.config import run_inputs

    # everything a training of the loop reads (dataset, val sets, outliers, init): none may hold
    # the loop's folder, checked before loop.yaml or anything else is written
    check_output(out, [config, *run_inputs(plan.base)], kind="dir")
    cells = sum(1 for _ in plan.cells())
    trainings = cells * (len(plan.rules) + 2)
    if args.dry_run:
        print(f"loop: {cells} noisy run(s) ({len(plan.losses)} loss(es) x {len(plan.conditions)} condition(s) x "
              f"{len(plan.seeds)} seed(s)), {len(plan.rules)} rule(s) + the oracle: up to {trainings} "
              f"training run(s) -> {out}")
        return 0
    run_loop(plan, out, resume=args.resume, stream=sys.stderr)
    print(f"table: {out / 'loop.md'}")
    return 0
