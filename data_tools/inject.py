"""``noisyfr inject DATA --out MANIFEST [--closed R] ...``: the command line of
:func:`noisyfr.noise.inject`; the flags are the fields of :class:`noisyfr.noise.NoiseSpec`."""
from __future__ import annotations

import argparse

from noisyfr.noise.spec import CLOSED_MODES
from noisyfr.numeric import MAX_SEED, int_arg, real_arg

#: Command lines shown by ``--help``.
EXAMPLES = ['noisyfr inject ../shared/data/lfw_train/images --out lfw_closed30.parquet --closed 0.3 --seed 0']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``noisyfr inject``."""
    parser.add_argument("data", metavar="DATA", help="dataset: ImageFolder dir, train.rec, or synthetic:...")
    parser.add_argument("--out", required=True, metavar="MANIFEST",
                        help="manifest to write (Parquet; CSV when it ends .csv); sidecar MANIFEST.json")
    parser.add_argument("--closed", type=real_arg(lo=0.0, hi=1.0), default=0.0, metavar="RATE",
                        help="closed-set noise rate in [0, 1] (default 0)")
    parser.add_argument("--closed-mode", default="symmetric", choices=CLOSED_MODES,
                        help="closed-set flip target (default symmetric)")
    parser.add_argument("--embeddings", default=None, metavar="NPY",
                        help="for --closed-mode nearest: [N, d] per-sample or [C, d] per-identity embeddings "
                             "(default: per-identity mean images)")
    parser.add_argument("--open", type=real_arg(lo=0.0, hi=1.0), default=0.0, metavar="RATE",
                        help="open-set noise rate in [0, 1] (default 0); needs --outliers or --holdout-ids")
    parser.add_argument("--outliers", default=None, metavar="DIR",
                        help="ImageFolder of out-of-set identities used as open-set images")
    parser.add_argument("--holdout-ids", type=int_arg(lo=0), default=0, metavar="N",
                        help="hold N identities out of the label set and use them as outliers")
    parser.add_argument("--split", type=int_arg(lo=0), default=0, metavar="N",
                        help="split N identities over two labels each (Type-II noise)")
    parser.add_argument("--merge", type=int_arg(lo=0), default=0, metavar="N",
                        help="merge N pairs of identities into one label each")
    parser.add_argument("--seed", type=int_arg(lo=0, hi=MAX_SEED), default=0, metavar="S",
                        help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Validate the options, open DATA, write the manifest, print a summary."""
    from noisyfr.data import open_index
    from noisyfr.noise import NoiseSpec, cli_flag, inject_to, summary
    from noisyfr.outputs import check_output

    spec = NoiseSpec.from_mapping({k: getattr(args, k) for k in NoiseSpec.fields()}, name=cli_flag)
    inputs = [args.data, args.outliers, args.embeddings]
    check_output(args.out, inputs)
    check_output(f"{args.out}.json", inputs, what="--out sidecar")
    index = open_index(args.data)
    manifest = inject_to(index, spec, args.out, frame=False)
    print(summary(args.out, manifest.meta))
    return 0
