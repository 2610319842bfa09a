"""``noisyfr synth``: write synthetic face-like identities as an ImageFolder.

    noisyfr synth --ids 100 --per-id 20 --size 112 --seed 0 --out DIR

writes ``DIR/<identity>/<k>.png`` (the same paths as ``SyntheticIndex``) and ``DIR/synth.json``.
The folder appears all at once: files are written into a temporary folder beside ``DIR`` that is
renamed to ``DIR`` at the end, so an interrupted run leaves nothing behind. An existing non-empty
``DIR`` is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from noisyfr.errors import NoisyFRError

META_NAME = "synth.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``synth`` options on ``parser``."""
    d = {"ids": 100, "per_id": 20, "size": 112, "seed": 0}
    parser.add_argument("--ids", type=int, default=d["ids"],
                        help=f"number of identities (default {d['ids']})")
    parser.add_argument("--per-id", dest="per_id", type=int, default=d["per_id"],
                        help=f"images per identity (default {d['per_id']})")
    parser.add_argument("--size", type=int, default=d["size"],
                        help=f"image side in pixels (default {d['size']})")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help=f"random seed: same seed, same bytes (default {d['seed']})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (must not exist, or be empty)")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NoisyFRError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise NoisyFRError(f"--out {out}: directory exists and is not empty; "
                           f"refusing to overwrite (remove it or choose another)")


def write_synthetic(out: str | os.PathLike, ids: int = 100, per_id: int = 20, size: int = 112,
                    seed: int = 0, progress: bool | None = None) -> Path:
    """Render a :class:`SyntheticIndex` into the ImageFolder ``out`` atomically; return its path.

    ``progress``: show a tqdm bar (None: only on a terminal).
    """
    from noisyfr import __version__
    from noisyfr.data.synthetic import RENDERER_VERSION, SyntheticIndex, check_params, encode_png

    out = Path(out)
    check_params(ids, per_id, size, seed, where=None,
                 names={"ids": "--ids", "per_id": "--per-id", "size": "--size", "seed": "--seed"})
    index = SyntheticIndex(ids=ids, per_id=per_id, size=size, seed=seed, cache_mb=0)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
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
        os.chmod(tmp, 0o755)          # mkdtemp makes it private; the result is an ordinary folder
        _check_out(out)               # someone may have filled DIR meanwhile
        if out.is_dir():
            out.rmdir()               # empty: replace it
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of ``noisyfr synth``."""
    out = write_synthetic(args.out, ids=args.ids, per_id=args.per_id, size=args.size,
                          seed=args.seed)
    n = args.ids * args.per_id
    print(f"wrote {n} images of {args.ids} identities ({args.size}x{args.size}) to {out}")
    return 0
