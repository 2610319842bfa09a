"""The analysis notebooks run top to bottom under papermill, with their parameters cell set to a
tiny synthetic sweep, and draw their figures inline from the API."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from fabricate import make_synthetic_sweep

NB_DIR = Path(__file__).resolve().parents[1] / "experiments" / "notebooks"
NOTEBOOKS = ["01_noise_injection.ipynb", "02_angle_analysis.ipynb"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    return make_synthetic_sweep(tmp_path_factory.mktemp("nbsweep") / "sw", losses=("arcface", "expface"),
                                closed_rates=(0.0, 0.4), seeds=(0,), num_ids=5, per_id=12, epochs=2)


@pytest.fixture()
def venv_kernel(tmp_path, monkeypatch):
    """A 'python3' kernelspec that runs this interpreter (the venv's), found first via JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "noisyfr venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebooks choose the inline backend
    return "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_under_papermill_and_draws_inline(name, tiny_sweep, venv_kernel, tmp_path):
    papermill = pytest.importorskip("papermill")
    nb = nbformat.read(NB_DIR / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "ANALYSIS_DIR" in tagged[0].source
    assert "environ" not in "".join(c.source for c in nb.cells)  # parameters come from papermill
    out = tmp_path / name
    papermill.execute_notebook(str(NB_DIR / name), str(out), parameters={"ANALYSIS_DIR": str(tiny_sweep)},
                               kernel_name=venv_kernel, cwd=str(tmp_path), progress_bar=False)
    done = nbformat.read(out, as_version=4)
    outputs = [o for c in done.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert f"analysing {tiny_sweep}" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # figures drawn inline, not read back from files
    assert not list(tmp_path.glob("**/*.png"))  # nothing was written to disk
    if name.startswith("02"):
        html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
        assert "disagreement_rate" in html and "accuracy_mean" in html
        assert "4 of 4 runs learned" in text
