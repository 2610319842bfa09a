"""``noisyfr pack IMAGEFOLDER --out OUT_PREFIX``: write insightface ``.rec``/``.idx``/``property``.

Any ``open_index`` input works (an ImageFolder, another ``.rec``, a ``synthetic:`` spec).
Images keep their encoded bytes; the result is read back by ``noisyfr.data.open_index``
(and by insightface's ``MXFaceDataset``).
"""
from __future__ import annotations

import argparse
import sys

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr pack ../shared/data/lfw_train/images --out lfw/train']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``noisyfr pack``."""
    parser.add_argument("input", metavar="IMAGEFOLDER",
                        help="ImageFolder root/<identity>/<image> (or any open_index input)")
    parser.add_argument("--out", metavar="OUT_PREFIX",
                        help="output prefix: writes OUT_PREFIX.rec, OUT_PREFIX.idx and "
                             "'property' beside them (a folder means FOLDER/train.*)")
    parser.add_argument("out_prefix", nargs="?", metavar="OUT_PREFIX",
                        help="deprecated positional form of --out (kept for one release)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="leave out images that fail a cheap integrity check instead of failing")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check images while packing (faster; bytes are copied as is)")


def run(args: argparse.Namespace) -> int:
    """Pack ``args.input`` into ``--out``; prints a one-line summary."""
    from noisyfr.data.open import open_index
    from noisyfr.data.recordio_pack import pack_index, prefix_paths
    from noisyfr.errors import NoisyFRError
    from noisyfr.outputs import check_output

    if args.out and args.out_prefix:
        raise NoisyFRError(f"--out {args.out} and OUT_PREFIX {args.out_prefix}: give the output once (--out)")
    out = args.out or args.out_prefix
    if not out:
        raise NoisyFRError("--out: required (the output prefix, e.g. --out lfw/train)")
    if args.out_prefix:
        print("noisyfr pack: the positional OUT_PREFIX is deprecated, use --out", file=sys.stderr)
    for path in prefix_paths(out):
        check_output(path, [args.input])
    index = open_index(args.input, skip_corrupt=args.skip_corrupt)
    verify = not args.no_verify
    if verify and hasattr(index, "check_files"):
        # a folder: every image checked before the first byte is written (--skip-corrupt has
        # already left the bad ones out while indexing)
        if not args.skip_corrupt:
            index.check_files()
        verify = False
    summary = pack_index(index, out, verify=verify, skip_corrupt=args.skip_corrupt)
    skipped = summary["skipped"] + getattr(index, "skipped", 0)
    print(f"packed {summary['images']} images of {summary['identities']} identities into "
          f"{summary['rec']} (+ .idx, property)"
          + (f"; skipped {skipped} corrupt" if skipped else ""), file=sys.stdout)
    return 0
