"""The ``noisyfr`` command line: one entry point, one subcommand per task.

Each subcommand lives in its own module, imported only when that subcommand runs, and exposes
``add_arguments(parser)``, ``run(args) -> int`` and ``EXAMPLES`` (command lines shown by
``noisyfr COMMAND --help``). One grammar: every writer takes ``--out``, ``train`` and ``sweep``
take ``--resume``, ``train``, ``eval`` and ``sweep`` take ``--device``. Bad input (:class:`NoisyFRError`, a
``ValueError``, or an ``OSError`` such as an unreadable input or a full disk) is reported as one
line on stderr with exit status 2. A command stopped by SIGTERM / SIGINT after saving its state
(:class:`noisyfr.errors.Stopped`) prints one line and exits 143 / 130.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys

from noisyfr import outputs
from noisyfr.errors import NoisyFRError, Stopped

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "curves": ("noisyfr.analysis.curves_cli", "draw similarity and gradient curves of margin losses"),
    "synth": ("data_tools.synth", "write synthetic face-like identities as an ImageFolder"),
    "pack": ("data_tools.pack", "pack an ImageFolder into insightface train.rec/.idx/property"),
    "inject": ("data_tools.inject", "inject controlled label noise and write a manifest"),
    "train": ("noisyfr.train.cli", "train a backbone + margin head from a YAML config"),
    "eval": ("noisyfr.eval.cli", "verification of a checkpoint: pairs/.bin sets, IJB-B/IJB-C"),
    "embed": ("noisyfr.eval.embed_cli", "embeddings of a face index or pairs set (.npy + Parquet)"),
    "features": ("noisyfr.features.cli", "embeddings of a dataset or pairs set from a pretrained face model"),
    "export": ("noisyfr.eval.export_cli", "export a backbone to ONNX (dynamic batch axis)"),
    "sweep": ("noisyfr.tune.cli", "run a Ray Tune grid of losses x noise settings x seeds"),
    "analyze": ("noisyfr.analysis.cli", "angle/weighting analysis report of a run or sweep"),
    "query": ("noisyfr.analysis.query_cli", "one read-only SQL query on a run or sweep's angle logs"),
    "clean": ("noisyfr.cleaning.cli", "score samples from a run's angles; write a cleaned manifest"),
    "loop": ("noisyfr.loop.cli", "train noisy, clean with each rule, retrain; compare with the oracle"),
    "demo": ("noisyfr.demo", "run the main job on the embedded synthetic default"),
    "configs": ("noisyfr.shipped", "list the shipped experiment configs and notebooks; copy one out"),
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``noisyfr CMD: error: ...``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else 'bad usage'}\n")


def intermixed(parser: argparse.ArgumentParser, dest: str) -> None:
    """Let the positional list ``dest`` (a config and ``KEY=VALUE`` overrides) also take words
    that come after the options (``CONFIG --out DIR k=v``): the top-level parser hands the
    subcommand's arguments to this parser's ``parse_known_args``."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = original(args, namespace)
        setattr(ns, dest, list(getattr(ns, dest, None) or []) + [a for a in extras if not a.startswith("-")])
        return ns, [a for a in extras if a.startswith("-")]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def build_parser() -> argparse.ArgumentParser:
    from noisyfr import __version__

    parser = OneLineParser(prog="noisyfr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"noisyfr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(_module=module)
        p.set_defaults(_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The command line draws figures into files only: matplotlib's Agg backend (the library itself
    # never sets one, so notebooks draw inline).
    os.environ.setdefault("MPLBACKEND", "Agg")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: find the subcommand, then let its module add its own arguments.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module = importlib.import_module(known._module)
    module.add_arguments(known._parser)
    known._parser.epilog = "example:\n  " + "\n  ".join(module.EXAMPLES)
    args = parser.parse_args(argv)
    outputs.clear_protection()
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f) is a write error, not a kill
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # whoever read the printed output stopped early (noisyfr configs | head)
        with contextlib.suppress(OSError, ValueError):  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command ended by a closed pipe
    except (NoisyFRError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and outputs.is_write_error(exc):
            exc = outputs.write_error(exc, exc.filename or "output")
        elif isinstance(exc, OSError) and exc.strerror:
            exc = NoisyFRError(f"{exc.filename or 'input'}: {exc.strerror}")
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"noisyfr {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except Stopped as exc:  # a signal stopped it after saving what it needs to continue
        print(f"noisyfr {args.command}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"noisyfr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
