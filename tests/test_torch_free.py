"""The analysis floor and every command's ``--help`` import no torch (docs/ARCHITECTURE.md): each
check runs in a fresh interpreter and reads ``sys.modules`` after the imports or commands."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from noisyfr.cli import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import contextlib, io, json, sys
for code in {code!r}:
    exec(code)
print(json.dumps({{m: m in sys.modules for m in ("torch", "sklearn")}}))
"""


def _loaded(*code: str) -> dict[str, bool]:
    """Which of torch / scikit-learn a fresh interpreter holds after running ``code``."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(code=list(code))], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _help(argv: list[str]) -> str:
    """Run ``noisyfr ARGV`` (a --help or --version: it exits 0) with its output swallowed."""
    return ("from noisyfr.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    main({argv!r})\n")


@pytest.mark.parametrize("module", ["noisyfr.analysis.views", "noisyfr.angle_log", "noisyfr.analysis.stats",
                                    "noisyfr.analysis.report_sections", "noisyfr.cleaning.scores"])
def test_the_analysis_floor_imports_neither_torch_nor_sklearn(module):
    assert _loaded(f"import {module}") == {"torch": False, "sklearn": False}


def test_every_help_and_the_version_import_no_torch():
    calls = [_help(["--help"]), _help(["--version"])] + [_help([name, "--help"]) for name in SUBCOMMANDS]
    assert _loaded(*calls) == {"torch": False, "sklearn": False}


def test_the_probe_sees_torch_and_sklearn_when_they_are_imported():
    """The control: the same probe reports the training recipe's torch and a statistic that
    fits a mixture (scikit-learn, imported where it is used)."""
    assert _loaded("import noisyfr.train.trainer")["torch"]
    fit = "stats.bimodal_noise_rate([0.1, 0.2, 1.0, 1.1, 1.2])"
    assert _loaded("from noisyfr.analysis import stats", fit)["sklearn"]
    assert _loaded(_help(["train", "--help"]), "from noisyfr.train import train")["torch"]
