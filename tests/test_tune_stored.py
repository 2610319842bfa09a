"""``noisyfr sweep --resume --out SWEEP_DIR`` rebuilds a sweep from ``sweep.json`` alone: the same
trials, under the same names, for every shipped sweep config (no Ray: the spec and state layer)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from noisyfr import cli
from noisyfr.demo import DEFAULT_CONFIG
from noisyfr.errors import NoisyFRError
from noisyfr.io import read_yaml
from noisyfr.shipped import config_path
from noisyfr.tune import run
from noisyfr.tune import spec as sweep_spec

REPO = Path(__file__).resolve().parents[1]
SWEEP_CONFIGS = sorted(p for p in (REPO / "experiments").rglob("*.yaml")
                       if isinstance(read_yaml(p), dict) and "grid" in read_yaml(p))


def _stored_and_fresh(path: Path, out: Path, write=None):
    """The spec of ``path`` (manifests planned) and the spec rebuilt from the sweep.json it wrote."""
    spec = sweep_spec.load_sweep(path, sweep_dir=out, base_dir=REPO, validate=False)
    sweep_spec.plan_manifests(spec)
    (write or run.write_state)(spec)
    again = sweep_spec.load_stored_sweep(out, validate=False)
    sweep_spec.plan_manifests(again)
    return spec, again


def test_every_shipped_sweep_config_is_found():
    names = {p.name for p in SWEEP_CONFIGS}
    assert {"demo.yaml", "lfw_demo.yaml", "grad_mode.yaml", "casia_closed.yaml", "casia_open.yaml",
            "casia_expface.yaml", "casia_arcface_torch.yaml", "science.yaml", "lfw_all.yaml"} <= names
    assert config_path(DEFAULT_CONFIG) in SWEEP_CONFIGS   # what `noisyfr demo` sweeps


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=lambda p: p.stem)
def test_shipped_sweep_rebuilds_from_its_directory(tmp_path, path):
    spec, again = _stored_and_fresh(path, tmp_path / "out")
    assert [t.name for t in again.trials] == [t.name for t in spec.trials]
    assert [t.config for t in again.trials] == [t.config for t in spec.trials]
    assert [t.values for t in again.trials] == [t.values for t in spec.trials]
    assert [t.manifest for t in again.trials] == [t.manifest for t in spec.trials]
    assert run._state_json(again) == run._state_json(spec)
    # the resume check passes for the directory-only spec and for the spec from the config file
    run._check_state(again, run._state_json(again), resume=True)
    run._check_state(spec, run._state_json(spec), resume=True)
    # names of a mapping axis list the keys in the config's order (today's names, kept)
    mapping_axes = [k for k, v in spec.axes.items() if isinstance(v[0], dict)]
    for t in again.trials:
        for key in mapping_axes:
            first = next(iter(t.values[key].values()))
            assert f"{key.rsplit('.', 1)[-1]}={first}" in t.name, t.name


def test_demo_trial_names_are_those_of_the_config_file(tmp_path):
    _, again = _stored_and_fresh(config_path(DEFAULT_CONFIG), tmp_path / "out")
    assert [t.name for t in again.trials][:2] == ["000_loss=arcface-s32-m0.5-detached_closed=0_seed=0",
                                                  "001_loss=arcface-s32-m0.5-detached_closed=0_seed=1"]
    raw = json.loads((tmp_path / "out" / sweep_spec.STATE_FILE).read_text())["source"]["raw"]
    assert list(raw["grid"]) == ["loss", "data.noise.closed", "seed"]
    assert list(raw["grid"]["loss"][0]) == ["name", "s", "m", "grad_mode"]


def _write_sorted(spec):
    """sweep.json as written before it kept the config's key order (json.dump(..., sort_keys=True))."""
    path = spec.sweep_dir / sweep_spec.STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"state": run._state_json(spec), "source": {"raw": spec.raw, "base_dir":
                                                                              spec.base_dir}},
                               sort_keys=True, indent=1, default=str))


@pytest.mark.parametrize("name", ["demo.yaml", "grad_mode.yaml"])
def test_a_sorted_sweep_json_keeps_the_names_it_ran_under(tmp_path, name):
    spec, again = _stored_and_fresh(REPO / "experiments" / "configs" / name, tmp_path / "out",
                                    write=_write_sorted)
    assert [t.name for t in again.trials] == [t.name for t in spec.trials]
    assert [t.config for t in again.trials] == [t.config for t in spec.trials]
    run._check_state(again, run._state_json(again), resume=True)


def test_state_comparison_ignores_key_order_but_not_values(tmp_path):
    path = REPO / "experiments" / "configs" / "grad_mode.yaml"
    spec, _ = _stored_and_fresh(path, tmp_path / "out", write=_write_sorted)
    run._check_state(spec, run._state_json(spec), resume=True)   # sorted file, same sweep: accepted
    longer = sweep_spec.load_sweep(path, ["optim.epochs=17"], sweep_dir=tmp_path / "out", base_dir=REPO,
                                   validate=False)
    sweep_spec.plan_manifests(longer)
    with pytest.raises(NoisyFRError, match=r"config differs .*trial 000_loss=arcface-s32-m0.5_grad_mode"
                                           r"=exact_closed=0 differs"):
        run._check_state(longer, run._state_json(longer), resume=True)
    fewer = sweep_spec.load_sweep(path, ["grid.seed=[3]", "grid.data.noise.closed=[0.4]"],
                                  sweep_dir=tmp_path / "out", base_dir=REPO, validate=False)
    sweep_spec.plan_manifests(fewer)
    with pytest.raises(NoisyFRError, match="config differs .*8 trials stored, 4 now"):
        run._check_state(fewer, run._state_json(fewer), resume=True)


def test_sweep_resume_dry_run_from_the_directory_lists_the_config_files_trials(tmp_path, capsys,
                                                                               monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    spec = sweep_spec.load_sweep(config_path(DEFAULT_CONFIG), sweep_dir=out)
    sweep_spec.plan_manifests(spec)
    run.write_state(spec)
    assert cli.main(["sweep", DEFAULT_CONFIG, "--out", str(out), "--dry-run"]) == 0
    from_config = capsys.readouterr().out
    monkeypatch.chdir(tmp_path)    # from the directory alone, anywhere
    assert cli.main(["sweep", "--resume", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out == from_config
    assert "000_loss=arcface-s32-m0.5-detached_closed=0_seed=0  manifest=" in from_config


def test_stored_state_that_is_not_a_sweep_is_one_line(tmp_path, capsys):
    (tmp_path / sweep_spec.STATE_FILE).write_text(json.dumps({"state": {}, "source": {"raw": [1],
                                                                                         "base_dir": "."}}))
    assert cli.main(["sweep", "--resume", "--out", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "source.raw is not a mapping" in err and str(tmp_path) in err
