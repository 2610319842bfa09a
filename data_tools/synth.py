"""``noisyfr synth``: write synthetic face-like identities as an ImageFolder.

    noisyfr synth --ids 100 --per-id 20 --size 112 --seed 0 --out DIR

writes ``DIR/<identity>/<k>.png`` (the same paths as ``SyntheticIndex``) and ``DIR/synth.json``.
The folder appears all at once: files are written into a temporary folder beside ``DIR`` that is
renamed to ``DIR`` at the end, so an interrupted run leaves nothing behind. An existing non-empty
``DIR`` is refused.

    noisyfr synth --pairs 600 --ids 100 --per-id 10 --first-id 100000 --size 112 --seed 0 --out DIR

writes instead the verification set ``synthetic-pairs:ids=100,per_id=10,first_id=100000,pairs=600,
size=112,seed=0`` in the LFW layout that ``load_pairs(DIR)`` reads: ``DIR/pairs.txt`` (header
``1<TAB>300``, then the same pairs ``name n1 n2``, then the different pairs ``name1 n1 name2 n2``;
numbers are 1-based: image ``k`` is ``<name>_<k+1:04d>.jpg``), ``DIR/images/<name>/<name>_NNNN.jpg``
(only the images the pairs use; JPEG quality 95, 4:4:4, so pixels differ from the in-memory set by
JPEG rounding) and ``DIR/synth.json``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from noisyfr.errors import NoisyFRError
from noisyfr.numeric import int_arg
from noisyfr.outputs import atomic_folder, check_output

META_NAME = "synth.json"

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr synth --ids 100 --per-id 20 --size 112 --seed 0 --out synthetic_faces']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``synth`` options on ``parser``."""
    d = {"ids": 100, "per_id": 20, "size": 112, "seed": 0}
    parser.add_argument("--ids", type=int_arg(), default=d["ids"],
                        help=f"number of identities (default {d['ids']})")
    parser.add_argument("--per-id", dest="per_id", type=int_arg(), default=None,
                        help=f"images per identity (default {d['per_id']}; 10 with --pairs)")
    parser.add_argument("--size", type=int_arg(), default=d["size"],
                        help=f"image side in pixels (default {d['size']})")
    parser.add_argument("--seed", type=int_arg(), default=d["seed"],
                        help=f"random seed: same seed, same bytes (default {d['seed']})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (must not exist, or be empty)")
    parser.add_argument("--pairs", type=int_arg(), default=None, metavar="N",
                        help="write a verification set of N pairs (half same, half different) "
                             "in the LFW layout (pairs.txt + images/) instead of an ImageFolder")
    parser.add_argument("--first-id", dest="first_id", type=int_arg(), default=None, metavar="F",
                        help="with --pairs: label of the first identity (default 100000, beyond "
                             "any training set of the same seed with ids <= F)")


def write_synthetic(out: str | os.PathLike, ids: int = 100, per_id: int = 20, size: int = 112,
                    seed: int = 0, progress: bool | None = None) -> Path:
    """Render a :class:`SyntheticIndex` into the ImageFolder ``out`` atomically; return its path.

    ``progress``: show a tqdm bar (None: only on a terminal).
    """
    from noisyfr import __version__
    from noisyfr.data.render import RENDERER_VERSION
    from noisyfr.data.synthetic import SyntheticIndex, check_params, encode_png

    out = Path(out)
    check_params(ids, per_id, size, seed, where=None,
                 names={"ids": "--ids", "per_id": "--per-id", "size": "--size", "seed": "--seed"})
    index = SyntheticIndex(ids=ids, per_id=per_id, size=size, seed=seed, cache_mb=0)
    check_output(out, kind="dir")
    with atomic_folder(out) as tmp:
        for name in index.identities:
            (tmp / name).mkdir()
        disable = None if progress is None else not progress
        for i in tqdm(range(len(index)), desc="synth", unit="img", disable=disable):
            (tmp / index.paths[i]).write_bytes(encode_png(index.load_image(i)))
        meta = {
            "generator": "noisyfr.data.synthetic",
            "version": __version__,
            "renderer_version": RENDERER_VERSION,
            "spec": index.spec,
            "ids": index.ids, "per_id": index.per_id, "size": index.size, "seed": index.seed,
            "num_images": len(index),
            "layout": "<identity>/<k>.png",
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


LFW_JPEG = {"format": "JPEG", "quality": 95, "subsampling": 0, "optimize": False}


def lfw_name(vset, i: int) -> tuple[str, int]:
    """(identity folder name, 1-based LFW image number) of image ``i`` of a SyntheticPairs set."""
    j, k = divmod(int(i), vset.per_id)
    return f"id{vset.first_id + j:04d}", k + 1


def write_synthetic_pairs(out: str | os.PathLike, ids: int = 100, per_id: int = 10,
                          first_id: int = 100_000, pairs: int = 600, size: int = 112,
                          seed: int = 0, progress: bool | None = None) -> Path:
    """Write :class:`~noisyfr.data.synthetic_pairs.SyntheticPairs` ``(ids, per_id, first_id, pairs,
    size, seed)`` as an LFW-style folder (``pairs.txt``, ``images/``, ``synth.json``) atomically;
    return its path. ``load_pairs(out)`` reads it back with the same pairs and labels. Invalid
    values raise NoisyFRError naming the option (``--pairs``...).
    """
    import io

    from PIL import Image

    from noisyfr import __version__
    from noisyfr.data.render import RENDERER_VERSION
    from noisyfr.data.synthetic import check_pairs_params
    from noisyfr.data.synthetic_pairs import SyntheticPairs

    out = Path(out)
    names = {"ids": "--ids", "per_id": "--per-id", "first_id": "--first-id", "pairs": "--pairs",
             "size": "--size", "seed": "--seed"}
    try:
        check_pairs_params(ids, per_id, first_id, pairs, size, seed, where="synth")
    except NoisyFRError as exc:
        msg = str(exc)
        for key, opt in names.items():
            msg = (msg.replace(f"synth: {key}: ", f"{opt}: ").replace(f"synth: {key} ", f"{opt} ")
                   .replace(f"{key}=", f"{opt}="))
        raise NoisyFRError(msg.replace("synth: ", "")) from None
    vset = SyntheticPairs(ids=ids, per_id=per_id, first_id=first_id, pairs=pairs, size=size,
                          seed=seed, cache_mb=0)
    check_output(out, kind="dir")
    with atomic_folder(out) as tmp:
        used = np.unique(vset.pairs)
        disable = None if progress is None else not progress
        for i in tqdm(used.tolist(), desc="synth pairs", unit="img", disable=disable):
            name, num = lfw_name(vset, i)
            folder = tmp / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            arr = vset.load_image(i).permute(1, 2, 0).numpy()
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(arr), mode="RGB").save(buf, **LFW_JPEG)
            (folder / f"{name}_{num:04d}.jpg").write_bytes(buf.getvalue())
        lines = [f"1\t{pairs // 2}"]
        for (a, b), same in zip(vset.pairs.tolist(), vset.issame.tolist()):
            (na, ka), (nb, kb) = lfw_name(vset, a), lfw_name(vset, b)
            lines.append(f"{na}\t{ka}\t{kb}" if same else f"{na}\t{ka}\t{nb}\t{kb}")
        (tmp / "pairs.txt").write_text("\n".join(lines) + "\n")
        meta = {
            "generator": "noisyfr.data.synthetic",
            "version": __version__,
            "renderer_version": RENDERER_VERSION,
            "spec": vset.spec,
            "ids": ids, "per_id": per_id, "first_id": first_id, "pairs": pairs, "size": size,
            "seed": seed, "num_images": int(len(used)),
            "layout": "pairs.txt + images/<name>/<name>_<NNNN>.jpg (LFW)",
            "jpeg": {k: v for k, v in LFW_JPEG.items() if k != "format"},
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of ``noisyfr synth``."""
    if args.pairs is not None:
        per_id = 10 if args.per_id is None else args.per_id
        first_id = 100_000 if args.first_id is None else args.first_id
        out = write_synthetic_pairs(args.out, ids=args.ids, per_id=per_id, first_id=first_id,
                                    pairs=args.pairs, size=args.size, seed=args.seed)
        print(f"wrote {args.pairs} pairs over {args.ids} identities ({first_id}..."
              f"{first_id + args.ids - 1}, {args.size}x{args.size}) to {out}")
        return 0
    if args.first_id is not None:
        raise NoisyFRError("--first-id: only meaningful with --pairs")
    if args.per_id is None:
        args.per_id = 20
    out = write_synthetic(args.out, ids=args.ids, per_id=args.per_id, size=args.size,
                          seed=args.seed)
    n = args.ids * args.per_id
    print(f"wrote {n} images of {args.ids} identities ({args.size}x{args.size}) to {out}")
    return 0
