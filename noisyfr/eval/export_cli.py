"""``noisyfr export CHECKPOINT --out model.onnx``: the command of :mod:`noisyfr.eval.export` (the
backbone as ONNX with a dynamic batch axis, checked in onnxruntime unless ``--no-check``)."""
from __future__ import annotations

import argparse

from noisyfr import numeric

#: Command lines shown by ``--help``.
EXAMPLES = ["noisyfr export runs/train_lfw/checkpoints/last.pt --out model.onnx",
            "noisyfr export backbone.pth --backbone iresnet50 --out r50.onnx"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr export``."""
    from noisyfr.eval.cli import add_backbone_arguments
    from noisyfr.numeric import int_arg

    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="checkpoint written by noisyfr train, or a bare state dict with --backbone")
    parser.add_argument("--out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    add_backbone_arguments(parser)
    parser.add_argument("--opset", type=int_arg(lo=1, hi=1000), default=None,
                        help="ONNX opset (default: the exporter's, 18 or later)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not compare the ONNX model with PyTorch in onnxruntime")


def run(args: argparse.Namespace) -> int:
    """Load the backbone on CPU, export it, check it, report."""
    from noisyfr.dotted import get_dotted
    from noisyfr.eval.checkpoint import load_backbone
    from noisyfr.eval.export import export_onnx, require
    from noisyfr.outputs import check_output

    if args.embedding_dim is not None:
        numeric.integer(args.embedding_dim, "--embedding-dim", lo=1, hi=numeric.MAX_EMBEDDING_DIM)
    require("onnx", "onnxscript", what="ONNX export")
    check_output(args.out, [args.checkpoint])
    model, ckpt = load_backbone(args.checkpoint, device="cpu", backbone=args.backbone,
                                embedding_dim=args.embedding_dim)
    cfg = ckpt["config"]
    backbone = get_dotted(cfg, "model.backbone")
    image_size = get_dotted(cfg, "data.image_size", 112)
    diff = export_onnx(model, args.out, image_size, name=f"checkpoint {args.checkpoint} ({backbone})",
                       opset=args.opset, check=args.check)
    checked = f", max |onnxruntime - torch| = {diff:.2g}" if diff is not None else ", not checked"
    print(f"wrote {args.out}: {backbone}, input [batch, 3, {image_size}, {image_size}] -> "
          f"embedding [batch, {get_dotted(cfg, 'model.embedding_dim', 512)}]{checked}")
    return 0
