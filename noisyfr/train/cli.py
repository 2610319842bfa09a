"""``noisyfr train CONFIG.yaml [key=value ...] [--out DIR] [--resume | --overwrite] [--device D]``:
train from a YAML config with dotted overrides (the flags set ``output_dir``, ``resume``,
``overwrite`` and ``device``)."""
from __future__ import annotations

import argparse
import math

from noisyfr.cli import intermixed

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr train experiments/configs/train_synthetic.yaml optim.epochs=3 --device cpu']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr train``."""
    parser.add_argument("config", help="training config (YAML), or a shipped config's name; see docs/training.md")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, value parsed as YAML "
                             "(e.g. optim.lr=0.05 loss.name=cosface data.val=[a.txt])")
    parser.add_argument("--out", metavar="DIR", help="run directory (sets output_dir; default runs/<name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the run directory from its newest readable checkpoint "
                             "(sets resume=true; an error when there is none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run the run directory holds (sets overwrite=true; without it a "
                             "fresh run into a directory holding a run is refused)")
    parser.add_argument("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (sets device)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit without training")
    intermixed(parser, "overrides")


def run(args: argparse.Namespace) -> int:
    """Load and validate the config, train, print a one-line summary."""
    from noisyfr.distributed import rank_world, torchrun_group
    from noisyfr.errors import NoisyFRError
    from noisyfr.outputs import protect
    from noisyfr.shipped import config_path
    from noisyfr.train import load_config, train
    from noisyfr.train.checkpoint import last_checkpoint
    from noisyfr.train.config import dump_config

    args.config = str(config_path(args.config, "training config"))
    protect(args.config)
    if args.resume and args.overwrite:
        raise NoisyFRError("--resume and --overwrite: give one (continue the run, or replace it)")
    flags = [("output_dir", args.out), ("device", args.device), ("resume", True if args.resume else None),
             ("overwrite", True if args.overwrite else None)]
    cfg = load_config(args.config, list(args.overrides) + [(k, v) for k, v in flags if v is not None])
    if args.resume and last_checkpoint(cfg["output_dir"]) is None:
        raise NoisyFRError(f"--resume: no checkpoint to resume in {cfg['output_dir']}/checkpoints "
                           "(start the run without --resume)")
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    with torchrun_group(cfg["device"]):  # `torchrun ... -m noisyfr train`: one process per GPU
        result = train(cfg)
        if rank_world()[0] != 0:
            return 0
    val = result.get("best_val_accuracy", math.nan)
    val_text = f", best val accuracy {val:.4f}" if isinstance(val, float) and math.isfinite(val) else ""
    print(f"trained {cfg['name']}: {result.get('epoch', 0)} epochs, loss {result.get('loss', math.nan):.4f}"
          f"{val_text}; run directory {cfg['output_dir']}")
    return 0
