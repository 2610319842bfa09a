"""The science grids (docs/science.md) validate as sweeps, pair every loss in both gradient
modes, name a primary comparison of their own grid, and carry the library's matched margin."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from noisyfr.analysis.comparisons import parse_analysis
from noisyfr.analysis.load import condition_label
from noisyfr.data.feature_store import table_of, write_features
from noisyfr.losses import loss_label
from noisyfr.losses.matching import matched_margin
from noisyfr.models.vector import head_label
from noisyfr.tune import spec as sweep_spec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
#: config -> (kappa of its clusters or None, the clean mode its ArcFace is matched at, degrees)
GRIDS = {"science_clusters_k300.yaml": (300, 38), "science_clusters_k80.yaml": (80, 48),
         "science_clusters_k40.yaml": (40, 59), "science_clusters_k17.yaml": (17, 73),
         "science_lfw.yaml": (None, 40)}
LOSSES = {("expface", 0.7), ("arcface", 0.5), ("cosface", 0.35)}


@pytest.fixture(scope="module")
def lfw_like(tmp_path_factory) -> Path:
    """A small 128-d feature file standing in for the dlib features of lfw_ge3."""
    rng = np.random.default_rng(0)
    ids = [f"id{i:02d}" for i in range(8) for _ in range(6)]
    paths = [f"{n}/{k}.jpg" for k, n in enumerate(ids)]
    path = tmp_path_factory.mktemp("feats") / "train.parquet"
    meta = {"model": {"name": "test"}, "preprocessing": {}, "fingerprint": "none"}
    write_features(table_of(paths, ids, rng.normal(size=(len(ids), 128)).astype(np.float32), meta=meta),
                   path)
    return path


def overrides(name: str, feats: Path) -> list[str]:
    return [f"data.train=features:{feats}"] if name == "science_lfw.yaml" else []


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_science_grid_validates_and_matches_the_library(name, lfw_like, tmp_path, capsys):
    from noisyfr.cli import main

    kappa, angle = GRIDS[name]
    over = overrides(name, lfw_like)
    assert main(["sweep", str(CONFIGS / name), "--out", str(tmp_path / "o"), "--dry-run", *over]) == 0
    assert "220 trials" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()

    spec = sweep_spec.load_sweep(CONFIGS / name, over, base_dir=REPO)
    trials = spec.trials
    assert {t.config["seed"] for t in trials} == set(range(10))
    if kappa is not None:
        assert {t.config["data"]["train"] for t in trials} == {
            f"synthetic-features:ids=250,dim=64,kappa={kappa},per_id=20,seed=0"}
    assert {t.noise.closed for t in trials} == {0.2, 0.4}
    # four losses, each in both gradient modes, and the three whose slope falls below 1 once more
    # with the remedy (grad_floor: 1, exact): every one at every seed and noise rate
    modes = {(t.config["loss"]["name"], t.config["loss"]["m"], t.config["loss"]["grad_mode"]) for t in trials
             if "grad_floor" not in t.config["loss"]}
    matched = matched_margin("expface", math.radians(angle), "arcface", {"m": 0.7})
    arc_m = {m for n, m, _ in modes if n == "arcface" and m != 0.5}
    assert len(arc_m) == 1 and arc_m.pop() == pytest.approx(matched, abs=5e-4)
    assert {(n, m) for n, m, _ in modes if (n, m) in LOSSES} == LOSSES
    assert {g for *_, g in modes} == {"exact", "detached"} and len(modes) == 8
    assert not any(t.config["loss"].get("easy_margin") for t in trials)
    remedied = {(t.config["loss"]["name"], t.config["loss"]["m"], t.config["loss"]["grad_mode"],
                 t.config["loss"]["grad_floor"]) for t in trials if "grad_floor" in t.config["loss"]}
    assert {(n, m, g) for n, m, g, _ in remedied} == {(n, m, "exact") for n, m, _ in modes if n != "cosface"}
    assert {f for *_, f in remedied} == {1.0}
    assert len(trials) == 10 * 2 * 11 and len({(t.config["seed"], t.noise.closed, loss_label(t.config["loss"]))
                                                for t in trials}) == len(trials)
    # the config's comment states the angle it was matched at and the value
    text = (CONFIGS / name).read_text()
    assert re.search(rf"--match expface:m=0.7 --at {angle}\b", text)
    # the primary: ExpFace against the matched ArcFace, detached, in a condition of the grid
    primary = parse_analysis(spec.raw["analysis"]).primary
    labels = {loss_label(t.config["loss"]) for t in trials}
    assert primary["a"] == "expface s=32 m=0.7 detached"
    assert primary["b"] in labels and primary["b"].startswith("arcface") and "m=0.5 " not in primary["b"]
    # the condition as the analysis names it: the noise, then the trained head (features runs)
    model = dict(trials[0].config["model"])
    model.setdefault("input_dim", 64 if kappa is not None else None)
    heads = {head_label(model)}
    assert heads in ({"linear 64->64"}, {"linear 128->64"})
    assert primary["condition"] in {f"{condition_label({'closed': t.noise.closed})} {h}" for t in trials for h in heads}


def test_the_paper_scale_science_config_validates_and_names_its_primary(tmp_path, capsys):
    from noisyfr.cli import main

    rec, val = tmp_path / "train.rec", tmp_path / "lfw.bin"
    rec.write_bytes(b"")
    val.write_bytes(b"")
    over = [f"data.train={rec}", f"data.val=[{val}]"]
    name = CONFIGS / "casia_science.yaml"
    assert main(["sweep", str(name), "--out", str(tmp_path / "o"), "--dry-run", *over]) == 0
    assert "66 trials" in capsys.readouterr().out
    spec = sweep_spec.load_sweep(name, over, sweep_dir=tmp_path / "sw")
    losses = {(t.config["loss"]["name"], t.config["loss"]["m"], t.config["loss"]["grad_mode"]) for t in spec.trials
              if "grad_floor" not in t.config["loss"]}
    remedied = {(t.config["loss"]["name"], t.config["loss"]["m"], t.config["loss"]["grad_mode"])
                for t in spec.trials if t.config["loss"].get("grad_floor") == 1.0}
    assert remedied == {(n, m, g) for n, m, g in losses if g == "exact" and n != "cosface"}
    assert len(losses) == 8 and {g for *_, g in losses} == {"exact", "detached"}
    matched = matched_margin("expface", math.radians(45), "arcface", {"m": 0.7})
    assert sorted({m for n, m, _ in losses if n == "arcface"}) == [pytest.approx(matched, abs=5e-4), 0.5]
    primary = parse_analysis(spec.raw["analysis"]).primary
    assert {primary["a"], primary["b"]} <= {loss_label(t.config["loss"]) for t in spec.trials}
    assert primary["condition"] in {condition_label({"closed": t.noise.closed}) for t in spec.trials}
