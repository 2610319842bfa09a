"""``noisyfr features DATA --model M --out FEATS.parquet``: embeddings of a dataset from a
pretrained face model, as a feature file (noisyfr.data.feature_store; docs/features.md).

``DATA``: an ImageFolder, a ``.rec``, a ``synthetic:`` spec, a noise manifest (its dataset is
embedded) or a pairs set (``pairs.txt`` with ``images/`` beside it, a ``.bin``). ``--model``:
``dlib`` (the ``noisyfr[dlib]`` extra), a noisyfr checkpoint, an insightface ``backbone.pth``
with ``--backbone``, or a ``.onnx`` file.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from noisyfr.errors import NoisyFRError

#: Command lines shown by ``--help``.
EXAMPLES = [
    "noisyfr features ../shared/data/lfw_ge3/images --model dlib --out lfw_ge3_dlib.parquet",
    "noisyfr features ../shared/data/lfw_pairs_fold1 --model dlib --out lfw_fold1_dlib.parquet",
    "noisyfr features data/casia --model backbone.pth --backbone iresnet50 --out casia_r50.parquet",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr features``."""
    from noisyfr.numeric import MAX_EMBEDDING_DIM, int_arg, real_arg

    parser.add_argument("data", metavar="DATA",
                        help="ImageFolder, .rec, synthetic: spec, noise manifest, or pairs set "
                             "(pairs.txt / folder holding it / .bin)")
    parser.add_argument("--model", required=True, metavar="M",
                        help="dlib, a noisyfr checkpoint, a bare state dict (with --backbone) or a .onnx file")
    parser.add_argument("--out", required=True, metavar="FEATS.parquet",
                        help="the feature file; its sidecar FEATS.parquet.json goes beside it")
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="architecture of a bare state dict (iresnet50, ...)")
    parser.add_argument("--embedding-dim", type=int_arg(lo=1, hi=MAX_EMBEDDING_DIM), default=None,
                        metavar="D", help="embedding size of a bare state dict (default 512)")
    parser.add_argument("--center-crop", type=real_arg(lo=0.0, hi=1.0, lo_open=True), default=None,
                        help="checkpoint / ONNX: centre crop (fraction of the shorter side) before "
                             "resizing (default: the checkpoint's data.center_crop; 1 for ONNX)")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="checkpoint / ONNX: embed the image alone (default: image + its flip)")
    parser.add_argument("--upsample", type=int_arg(lo=0, hi=3), default=1,
                        help="dlib: times the image is upsampled before detection (default 1)")
    parser.add_argument("--jitter", type=int_arg(lo=0, hi=100), default=0,
                        help="dlib: jittered copies averaged per face (default 0: the chip alone)")
    parser.add_argument("--workers", type=int_arg(lo=1, hi=256), default=1, metavar="N",
                        help="dlib: processes embedding chunks side by side (default 1; the numbers "
                             "are the same for any N). Torch and ONNX models use their own threads")


def run(args: argparse.Namespace) -> int:
    """Check the output, open the data and the model, extract (reusing finished chunks), write."""
    from noisyfr.data.feature_store import read_features
    from noisyfr.features.extract import extract, open_source, work_folder
    from noisyfr.features.models import load_model
    from noisyfr.features.verify import describe, pair_accuracy
    from noisyfr.outputs import check_output

    out = Path(args.out)
    if out.suffix != ".parquet":
        raise NoisyFRError(f"--out {args.out}: must end with .parquet (the sidecar goes beside it)")
    model_input = None if args.model == "dlib" else args.model
    if args.workers > 1 and args.model != "dlib":
        raise NoisyFRError(f"--workers {args.workers}: only for --model dlib (torch and ONNX models "
                           "use their own threads)")
    if args.workers > 1 and args.jitter:
        raise NoisyFRError(f"--workers {args.workers} with --jitter {args.jitter}: dlib draws the jittered "
                           "copies from one generator per process, so they would depend on which "
                           "process embeds which image; use --workers 1")
    inputs = [args.data, model_input]
    check_output(out, inputs)
    check_output(Path(str(out) + ".json"), inputs, what="--out (its sidecar)")
    check_output(work_folder(out), inputs, what="--out (its work folder)", kind="dir")
    t0 = time.perf_counter()
    model = load_model(args.model, backbone=args.backbone, embedding_dim=args.embedding_dim,
                       center_crop=args.center_crop, flip=args.flip, upsample=args.upsample,
                       jitter=args.jitter)
    source = open_source(args.data)
    check_output(out, source.inputs)  # a manifest's dataset is an input too
    table, counts = extract(source, model, out, workers=args.workers)
    wall = time.perf_counter() - t0
    if table is None:
        print(f"{out}: up to date ({source.count} images, same model and preprocessing): nothing done")
        table = read_features(out)
    else:
        print(f"wrote {len(table)} embeddings (d={table.dim}, {int(table.misses.sum())} detector "
              f"misses, {counts['reused']} of {counts['reused'] + counts['computed']} chunks reused) "
              f"to {out} in {wall:.1f} s")
    if table.pairs is not None and len(table.pairs):
        print(describe(pair_accuracy(table)))
    return 0
