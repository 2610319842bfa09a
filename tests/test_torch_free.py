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
print(json.dumps({{m: m in sys.modules for m in ("torch", "sklearn", "pandas")}}))
"""


def _loaded(*code: str) -> dict[str, bool]:
    """Which of torch / scikit-learn / pandas a fresh interpreter holds after running ``code``."""
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
                                    "noisyfr.analysis.report_sections", "noisyfr.cleaning.scores",
                                    "noisyfr.targets", "noisyfr.analysis.counterfactual",
                                    "noisyfr.analysis.report"])
def test_the_analysis_floor_imports_neither_torch_nor_sklearn(module):
    got = _loaded(f"import {module}")
    assert not got["torch"] and not got["sklearn"]


def test_every_help_and_the_version_import_no_torch():
    """Nor pandas: a help text needs none of the libraries the command computes with."""
    calls = [_help(["--help"]), _help(["--version"])] + [_help([name, "--help"]) for name in SUBCOMMANDS]
    assert _loaded(*calls) == {"torch": False, "sklearn": False, "pandas": False}


def test_the_probe_sees_torch_and_sklearn_when_they_are_imported():
    """The control: the same probe reports the training recipe's torch and a statistic that
    calls scikit-learn (the detection AUC, imported where it is used); the mixture reference
    imports it no more (its fit is written in 1-D: test_analysis.py checks it against
    scikit-learn's)."""
    assert _loaded("import noisyfr.train.trainer")["torch"]
    auc = "stats.detection_auc([0.1, 0.2, 1.0, 1.1], [False, False, True, True])"
    assert _loaded("from noisyfr.analysis import stats", auc)["sklearn"]
    fit = "stats.bimodal_noise_rate([0.1, 0.2, 1.0, 1.1, 1.2])"
    assert not _loaded("from noisyfr.analysis import stats", fit)["sklearn"]
    assert _loaded(_help(["train", "--help"]), "from noisyfr.train import train")["torch"]


def test_analyze_imports_neither_torch_nor_scikit_learn(tmp_path):
    """``analyze`` evaluates the built-in losses (the counterfactual weights, the analytic
    curves) in numpy (noisyfr.targets), also for a ``--counterfactual`` setting, and its mixture
    reference is written in 1-D. The control: a plugin loss, registered under a built-in's name,
    is evaluated by its own torch code, so the same command then holds torch."""
    from fabricate import make_synthetic_run

    run = make_synthetic_run(tmp_path / "run", num_ids=4, per_id=5, epochs=2)
    argv = ["analyze", str(run), "--out", str(tmp_path / "rep"), "--no-figures",
            "--counterfactual", "expface:m=0.7,grad_mode=detached"]
    got = _loaded(_help(argv))
    table = tmp_path / "rep" / "tables"
    assert (table / "noise_rate_estimates.csv").is_file()  # it did run the mixture
    cf = (table / "counterfactual.csv").read_text()
    assert "expface s=64 m=0.7 detached" in cf and "True" in cf  # and the counterfactual weights
    assert not got["torch"] and not got["sklearn"]
    plugin = ("from noisyfr.losses import register_loss\n"
              "from noisyfr.losses.margins import ArcFace\n"
              "register_loss('arcface')(type('PluginArc', (ArcFace,), {}))\n")
    got = _loaded(plugin, _help([*argv[:3], str(tmp_path / "rep2"), *argv[4:]]))
    assert got["torch"] and (tmp_path / "rep2" / "tables" / "counterfactual.csv").read_text() == cf


def test_query_and_clean_on_a_run_import_no_torch(tmp_path):
    from fabricate import make_synthetic_run

    run = make_synthetic_run(tmp_path / "run", num_ids=4, per_id=5, epochs=2)
    query = _help(["query", str(run), "SELECT count(*) FROM angles"])
    got = _loaded(query)
    assert not got["torch"] and not got["sklearn"] and got["pandas"]  # the control: it did read the run
    out = tmp_path / "clean.parquet"
    got = _loaded(_help(["clean", str(run), "--out", str(out), "--score", "aum", "--fraction", "0.3"]))
    assert out.is_file() and not got["torch"] and not got["sklearn"]


def test_the_builtin_loss_defaults_are_the_registry_s():
    """The loss labels computed without torch (noisyfr.labels' table of the built-in losses) are
    those of the registry: the same losses in the same order with the same defaults, so every
    label is the same."""
    from noisyfr import labels

    code = ("from noisyfr.losses import LOSSES, loss_parameters\n"
            "print(json.dumps({n: loss_parameters(n) for n in LOSSES}))\n")
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout)
    assert list(fresh) == list(labels.BUILTIN_PARAMETERS)
    for name, params in labels.BUILTIN_PARAMETERS.items():
        assert list(params.items()) == list(fresh[name].items()), name
        assert all(type(v) is type(fresh[name][k]) for k, v in params.items()), name  # 4 stays an int


def test_a_loss_label_is_the_same_with_and_without_torch():
    sections = [{"name": "arcface"}, {"name": "arcface", "s": 32, "m": 0.4, "grad_mode": "detached"},
                {"name": "boundaryface", "start_epoch": 3}, {"name": "sphereface", "m": 4.0},
                {"name": "magface", "easy_margin": False, "sample_rate": 0.5}, {"name": "softmax"},
                {"name": "no_such_loss", "s": 16}]
    code = ("from noisyfr import labels\n"
            f"print(json.dumps([[labels.loss_label(s), labels.loss_settings(s)] for s in {sections!r}]))\n")
    out = []
    for first in ("", "import noisyfr.losses\n"):  # the table, then the live registry
        proc = subprocess.run([sys.executable, "-c", "import json, sys\n" + first + code
                               + "print('torch' in sys.modules)"], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        got, torch_loaded = proc.stdout.strip().splitlines()
        assert torch_loaded == ("True" if first else "False")
        out.append(json.loads(got))
    assert out[0] == out[1]
    assert out[0][1][0] == "arcface s=32 m=0.4 detached"
    assert out[0][2][0] == "boundaryface s=64 m=0.5 start_epoch=3 exact"
