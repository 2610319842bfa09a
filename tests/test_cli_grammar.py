"""One command-line grammar: every subcommand's parser is walked and the shared flags checked."""
from __future__ import annotations

import argparse
import importlib

import pytest

from noisyfr.cli import SUBCOMMANDS, build_parser, main

WRITERS = ("inject", "pack", "synth", "curves", "analyze", "eval", "train", "sweep", "demo")
SHARED = {"--out": WRITERS, "--resume": ("train", "sweep"), "--device": ("train", "eval", "sweep")}
VARIANTS = ("--output", "--out-dir", "--outdir", "--output-dir", "--output_dir", "--resume-from",
            "--gpu", "--cuda", "--dev", "--outfile")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(p)
        out[name] = p
    return out


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


def test_every_subcommand_spells_the_shared_flags_the_same():
    parsers = _parsers()
    assert set(parsers) == set(SUBCOMMANDS)
    for name, p in parsers.items():
        opts = _options(p)
        assert not set(opts) & set(VARIANTS), f"{name}: a variant spelling of a shared flag"
        assert all("_" not in s for s in opts), f"{name}: flags use hyphens, not underscores"
        for flag, users in SHARED.items():
            if name in users:
                assert flag in opts, f"noisyfr {name} lacks {flag}"
            if flag in opts:  # one meaning: the same destination everywhere
                assert opts[flag].dest == flag.lstrip("-"), f"{name}: {flag} stores into {opts[flag].dest}"
        assert "--resume" not in opts or isinstance(opts["--resume"], argparse._StoreTrueAction)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_help_shows_an_example(name, capsys):
    module = importlib.import_module(SUBCOMMANDS[name][0])
    assert module.EXAMPLES and all(e.startswith(f"noisyfr {name} ") for e in module.EXAMPLES)
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and module.EXAMPLES[0] in out


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inject", "data", "--out", "m.parquet", "--no-such-flag"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-such-flag" in err
