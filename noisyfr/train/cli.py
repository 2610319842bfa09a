"""``noisyfr train CONFIG.yaml [key=value ...]``: train from a YAML config with dotted overrides."""
from __future__ import annotations

import argparse
import math


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr train``."""
    parser.add_argument("config", help="training config (YAML); see docs/training.md")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, value parsed as YAML "
                             "(e.g. optim.lr=0.05 loss.name=cosface data.val=[a.txt])")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit without training")


def run(args: argparse.Namespace) -> int:
    """Load and validate the config, train, print a one-line summary."""
    from noisyfr.distributed import rank_world, torchrun_group
    from noisyfr.train import load_config, train
    from noisyfr.train.config import dump_config

    cfg = load_config(args.config, args.overrides)
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
