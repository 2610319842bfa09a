"""``noisyfr eval``: verification accuracy of a training checkpoint on pairs.txt / .bin sets."""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

from noisyfr.errors import NoisyFRError

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr eval --checkpoint runs/train_lfw/checkpoints/last.pt --val ../shared/data/lfw_pairs_fold1/pairs.txt']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr eval``."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint written by noisyfr train (checkpoints/epoch_<E>.pt or last.pt)")
    parser.add_argument("--val", required=True, action="append", metavar="PATH",
                        help="LFW-style pairs.txt or insightface .bin; repeat for several sets")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--folds", type=int, default=10, help="cross-validation folds (default 10)")
    parser.add_argument("--center-crop", type=float, default=None,
                        help="override the checkpoint's data.center_crop (fraction of the shorter side)")
    parser.add_argument("--out", default=None, metavar="JSON", help="also write the results as JSON")


def format_table(results: list[dict[str, Any]]) -> str:
    """One line per verification set: accuracy +- std (%), TAR at FAR 1e-3 / 1e-4 (%), AUC, pairs."""
    width = max([len("set")] + [len(r["name"]) for r in results])
    lines = [f"{'set':<{width}}  {'accuracy %':>15}  {'TAR@FAR=1e-3 %':>14}  {'TAR@FAR=1e-4 %':>14}  "
             f"{'AUC':>6}  {'pairs':>6}"]
    for r in results:
        acc = f"{100 * r['accuracy']:.2f} +- {100 * r['accuracy_std']:.2f}"
        lines.append(f"{r['name']:<{width}}  {acc:>15}  {100 * r['tar_at_far_1e-3']:>14.2f}  "
                     f"{100 * r['tar_at_far_1e-4']:>14.2f}  {r['auc']:>6.4f}  {r['num_pairs']:>6d}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, evaluate every ``--val`` set, print a table, optionally write JSON."""
    from noisyfr.data import load_pairs
    from noisyfr.dotted import get_dotted
    from noisyfr.device import resolve_device
    from noisyfr.eval.checkpoint import load_backbone
    from noisyfr.eval.verification import evaluate
    from noisyfr.io import atomic_write

    if args.batch_size < 1:
        raise NoisyFRError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise NoisyFRError(f"--num-workers: must be >= 0, got {args.num_workers}")
    if args.center_crop is not None and not 0.0 < args.center_crop <= 1.0:
        raise NoisyFRError(f"--center-crop: must be in (0, 1], got {args.center_crop}")
    device = resolve_device(args.device)
    # Open every set first so that a bad path fails before any long computation.
    vsets = [load_pairs(path) for path in args.val]
    model, ckpt = load_backbone(args.checkpoint, device=device)
    config = ckpt["config"]
    image_size = get_dotted(config, "data.image_size", 112)
    center_crop = args.center_crop if args.center_crop is not None else get_dotted(config, "data.center_crop", 1.0)
    results = []
    for vset in vsets:
        results.append(evaluate(model, vset, folds=args.folds, image_size=image_size,
                                center_crop=center_crop, batch_size=args.batch_size,
                                device=device, num_workers=args.num_workers))
    print(f"checkpoint {args.checkpoint} ({get_dotted(config, 'model.backbone')}, "
          f"epoch {ckpt.get('epoch', '?')}, image_size {image_size}, center_crop {center_crop})")
    print(format_table(results))
    if args.out:
        payload = {"checkpoint": str(args.checkpoint), "epoch": ckpt.get("epoch"),
                   "step": ckpt.get("step"), "backbone": get_dotted(config, "model.backbone"),
                   "image_size": image_size, "center_crop": center_crop, "folds": args.folds,
                   "results": results}
        with atomic_write(args.out, "w", encoding="utf-8") as fh:
            json.dump(_json_safe(payload), fh, indent=2)
            fh.write("\n")
    return 0
