"""noisyfr installed the way a user installs it: the configs and notebooks travel with the package.

The fast tests read the checkout (``experiments/`` beside the package). The slow one builds the
wheel from a copy of the source tree, installs it into a fresh virtual environment (the installed
dependencies reused through a path file, the checkout's noisyfr not), and from an empty folder runs
``noisyfr --version``, ``noisyfr configs``, ``noisyfr sweep demo --dry-run`` and a shipped notebook
under papermill, while an audit hook in every process of that environment records any file opened
or folder listed inside the source tree or the build copy: there must be none.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import noisyfr
from noisyfr import cli, shipped
from noisyfr.errors import NoisyFRError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
NOTEBOOKS = REPO / "experiments" / "notebooks"

# ----------------------------------------------------------------------------- the checkout


def test_checkout_ships_every_config_and_notebook_of_experiments():
    assert shipped.experiments_root() == REPO / "experiments"
    assert set(shipped.shipped("configs")) == {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(shipped.shipped("notebooks")) == {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert shipped.config_path("demo") == CONFIGS / "demo.yaml"
    assert shipped.config_path("demo.yaml") == CONFIGS / "demo.yaml"


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.yaml").write_text("name: mine\n")
    assert shipped.config_path("demo.yaml") == Path("demo.yaml")  # the file here, not the shipped one
    assert shipped.config_path("demo") == CONFIGS / "demo.yaml"    # a bare name is the shipped one
    with pytest.raises(NoisyFRError, match=r"sweep config sub/demo.yaml: no such file.*noisyfr configs"):
        shipped.config_path("sub/demo.yaml", "sweep config")       # a missing path is not a name
    with pytest.raises(NoisyFRError, match="training config nosuch: no such file"):
        shipped.config_path("nosuch", "training config")


def test_configs_lists_one_line_each(capsys):
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"# noisyfr {noisyfr.__version__}: ")
    names = [ln.split()[0] for ln in lines[1:]]
    assert names == sorted(p.stem for p in CONFIGS.glob("*.yaml")) + sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    kinds = {ln.split()[0]: ln.split()[1] for ln in lines[1:]}
    assert kinds["demo"] == "sweep" and kinds["train_synthetic"] == "train" and kinds["clean_loop"] == "loop"
    assert kinds["01_noise_injection"] == "notebook"


def test_configs_copies_one_out_and_never_replaces(tmp_path, capsys):
    out = tmp_path / "my.yaml"
    assert cli.main(["configs", "demo", "--out", str(out)]) == 0
    assert out.read_bytes() == (CONFIGS / "demo.yaml").read_bytes()
    out.write_text("edited\n")
    assert cli.main(["configs", "demo", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "edited\n"
    nb = tmp_path / "nb.ipynb"
    assert cli.main(["configs", "02_angle_analysis", "--out", str(nb)]) == 0
    assert nb.read_bytes() == (NOTEBOOKS / "02_angle_analysis.ipynb").read_bytes()
    assert cli.main(["configs", "nosuch", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisyfr configs: error: nosuch:") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.yaml").exists()
    assert cli.main(["configs", "demo"]) == 0  # no --out: printed
    assert capsys.readouterr().out == (CONFIGS / "demo.yaml").read_text()


def test_sweep_and_train_take_a_shipped_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "demo", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"sweep demo: 12 trials, 4 manifests -> {tmp_path / 'runs' / 'demo'}")
    assert cli.main(["train", "train_synthetic", "--print-config"]) == 0
    assert "name: train_synthetic" in capsys.readouterr().out
    assert cli.main(["loop", "clean_loop", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("loop: ")
    assert list(tmp_path.iterdir()) == []  # dry runs write nothing


def test_a_reader_that_stops_early_is_not_an_error(tmp_path):
    """``noisyfr configs | head -1``: the closed pipe ends the command quietly, status 141."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "noisyfr.cli", "configs"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    proc.stdout.close()  # before the interpreter has started: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert capsys.readouterr().out.strip() == f"noisyfr {version}" == f"noisyfr {noisyfr.__version__}"


# ----------------------------------------------------------------------------- the installed wheel

#: imported at start-up by every process of the test environment (a path file runs it): records
#: each file opened and folder listed under NOISYFR_FORBID_READ (outside NOISYFR_ALLOW_READ).
AUDIT = '''
import os, sys
_forbid = [os.path.realpath(p) for p in os.environ.get("NOISYFR_FORBID_READ", "").split(os.pathsep) if p]
_allow = [os.path.realpath(p) for p in os.environ.get("NOISYFR_ALLOW_READ", "").split(os.pathsep) if p]
_log = os.environ.get("NOISYFR_READ_LOG")
_busy = []

def _under(path, roots):
    return any(path == r or path.startswith(r + os.sep) for r in roots)

def _hook(event, args):
    if _busy or not _log or event not in ("open", "os.listdir", "os.scandir") or not args:
        return
    path = args[0]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    _busy.append(1)
    try:
        path = os.path.realpath(os.fsdecode(path))
        if _under(path, _forbid) and not _under(path, _allow):
            with open(_log, "a") as fh:
                fh.write(f"{os.getpid()} {event} {path}\\n")
    finally:
        _busy.pop()

if _forbid:
    sys.addaudithook(_hook)
'''


def _copy_source(dst: Path) -> Path:
    """The source tree without git, virtual environments, build output or caches."""
    def ignore(folder, names):
        drop = {".git", ".venv", "venv", "build", "dist", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [n for n in names if n in drop or n.endswith(".egg-info")]
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(environment variables, the fresh environment's bin folder, a read log, an empty folder)."""
    base = tmp_path_factory.mktemp("install")
    src = _copy_source(base / "src")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(dist), str(src)], check=True, cwd=base, timeout=300)
    wheels = list(dist.glob("noisyfr-*.whl"))
    assert len(wheels) == 1
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    # the dependencies, as plain path entries: their own path files (the checkout's editable
    # noisyfr among them) are not processed, so only the wheel's noisyfr can be imported
    (site / "zz_noisyfr_deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    (site / "noisyfr_read_audit.py").write_text(AUDIT)
    (site / "noisyfr_read_audit.pth").write_text("import noisyfr_read_audit\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheels[0])],
                   check=True, env=env, timeout=300)
    empty = base / "empty"
    empty.mkdir()
    log = base / "reads.log"
    env.update(NOISYFR_FORBID_READ=os.pathsep.join([str(REPO), str(src)]),
               NOISYFR_ALLOW_READ=os.pathsep.join([sys.prefix, *deps]), NOISYFR_READ_LOG=str(log),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
               PYTHONDONTWRITEBYTECODE="1")
    return env, venv / "bin", log, empty


def _run(installed, *cmd, env=None, timeout=300) -> str:
    base_env, bindir, _, empty = installed
    proc = subprocess.run([str(bindir / cmd[0]), *cmd[1:]], cwd=empty, env=env or base_env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_installed_wheel_runs_from_an_empty_folder_without_the_source_tree(installed, tmp_path):
    env, bindir, log, empty = installed
    where = _run(installed, "python", "-c", "import noisyfr, noisyfr.shipped as s; from noisyfr.demo import "
                 "DEFAULT_CONFIG; print(noisyfr.__file__); print(s.config_path(DEFAULT_CONFIG))").splitlines()
    site = bindir.parent / "lib"
    assert all(Path(w).resolve().is_relative_to(site.resolve()) for w in where), where  # `noisyfr demo`'s config too
    assert _run(installed, "noisyfr", "--version").strip() == f"noisyfr {noisyfr.__version__}"
    listing = _run(installed, "noisyfr", "configs").splitlines()
    root = Path(listing[0].split(" in ", 1)[1])
    assert root.resolve().is_relative_to(site.resolve()) and not root.resolve().is_relative_to(REPO)
    assert [ln.split()[0] for ln in listing[1:]] == (sorted(p.stem for p in CONFIGS.glob("*.yaml"))
                                                     + sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
    for p in [*CONFIGS.glob("*.yaml"), *NOTEBOOKS.glob("*.ipynb")]:  # the same bytes as the repository's
        assert (root / p.parent.name / p.name).read_bytes() == p.read_bytes()
    plan = _run(installed, "noisyfr", "sweep", "demo", "--dry-run")
    assert plan.startswith(f"sweep demo: 12 trials, 4 manifests -> {empty / 'runs' / 'demo'}")
    # one notebook, copied out as a user would, on a tiny sweep made by the installed package
    _run(installed, "noisyfr", "configs", "01_noise_injection", "--out", "nb.ipynb")
    from fabricate import make_synthetic_sweep  # the tests' fabricator (not part of the package)

    make_synthetic_sweep(empty / "sweep", losses=("arcface",), closed_rates=(0.4,), seeds=(0,), num_ids=5,
                         per_id=12, epochs=2)
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(bindir / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "installed noisyfr", "language": "python"}))
    nb_env = {k: v for k, v in env.items() if k != "MPLBACKEND"}  # the notebook draws inline
    nb_env["JUPYTER_PATH"] = str(tmp_path / "jupyter")
    _run(installed, "python", "-m", "papermill", "nb.ipynb", "nb_out.ipynb", "-p", "ANALYSIS_DIR", "sweep",
         "-k", "python3", "--no-progress-bar", env=nb_env)
    done = json.loads((empty / "nb_out.ipynb").read_text())
    outputs = [o for c in done["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})]
    assert not log.exists(), "read from the source tree:\n" + log.read_text()[:3000]


@pytest.mark.slow
def test_the_read_audit_would_see_a_read_of_the_source_tree(installed):
    """The control: the hook records a read inside the source tree when one happens."""
    env, _, log, _ = installed
    _run(installed, "python", "-c", f"open({str(REPO / 'pyproject.toml')!r}).close()")
    try:
        assert log.exists() and str(REPO / "pyproject.toml") in log.read_text()
    finally:
        log.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- parallel runs


def test_every_module_that_starts_ray_or_process_groups_is_in_an_xdist_group():
    """A module that starts Ray, spawns a process group or runs a sweep for real must be listed in
    conftest.XDIST_GROUPS, so that ``-n 2 --dist loadgroup`` never runs two of them at once."""
    from conftest import XDIST_GROUPS

    grouped = {m for mods in XDIST_GROUPS.values() for m in mods}
    starts = re.compile(r"^\s*(import ray|from ray)|ray\.init\(|run_sweep\(|importorskip\(\"ray\"\)|mp\.spawn\("
                        r"|init_process_group\(|torchrun",
                        re.M)
    found = {p.stem for p in (REPO / "tests").glob("test_*.py")
             if p.name != Path(__file__).name and starts.search(p.read_text(encoding="utf-8"))}
    assert found, "the pattern finds nothing: it is broken"
    assert found <= grouped, f"not in an xdist group: {sorted(found - grouped)}"
