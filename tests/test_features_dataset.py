"""Datasets of features (``features:PATH``): the index, vector backbones, the references beside a
trained head, verification through features, and a features run through train, sweep, analyze
and clean. Every feature file here is written from a small seeded table in a tmp folder."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import exit_status

from noisyfr.data.feature_store import sidecar_path, table_of, write_features
from noisyfr.errors import NoisyFRError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, PER, DIM = 12, 8, 24
META = {"model": {"name": "test clusters"}, "preprocessing": {}, "fingerprint": "none"}


def clusters(seed: int = 0, c: int = C, per: int = PER, dim: int = DIM, spread: float = 0.5):
    """Identity ``idNN`` has ``per`` samples around its own random direction."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, dim))
    paths, ids, emb = [], [], []
    for i in range(c):
        for k in range(per):
            paths.append(f"id{i:02d}/{k:03d}.jpg")
            ids.append(f"id{i:02d}")
            emb.append(centres[i] + spread * rng.normal(size=dim))
    return paths, ids, np.asarray(emb, dtype=np.float32)


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("feats") / "train.parquet"
    paths, ids, emb = clusters()
    write_features(table_of(paths, ids, emb, meta=META), path)
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """Ten same pairs of identical vectors and ten different pairs of orthogonal ones: the
    frozen model alone verifies all twenty (closed form: cosine 1 vs 0)."""
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    eye = np.eye(DIM, dtype=np.float32)
    emb = np.repeat(eye[:10], 2, axis=0)
    names = [f"p{i}" for i in range(10) for _ in range(2)]
    pairs = [[2 * i, 2 * i + 1, 1] for i in range(10)] + [[2 * i, 2 * ((i + 1) % 10), 0] for i in range(10)]
    write_features(table_of([f"{n}/{i}.jpg" for i, n in enumerate(names)], names, emb,
                            meta={**META, "pairs": pairs}), path)
    return path


def config(feats, out, **over):
    cfg = {"data": {"train": f"features:{feats}", "holdout": 0.25, "noise": {"closed": 0.25}},
           "model": {"backbone": "linear", "embedding_dim": 8},
           "loss": {"name": "arcface", "s": 16, "m": 0.3},
           "optim": {"epochs": 3, "batch_size": 16, "lr": 0.1, "warmup_epochs": 0},
           "device": "cpu", "output_dir": str(out), "seed": 0}
    for key, value in over.items():
        section, _, leaf = key.partition(".")
        cfg.setdefault(section, {})[leaf] = value
    return cfg


# --------------------------------------------------------------------------- the index
def test_feature_index_is_a_face_index_of_vectors(feats):
    from noisyfr.data import open_index
    from noisyfr.noise.manifest import content_fingerprint, fingerprint

    index = open_index(f"features:{feats}")
    paths, ids, emb = clusters()
    assert len(index) == C * PER and index.num_identities == C and index.dim == DIM
    assert list(index.paths) == paths and index.identities == sorted(set(ids))
    assert np.array_equal(index.labels, np.repeat(np.arange(C), PER))
    assert index.vectors
    assert torch.equal(index.load_image(5), torch.from_numpy(emb[5]))  # the raw vector, not normalised
    with pytest.raises(NoisyFRError, match="no images"):
        index.read_bytes(0)
    # the fingerprint: paths and labels as for images; the content: the vectors themselves
    again = open_index(f"features:{feats}")
    assert fingerprint(index) == fingerprint(again)
    assert content_fingerprint(index) == content_fingerprint(again)
    other = table_of(paths, ids, emb + 1e-3, meta=META)
    from noisyfr.data.features import FeatureIndex
    assert content_fingerprint(FeatureIndex.from_table(other, "x")) != content_fingerprint(index)


def test_synthetic_features_specs_open_as_feature_indexes():
    from noisyfr.data import open_index

    index = open_index("synthetic-features:ids=5,dim=8,kappa=50,per_id=4,seed=1")
    assert index.vectors and len(index) == 20 and index.dim == 8 and index.num_identities == 5


@pytest.mark.parametrize("spec, problem", [
    ("features:", "needs a path"),
    ("features:/nonexistent/f.parquet", "no such feature file"),
])
def test_bad_feature_specs_are_one_line(spec, problem):
    from noisyfr.data import open_index

    with pytest.raises(NoisyFRError, match=problem):
        open_index(spec)


def test_nan_embeddings_and_a_pairs_file_as_training_set_are_refused(feats, pairs_file, tmp_path):
    from noisyfr.data import open_index

    with pytest.raises(NoisyFRError, match="verification set"):
        open_index(f"features:{pairs_file}")
    bad = tmp_path / "nan.parquet"
    table = pq.read_table(feats)
    emb = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(-1, DIM).copy()
    emb[3, 2] = np.nan
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), DIM)
    pq.write_table(table.set_column(table.schema.get_field_index("embedding"), "embedding", col), bad)
    sidecar_path(bad).write_text(sidecar_path(feats).read_text())
    with pytest.raises(NoisyFRError, match="NaN or infinity"):
        open_index(f"features:{bad}")


# --------------------------------------------------------------------------- vector backbones
def test_linear_is_a_projection_of_the_unit_input():
    from noisyfr.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("linear", embedding_dim=5, input_dim=7)
    x = torch.randn(6, 7) * 3 + 2
    w = model.fc.weight.detach()
    unit = x / x.norm(dim=1, keepdim=True)
    # training: each dimension standardised with the batch's mean and (biased) variance
    z = (unit - unit.mean(0)) / torch.sqrt(unit.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(model(x), z @ w.t(), atol=1e-5)
    # evaluation: with the running statistics (one momentum-0.1 step from mean 0, var 1)
    model.eval()
    mean, var = 0.1 * unit.mean(0), 0.9 + 0.1 * unit.var(0, unbiased=True)
    assert torch.allclose(model(x), ((unit - mean) / torch.sqrt(var + 1e-5)) @ w.t(), atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == 35  # W only: the standardisation learns nothing


def test_mlp_depth_and_width_set_its_layers():
    from noisyfr.models import create_backbone

    model = create_backbone("mlp", embedding_dim=6, input_dim=10, width=2.0, depth=3)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 20), (20, 20), (20, 6)]
    assert model(torch.randn(5, 10)).shape == (5, 6)
    assert len([m for m in create_backbone("mlp", 6, input_dim=10).modules()
                if isinstance(m, torch.nn.Linear)]) == 2  # default depth 2


@pytest.mark.parametrize("kwargs, problem", [
    ({"name": "linear", "depth": 2, "input_dim": 4}, "linear takes 1..1 layers"),
    ({"name": "mlp", "depth": 1, "input_dim": 4}, "mlp takes 2..8 layers"),
    ({"name": "small_cnn", "depth": 2, "image_size": 32}, "only the vector backbones take a depth"),
    ({"name": "linear", "width": 2.0, "input_dim": 4}, "width"),
    ({"name": "linear"}, "input_dim"),
])
def test_vector_backbone_arguments_are_checked(kwargs, problem):
    from noisyfr.models import create_backbone

    with pytest.raises(NoisyFRError, match=problem):
        create_backbone(embedding_dim=4, **kwargs)


def test_an_image_backbone_on_features_and_a_vector_backbone_on_images_are_one_line(feats, tmp_path):
    from noisyfr.train import load_config

    with pytest.raises(NoisyFRError, match=r"model.backbone.*small_cnn takes images, the data are vectors"):
        load_config(config(feats, tmp_path / "a", **{"model.backbone": "small_cnn", "data.image_size": 32}))
    cfg = config(feats, tmp_path / "b")
    cfg["data"]["train"] = "synthetic:ids=4,per_id=4,size=32,seed=0"
    with pytest.raises(NoisyFRError, match=r"linear takes vectors .* the data are images"):
        load_config(cfg)


def test_a_declared_input_dim_that_differs_from_the_file_is_one_line_and_writes_nothing(feats, tmp_path):
    from noisyfr.io import atomic_write  # noqa: F401 (the CLI path below)

    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    out = tmp_path / "run"
    cfg_path.write_text(yaml.safe_dump(config(feats, out, **{"model.input_dim": DIM + 1})))
    assert exit_status(["train", str(cfg_path)]) == 2
    assert not out.exists()


# --------------------------------------------------------------------------- a features run
@pytest.fixture(scope="module")
def run_dir(feats, pairs_file, tmp_path_factory) -> Path:
    from noisyfr.train import train

    out = tmp_path_factory.mktemp("run") / "r"
    train(config(feats, out, **{"data.val": [f"features:{pairs_file}"]}))
    return out


def test_the_class_means_reference_matches_a_direct_computation(run_dir, feats):
    """Nearest class mean (cosine) of the raw unit features under the run's own noisy labels and
    training rows, computed here with a loop per class from the manifest and the documented split."""
    from noisyfr.noise.manifest import read_manifest
    from noisyfr.train.data import split_identities

    metrics = pd.read_csv(run_dir / "metrics.csv")
    man, _ = read_manifest(run_dir / "manifest.parquet")
    _, _, emb = clusters()
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    given, true = man["label"].to_numpy(), man["orig_label"].to_numpy()
    assert (given != true).any()  # the noise reached some labels
    train_rows, held = split_identities(true, None, 0.25, 0, None)
    means = np.stack([unit[train_rows][given[train_rows] == c].mean(axis=0) for c in range(C)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    expected = float(np.mean(np.argmax(unit[held] @ means.T, axis=1) == true[held]))
    ref = metrics["reference_heldout_accuracy"].to_numpy()
    assert np.allclose(ref, expected) and 0 < expected <= 1  # the same every epoch
    assert metrics["heldout_accuracy"].between(0, 1).all()


def test_verification_through_features_and_the_frozen_model_reference(run_dir):
    metrics = pd.read_csv(run_dir / "metrics.csv")
    last = metrics.iloc[-1]
    assert last["val/pairs/reference_accuracy"] == 1.0  # identical vs orthogonal vectors
    assert last["val_reference_accuracy"] == 1.0
    assert 0.0 <= last["val/pairs/accuracy"] <= 1.0 and math.isfinite(last["val_accuracy"])


def test_a_features_run_records_its_input_dim_and_resumes(run_dir, feats):
    from noisyfr.io import read_yaml
    from noisyfr.train import train

    cfg = read_yaml(run_dir / "config.yaml", "config")
    assert cfg["model"]["input_dim"] == DIM
    before = pd.read_csv(run_dir / "metrics.csv")
    cfg.update(resume=True)
    cfg["optim"]["epochs"] = 4
    train(cfg)
    after = pd.read_csv(run_dir / "metrics.csv")
    assert len(after) == 4 and after["loss"].iloc[:3].tolist() == before["loss"].tolist()


def test_same_seed_same_angles(feats, tmp_path):
    from noisyfr.train import train

    for name in ("a", "b"):
        train(config(feats, tmp_path / name, **{"optim.epochs": 2}))
    a = pd.read_parquet(tmp_path / "a" / "angles" / "epoch_2.parquet")
    b = pd.read_parquet(tmp_path / "b" / "angles" / "epoch_2.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_the_mlp_trains_and_its_depth_is_recorded(feats, tmp_path):
    from noisyfr.train import train

    m = train(config(feats, tmp_path / "m", **{"model.backbone": "mlp", "model.depth": 3,
                                               "model.width": 2.0, "optim.epochs": 2}))
    assert math.isfinite(m["loss"]) and math.isfinite(m["reference_heldout_accuracy"])


# --------------------------------------------------------------------------- sweep, analyze, clean
@pytest.fixture(scope="module")
def sweep_dir(feats, tmp_path_factory) -> Path:
    pytest.importorskip("ray")
    from noisyfr.tune import load_sweep, run_sweep

    cfg = config(feats, "unused", **{"optim.epochs": 2})
    cfg.pop("output_dir")
    cfg.update(name="fs", grid={"loss": [{"name": "arcface", "s": 16, "m": 0.3, "grad_mode": "detached"},
                                          {"name": "expface", "s": 16, "m": 0.7, "grad_mode": "detached"}],
                                 "data.noise.closed": [0.25], "seed": [0, 1]},
               resources={"cpu": 1, "gpu": 0})
    out = tmp_path_factory.mktemp("sweep") / "sw"
    run_sweep(load_sweep(cfg, sweep_dir=out), resume=True)  # --resume on a fresh folder: make lfw-features
    return out


def test_sweep_results_carry_the_reference_beside_the_trained_head(sweep_dir):
    res = pd.read_csv(sweep_dir / "results.csv")
    assert len(res) == 4 and (res["status"] == "completed").all()
    assert res["final_reference_heldout_accuracy"].between(0, 1).all()
    # the same seed: the same noise draw and split, so the same reference for both losses
    by_seed = res.groupby("seed")["final_reference_heldout_accuracy"].nunique()
    assert (by_seed == 1).all()
    assert "Reference beside it" in (sweep_dir / "summary.md").read_text()


def test_analyze_names_the_head_in_the_condition(sweep_dir, tmp_path):
    from noisyfr.cli import main

    out = tmp_path / "report"
    assert main(["analyze", str(sweep_dir), "--out", str(out)]) == 0
    cells = pd.read_csv(out / "tables" / "cells.csv")
    assert set(cells["condition"]) == {f"closed=0.25 linear {DIM}->8"}
    ref = cells[cells["metric"] == "reference_heldout_accuracy"]
    assert len(ref) and ref["n"].min() == 2


def test_clean_reads_a_features_run_and_train_reads_its_manifest(sweep_dir, feats, tmp_path):
    from noisyfr.cli import main
    from noisyfr.noise.manifest import read_manifest
    from noisyfr.train import train

    trial = sorted((sweep_dir / "trials").iterdir())[0]
    out = tmp_path / "clean.parquet"
    assert main(["clean", str(trial), "--out", str(out), "--score", "aum", "--fraction", "0.2"]) == 0
    df, _ = read_manifest(out)
    assert 0 < len(df) < C * PER
    m = train(config(feats, tmp_path / "retrain", **{"data.manifest": str(out), "data.noise": None,
                                                     "optim.epochs": 1}))
    assert math.isfinite(m["heldout_accuracy"]) and math.isfinite(m["reference_heldout_accuracy"])


def test_loop_trains_cleans_and_retrains_over_features(feats, tmp_path):
    import yaml

    from noisyfr.cli import main

    cfg = config(feats, "unused", **{"optim.epochs": 2})
    cfg.pop("output_dir")
    cfg["data"].pop("noise")
    cfg.update(name="floop", loop={"losses": [{"name": "arcface", "s": 16, "m": 0.3, "grad_mode": "detached"}],
                                   "conditions": {"closed=0.25": {"closed": 0.25}}, "seeds": [0],
                                   "rules": [{"score": "aum", "fraction": "heldout"}], "epoch": "last",
                                   "threads": 1})
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["loop", str(path), "--out", str(tmp_path / "loop")]) == 0
    table = pd.read_csv(tmp_path / "loop" / "loop.csv")
    assert list(table["rule"]) == ["noisy", "oracle", "aum fraction=heldout"]
    assert (table["status"] == "ok").all() and table["heldout_accuracy"].between(0, 1).all()


def test_bounded_intervals_stay_inside_a_proportions_range_and_are_the_reports_own():
    import scipy.stats as sps

    from noisyfr.analysis.regime_table import bounded_interval
    from noisyfr.analysis.seeds import interval

    values = [0.99, 0.995, 0.97, 1.0, 0.985]
    mean, lo, hi, n = bounded_interval(values, "p")
    assert n == 5 and mean == pytest.approx(np.mean(values)) and 0 < lo < mean < hi < 1
    ref = interval(values, bounded=True)  # the one definition (tests/test_seeds.py checks its closed form)
    assert (lo, hi) == (ref["lo"], ref["hi"])
    angles = [40.0, 44.0, 47.0, 41.0, 43.0]
    _, alo, ahi, _ = bounded_interval(angles, "deg")
    assert (alo, ahi) == pytest.approx(sps.t.interval(0.95, 4, loc=np.mean(angles), scale=sps.sem(angles)))
    assert math.isnan(bounded_interval([0.5], "p")[1])


def test_the_regime_table_of_a_features_sweep(sweep_dir, tmp_path):
    from noisyfr.analysis.regime_table import regime_table
    from noisyfr.cli import main

    out = tmp_path / "report"
    assert main(["analyze", str(sweep_dir), "--out", str(out)]) == 0
    table = regime_table(out)
    assert len(table) == 2 and (table["n"] == 2).all()
    assert table["class-means reference"].str.match(r"^\d\.\d{3}( \[|$)").all()


def test_inject_over_a_features_dataset_and_never_onto_it(feats, tmp_path):
    import hashlib

    from noisyfr.noise.manifest import read_manifest

    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    before = (digest(feats), digest(sidecar_path(feats)))
    for out in (feats, sidecar_path(feats)):
        assert exit_status(["inject", f"features:{feats}", "--out", str(out), "--closed", "0.3"]) == 2
    assert (digest(feats), digest(sidecar_path(feats))) == before
    out = tmp_path / "m.parquet"
    assert exit_status(["inject", f"features:{feats}", "--out", str(out), "--closed", "0.3"]) == 0
    df, meta = read_manifest(out)
    assert len(df) == C * PER and (df["noise"] == "closed").mean() == pytest.approx(0.3, abs=0.02)
    assert meta["fingerprint"]["content"]  # the vectors' hash, as a folder's records its pixels


def test_eval_loads_a_features_checkpoint_and_verifies_features(run_dir, pairs_file, capsys):
    from noisyfr.eval.checkpoint import load_backbone

    model, _ = load_backbone(run_dir / "checkpoints" / "last.pt")
    assert model.fc.in_features == DIM and model.fc.out_features == 8
    assert exit_status(["eval", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
                        "--val", f"features:{pairs_file}"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pairs ")]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    acc = 100 * metrics["val/pairs/accuracy"].dropna().iloc[-1]  # the trainer's own evaluation
    assert row and f"{acc:.2f} +-" in row[0]


def test_a_pairs_file_of_another_dimension_than_the_model_is_one_line(run_dir, tmp_path):
    other = tmp_path / "p7.parquet"
    emb = np.repeat(np.eye(7, dtype=np.float32), 2, axis=0)[:12]
    names = [f"q{i // 2}" for i in range(12)]
    pairs = [[2 * i, 2 * i + 1, 1] for i in range(6)] + [[2 * i, 2 * ((i + 1) % 6), 0] for i in range(6)]
    write_features(table_of([f"{n}/{i}.jpg" for i, n in enumerate(names)], names, emb,
                            meta={**META, "pairs": pairs}), other)
    assert exit_status(["eval", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
                        "--val", f"features:{other}"]) == 2


def test_head_capacity_is_a_grid_axis(feats, tmp_path):
    from noisyfr.tune import load_sweep

    cfg = config(feats, "unused", **{"model.backbone": "mlp"})
    cfg.pop("output_dir")
    cfg.update(name="cap", grid={"model.depth": [2, 3], "model.width": [1.0, 4.0], "seed": [0]})
    spec = load_sweep(cfg, sweep_dir=tmp_path / "cap")
    assert sorted((t.config["model"]["depth"], t.config["model"]["width"]) for t in spec.trials) == \
        [(2, 1.0), (2, 4.0), (3, 1.0), (3, 4.0)]
    cfg["grid"] = {"model.depth": [2, 9]}
    with pytest.raises(NoisyFRError, match=r"model.depth.*mlp takes 2..8 layers, got 9"):
        load_sweep(cfg, sweep_dir=tmp_path / "cap2")
