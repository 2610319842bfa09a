"""One command-line grammar: every subcommand's parser is walked and the shared flags checked."""
from __future__ import annotations

import argparse
import importlib

import pytest

from noisyfr.cli import SUBCOMMANDS, build_parser, main

WRITERS = ("inject", "pack", "synth", "curves", "analyze", "eval", "train", "sweep", "demo", "loop",
           "features", "configs")
SHARED = {"--out": WRITERS, "--resume": ("train", "sweep", "loop"), "--device": ("train", "eval", "sweep")}
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


def _number_flags():
    """(command, flag) of every option that takes a number, found by walking the parsers."""
    out = []
    for name, p in _parsers().items():
        for a in p._actions:
            assert a.type not in (int, float), \
                f"noisyfr {name} {a.option_strings}: a bare {a.type.__name__}, not noisyfr.numeric"
            if getattr(a.type, "__name__", None) in ("number", "integer"):  # real_arg / int_arg
                out.append((name, a.option_strings[0]))
    return out


def test_every_number_flag_is_parsed_by_noisyfr_numeric():
    flags = _number_flags()
    # the commands whose options take numbers: all of them parse with real_arg / int_arg
    assert {name for name, _ in flags} == {"curves", "synth", "inject", "eval", "embed", "export",
                                           "analyze", "query", "clean", "features"}
    assert ("curves", "--points") in flags and ("inject", "--closed") in flags


@pytest.mark.parametrize("name, flag", _number_flags())
@pytest.mark.parametrize("bad", ["nan", "-Infinity", "1e999", "ten"])
def test_number_flags_refuse_non_finite_values_in_one_line(name, flag, bad, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([name, f"{flag}={bad}", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"noisyfr {name}: error: argument {flag}: expected ")
    assert len(err.splitlines()) == 1 and repr(bad) in err
    assert list(tmp_path.iterdir()) == []
