"""``noisyfr embed CHECKPOINT DATA --out FILE.npy``: embeddings of a face index or a pairs set.

``FILE.npy``: float32 [N, d], row ``i`` the embedding of image ``i`` of ``DATA`` (the index order,
or the image order of the pairs set), ``model(x) + model(flip(x))`` L2-normalised (``--no-flip``:
``model(x)`` alone). ``FILE.parquet`` beside it: one row per image with ``path``, ``identity`` (None
where a ``.bin`` does not record it) and ``norm`` (the embedding's norm before normalisation).
Both files are written together at the end (atomically): a failure leaves neither.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from noisyfr.errors import NoisyFRError

#: Command lines shown by ``--help``.
EXAMPLES = ["noisyfr embed runs/train_lfw/checkpoints/last.pt ../shared/data/lfw_train --out emb.npy"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr embed``."""
    from noisyfr.eval.cli import add_backbone_arguments, add_run_arguments
    from noisyfr.numeric import real_arg

    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="checkpoint written by noisyfr train, or a bare state dict with --backbone")
    parser.add_argument("data", metavar="DATA",
                        help="a face index (ImageFolder, train.rec, synthetic: spec) or a pairs set "
                             "(pairs.txt, .bin, synthetic-pairs: spec)")
    parser.add_argument("--out", required=True, metavar="FILE.npy",
                        help="embeddings (.npy); the table goes beside it as FILE.parquet")
    add_backbone_arguments(parser)
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="embed the image alone (default: image + its horizontal flip)")
    parser.add_argument("--center-crop", type=real_arg(lo=0.0, hi=1.0, lo_open=True), default=None,
                        help="override the checkpoint's data.center_crop (fraction of the shorter side)")
    add_run_arguments(parser)


def is_pairs_source(data: str) -> bool:
    """True when ``data`` names a verification set rather than a face index."""
    p = Path(data)
    return (data.startswith("synthetic-pairs") or p.suffix in (".bin", ".txt")
            or (p.is_dir() and (p / "pairs.txt").is_file()))


def open_images(data: str) -> tuple[object, int, list[str], list]:
    """``(source with load_image, count, paths, identities)`` of an index or a pairs set."""
    if is_pairs_source(data):
        from noisyfr.data import load_pairs

        vset = load_pairs(data)
        n = int(vset.num_images)
        return vset, n, [vset.image_name(i) for i in range(n)], [vset.image_identity(i) for i in range(n)]
    from noisyfr.data import open_index

    index = open_index(data)
    labels = np.asarray(index.labels, dtype=np.int64)
    return index, len(index), [str(p) for p in index.paths], [index.identities[k] for k in labels]


def run(args: argparse.Namespace) -> int:
    """Open the data, load the model, embed every image, write the .npy and the Parquet table."""
    import pandas as pd

    from noisyfr.data.transforms import face_transform
    from noisyfr.device import resolve_device
    from noisyfr.dotted import get_dotted
    from noisyfr.eval.cli import check_run_arguments, load_model
    from noisyfr.eval.embed import TransformedImages, embed_dataset
    from noisyfr.io import atomic_path
    from noisyfr.outputs import check_output

    check_run_arguments(args)
    out = Path(args.out)
    if out.suffix != ".npy":
        raise NoisyFRError(f"--out {args.out}: must end with .npy (the table goes beside it as .parquet)")
    check_output(out, [args.checkpoint, args.data])
    check_output(out.with_suffix(".parquet"), [args.checkpoint, args.data], what="--out (its table)")
    device = resolve_device(args.device)
    source, n, paths, identities = open_images(args.data)
    if n == 0:
        raise NoisyFRError(f"{args.data}: has no images")
    model, ckpt, desc = load_model(args, device)
    cfg = ckpt["config"]
    image_size = get_dotted(cfg, "data.image_size", 112)
    crop = args.center_crop if args.center_crop is not None else get_dotted(cfg, "data.center_crop", 1.0)
    print(desc)
    images = TransformedImages(source.load_image, n, face_transform(image_size, crop))
    emb, norms = embed_dataset(model, images, flip=args.flip, batch_size=args.batch_size, device=device,
                               num_workers=args.num_workers, desc=f"embed {Path(args.data).name}")
    table = pd.DataFrame({"path": paths, "identity": identities, "norm": norms.astype(np.float64)})
    table_path = out.with_suffix(".parquet")
    with atomic_path(out) as tmp_npy, atomic_path(table_path) as tmp_table:
        with open(tmp_npy, "wb") as fh:
            np.save(fh, emb)
        table.to_parquet(tmp_table, index=False)
    print(f"wrote {n} embeddings (d={emb.shape[1]}, flip {'on' if args.flip else 'off'}) to {out} "
          f"and {table_path}")
    return 0
