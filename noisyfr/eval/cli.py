"""``noisyfr eval``: verification of a checkpoint on pairs/.bin sets and on IJB-B / IJB-C.

The checkpoint is a noisyfr training checkpoint or, with ``--backbone``, a bare state dict such as
insightface's ``backbone.pth``. ``--val`` sets (and the standard suite by name with
``--data-dir``) print one table; ``--ijb DIR --target IJBC --out OUT`` writes ``OUT/ijb_ijbc.csv``,
its ROC figure and a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from noisyfr import numeric
from noisyfr.errors import NoisyFRError
from noisyfr.numeric import MAX_EMBEDDING_DIM, MAX_EVAL_BATCH, MAX_WORKERS, int_arg, real_arg

#: Command lines shown by ``--help``.
EXAMPLES = ["noisyfr eval --checkpoint runs/train_lfw/checkpoints/last.pt "
            "--val ../shared/data/lfw_pairs_fold1/pairs.txt",
            "noisyfr eval --checkpoint backbone.pth --backbone iresnet50 --val lfw,cfp_fp,agedb_30 "
            "--data-dir faces_emore"]

def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` / ``--embedding-dim``: what a bare state dict holds (eval, embed, export)."""
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="architecture of a bare state dict (an insightface backbone.pth): "
                             "iresnet18/34/50/100, mobilefacenet, ...; a noisyfr checkpoint names its own")
    parser.add_argument("--embedding-dim", type=int_arg(lo=1, hi=MAX_EMBEDDING_DIM), default=None, metavar="D",
                        help="embedding size of a bare state dict (default 512)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--batch-size``, ``--num-workers``: how embeddings are computed."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int_arg(lo=1, hi=MAX_EVAL_BATCH), default=64,
                        help=f"images per forward pass, at most {MAX_EVAL_BATCH} (default 64)")
    parser.add_argument("--num-workers", type=int_arg(lo=0, hi=MAX_WORKERS), default=0,
                        help=f"DataLoader workers, at most {MAX_WORKERS} (default 0)")


def check_run_arguments(args: argparse.Namespace) -> None:
    """NoisyFRError naming the flag for a bad batch size, worker count, centre crop or embedding
    size (the flags' own types check them too; this serves a Namespace built in Python)."""
    numeric.integer(args.batch_size, "--batch-size", lo=1, hi=MAX_EVAL_BATCH)
    numeric.integer(args.num_workers, "--num-workers", lo=0, hi=MAX_WORKERS)
    if getattr(args, "center_crop", None) is not None:
        numeric.real(args.center_crop, "--center-crop", lo=0.0, hi=1.0, lo_open=True)
    if args.embedding_dim is not None:
        numeric.integer(args.embedding_dim, "--embedding-dim", lo=1, hi=MAX_EMBEDDING_DIM)


def load_model(args: argparse.Namespace, device) -> tuple[Any, dict, str]:
    """(model, checkpoint, one-line description) of ``args.checkpoint`` with ``--backbone``."""
    from noisyfr.dotted import get_dotted
    from noisyfr.eval.checkpoint import load_backbone

    model, ckpt = load_backbone(args.checkpoint, device=device, backbone=args.backbone,
                                embedding_dim=args.embedding_dim)
    cfg = ckpt["config"]
    where = f"epoch {ckpt['epoch']}" if "epoch" in ckpt else "bare state dict"
    desc = (f"checkpoint {args.checkpoint} ({get_dotted(cfg, 'model.backbone')}, {where}, "
            f"d={get_dotted(cfg, 'model.embedding_dim', 512)}, image_size "
            f"{get_dotted(cfg, 'data.image_size', 112)})")
    return model, ckpt, desc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr eval``."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint written by noisyfr train, or a bare state dict with --backbone")
    add_backbone_arguments(parser)
    parser.add_argument("--val", action="append", metavar="SETS",
                        help="pairs.txt / .bin paths or, with --data-dir, bare names of .bin files; "
                             "comma-separated and/or repeated (lfw,cfp_fp,agedb_30,calfw,cplfw)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder of insightface .bin files: a bare --val name is DIR/<name>.bin "
                             "(evaluated when present, skipped when absent)")
    parser.add_argument("--ijb", default=None, metavar="DIR",
                        help="IJB folder (meta/<t>_face_tid_mid.txt, meta/<t>_template_pair_label.txt, "
                             "meta/<t>_name_5pts_score.txt, loose_crop/); needs --out")
    parser.add_argument("--target", default="IJBC", type=str.upper, choices=("IJBB", "IJBC"),
                        help="IJB target (default IJBC)")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="embed the image alone (default: image + its horizontal flip)")
    parser.add_argument("--no-norm-score", dest="norm_score", action="store_false",
                        help="IJB: L2-normalise face features before pooling (default: keep norms)")
    parser.add_argument("--no-detector-score", dest="detector_score", action="store_false",
                        help="IJB: do not weight face features by the detector score")
    parser.add_argument("--thresholds", default="insightface", choices=("insightface", "exact"),
                        help="accuracy threshold: insightface's grid (default) or the exact best one")
    add_run_arguments(parser)
    parser.add_argument("--folds", type=int_arg(lo=2), default=10, help="cross-validation folds (default 10)")
    parser.add_argument("--center-crop", type=real_arg(lo=0.0, hi=1.0, lo_open=True), default=None,
                        help="override the checkpoint's data.center_crop (fraction of the shorter side)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="with --ijb: output folder; else a .json (or .csv table) of the --val results")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _write_val(path: Path, payload: dict, results: list[dict]) -> None:
    from noisyfr.eval.suite import results_frame
    from noisyfr.io import atomic_write
    from noisyfr.outputs import csv_safe

    if path.suffix == ".csv":
        with atomic_write(path, "w", newline="") as fh:
            csv_safe(results_frame(results)).to_csv(fh, index=False)
        return
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(_json_safe(payload), fh, indent=2)
        fh.write("\n")


def run(args: argparse.Namespace) -> int:
    """Open every input, load the checkpoint, evaluate, print the tables, then write the outputs."""
    from noisyfr.device import resolve_device
    from noisyfr.dotted import get_dotted
    from noisyfr.eval.suite import evaluate_sets, format_table, open_sets

    check_run_arguments(args)
    if not args.val and not args.ijb:
        raise NoisyFRError("nothing to evaluate: give --val SETS and/or --ijb DIR")
    if args.ijb and not args.out:
        raise NoisyFRError("--ijb: needs --out OUT (the folder for ijb_<target>.csv and its ROC figure)")
    if args.ijb and args.out and Path(args.out).is_file():
        raise NoisyFRError(f"--out {args.out}: with --ijb, --out is a folder, not a file")
    if args.out:
        from noisyfr.eval.suite import split_val
        from noisyfr.outputs import check_output

        inputs = [args.checkpoint, args.data_dir, args.ijb, *(split_val(args.val) if args.val else [])]
        check_output(args.out, inputs, kind="dir" if args.ijb else "file",
                     writes=("ijb_ijbb.csv", "ijb_ijbc.csv", "verification.json"))
    device = resolve_device(args.device)
    # Open every input first so that a bad path fails before any long computation.
    vsets, skipped = open_sets(args.val, args.data_dir) if args.val else ([], [])
    meta = None
    if args.ijb:
        from noisyfr.eval.ijb_meta import read_ijb_meta

        meta = read_ijb_meta(args.ijb, args.target)
    model, ckpt, desc = load_model(args, device)
    config = ckpt["config"]
    image_size = get_dotted(config, "data.image_size", 112)
    center_crop = args.center_crop if args.center_crop is not None else get_dotted(config, "data.center_crop", 1.0)
    print(desc)
    results = []
    if vsets:
        results = evaluate_sets(model, vsets, image_size=image_size, center_crop=center_crop,
                                batch_size=args.batch_size, device=device, num_workers=args.num_workers,
                                folds=args.folds, thresholds=args.thresholds, flip=args.flip)
        print(f"verification (center_crop {center_crop}, {args.folds} folds, {args.thresholds} "
              f"thresholds, flip {'on' if args.flip else 'off'})")
        print(format_table(results))
    if skipped:
        print(f"skipped (no .bin in {args.data_dir}): {', '.join(skipped)}")
    ijb = None
    if meta is not None:
        from noisyfr.eval.ijb import evaluate_ijb

        ijb = evaluate_ijb(model, meta, image_size=image_size, flip=args.flip, norm_score=args.norm_score,
                           detector_score=args.detector_score, batch_size=args.batch_size,
                           device=device, num_workers=args.num_workers)
        print(ijb.table())
    payload = {"checkpoint": str(args.checkpoint), "epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
               "backbone": get_dotted(config, "model.backbone"), "image_size": image_size,
               "center_crop": center_crop, "folds": args.folds, "thresholds": args.thresholds,
               "flip": args.flip, "skipped": skipped, "results": results}
    if ijb is not None:
        from noisyfr.eval.ijb import write_ijb
        from noisyfr.outputs import output_folder

        with output_folder(args.out):  # a failure removes what this call added
            paths = write_ijb(ijb, args.out, extra={"checkpoint": str(args.checkpoint),
                                                    "backbone": payload["backbone"]})
            if results:
                _write_val(Path(args.out) / "verification.json", payload, results)
        print(f"wrote {paths['csv']}, {paths['roc']}, {paths['json']}")
    elif args.out:
        _write_val(Path(args.out), payload, results)
    return 0
