"""Sweep config expansion, validation, manifest dedup keys and results/summary tables (no Ray)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from noisyfr.errors import NoisyFRError
from noisyfr.noise import NoiseSpec
from noisyfr.tune import results, run, trainable
from noisyfr.tune import spec as sweep_spec

SYN = "synthetic:ids=6,per_id=4,size=32,seed=0"


def base(**extra):
    cfg = {
        "name": "t",
        "device": "cpu",
        "data": {"train": SYN, "image_size": 32},
        "model": {"backbone": "small_cnn", "embedding_dim": 16},
        "loss": {"name": "arcface", "s": 16, "m": 0.5},
        "optim": {"lr": 0.05, "batch_size": 8, "epochs": 2},
        "grid": {"loss.name": ["arcface", "cosface"], "data.noise.closed": [0.0, 0.4], "seed": [0, 1, 2]},
    }
    noise = extra.pop("noise", {"closed": 0.0})
    if noise is not None:
        cfg["data"]["noise"] = noise
    cfg.update(extra)
    return cfg


def test_grid_is_the_cartesian_product(tmp_path):
    spec = sweep_spec.load_sweep(base(), sweep_dir=tmp_path)
    assert len(spec.trials) == 2 * 2 * 3
    combos = {(t.config["loss"]["name"], t.noise.closed, t.config["seed"]) for t in spec.trials}
    assert combos == {(loss, c, s) for loss in ("arcface", "cosface") for c in (0.0, 0.4) for s in (0, 1, 2)}
    names = [t.name for t in spec.trials]
    assert len(set(names)) == len(names)
    for t in spec.trials:
        # every trial writes into its own directory under SWEEP_DIR/trials
        assert t.config["output_dir"] == str(tmp_path.resolve() / "trials" / t.name)
        # loss parameters not on an axis come from the base config
        assert t.config["loss"]["s"] == 16
        # the noise seed follows the trial seed unless data.noise.seed is given
        assert t.noise.seed == t.config["seed"] == t.config["data"]["noise"]["seed"]
        assert "grid" not in t.config and "noise" not in t.config


def test_device_follows_the_gpu_resources(tmp_path):
    cfg = base(device="auto", grid={"seed": [0]})
    assert sweep_spec.load_sweep(cfg, sweep_dir=tmp_path).trials[0].config["device"] == "cpu"
    cfg["resources"] = {"gpu": 0.5}
    assert sweep_spec.load_sweep(cfg, sweep_dir=tmp_path).trials[0].config["device"] == "auto"


def test_mapping_axis_replaces_a_whole_section(tmp_path):
    cfg = base(grid={"loss": [{"name": "arcface", "s": 8, "m": 0.3}, {"name": "softmax"}]})
    spec = sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)
    assert [t.config["loss"] for t in spec.trials] == [{"name": "arcface", "s": 8, "m": 0.3},
                                                        {"name": "softmax"}]


@pytest.mark.parametrize("order", ["section first", "key first"])
def test_section_axis_applies_before_keys_inside_it(tmp_path, order):
    losses = [{"name": "arcface", "s": 32, "m": 0.5}, {"name": "expface", "s": 32, "m": 0.7}]
    axes = [("loss", losses), ("loss.grad_mode", ["exact", "detached"])]
    grid = dict(axes if order == "section first" else axes[::-1])
    spec = sweep_spec.load_sweep(base(grid=grid), sweep_dir=tmp_path)
    got = sorted((t.config["loss"]["name"], t.config["loss"]["grad_mode"]) for t in spec.trials)
    assert got == [("arcface", "detached"), ("arcface", "exact"), ("expface", "detached"), ("expface", "exact")]
    assert all(t.config["loss"]["s"] == 32 for t in spec.trials)
    names = " ".join(t.name for t in spec.trials)
    assert "loss=arcface-s32-m0.5" in names and "grad_mode=detached" in names


def test_nested_grid_mapping_is_flattened(tmp_path):
    spec = sweep_spec.load_sweep(base(grid={"optim": {"lr": [0.1, 0.01]}}), sweep_dir=tmp_path)
    assert [t.config["optim"]["lr"] for t in spec.trials] == [0.1, 0.01]
    assert spec.trials[0].config["optim"]["batch_size"] == 8


def test_overrides_set_keys_and_axes(tmp_path):
    spec = sweep_spec.load_sweep(base(), ["optim.epochs=5", "grid.seed=[7]", ("grid.loss.name", ["cosface"])],
                         sweep_dir=tmp_path)
    assert len(spec.trials) == 2
    assert {t.config["seed"] for t in spec.trials} == {7}
    assert all(t.config["optim"]["epochs"] == 5 for t in spec.trials)


def test_relative_paths_are_resolved(tmp_path):
    (tmp_path / "faces" / "a").mkdir(parents=True)
    (tmp_path / "faces" / "a" / "1.png").write_bytes(b"x")
    (tmp_path / "pairs.txt").write_text("1\t1\n")
    cfg = base()
    cfg["data"] = {"train": "faces", "val": ["pairs.txt"], "image_size": 32}
    spec = sweep_spec.load_sweep(cfg, sweep_dir="out", base_dir=tmp_path, validate=False)
    t = spec.trials[0]
    assert t.config["data"]["train"] == str(tmp_path / "faces")
    assert t.config["data"]["val"] == [str(tmp_path / "pairs.txt")]
    assert spec.sweep_dir == tmp_path / "out"


@pytest.mark.parametrize("cfg, match", [
    (base(grid={}), "grid.*empty grid"),
    (base(grid=None), "grid.*empty grid"),
    (base(grid={"seed": []}), "grid.seed.*empty axis"),
    (base(grid={"seed": 3}), "grid.seed.*non-empty list"),
    (base(grid={"data.noise.clozed": [0.1]}), "grid.data.noise.clozed.*unknown noise key"),
    (base(grid={"noise.closed": [0.1]}), "grid.noise.closed.*moved to data.noise"),
    (dict(base(noise=None), noise={"closed": 0.1}), "sweep key 'noise'.*moved to data.noise"),
    (base(grid={"output_dir": ["a", "b"]}), "grid.output_dir"),
    (base(resources={"cpu": 0}), "resources.cpu.*> 0"),
    (base(resources={"tpu": 1}), "resources.tpu.*unknown"),
    (base(resources={"gpu": 1.5}), "resources.gpu.*fractions"),
    (base(workers_per_trial=0), "workers_per_trial"),
    (base(noise={"closed": 1.5}, grid={"seed": [0]}), r"data.noise.closed: must be in \[0, 1\], got 1.5"),
    (base(grid={"data.noise.closed": [0.1, -0.1]}), r"data.noise.closed: must be in \[0, 1\], got -0.1"),
    (base(grid={"optim.lr": [0.1, float("nan")]}), r"trial 001_.*optim\.lr.: expected a finite number, got nan"),
    (base(grid={"optim.lr": ["-Infinity"]}), r"optim\.lr.: expected a finite number, got .-Infinity."),
    (base(noise={"closed": 0.6, "open": 0.6, "holdout_ids": 2}, grid={"seed": [0]}), "noise.*sum to 1.2"),
    (base(noise={"open": 0.2}, grid={"seed": [0]}), "data.noise.open.*outliers"),
    (base(noise={"closed_mode": "random"}), "data.noise.closed_mode"),
])
def test_bad_sweep_keys(tmp_path, cfg, match):
    with pytest.raises(NoisyFRError, match=match):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)


def test_unknown_training_key_is_reported_with_the_trial(tmp_path):
    cfg = base()
    cfg["optim"]["lrr"] = 0.1
    with pytest.raises(NoisyFRError, match=r"trial 000_.*optim\.lrr.*unknown key"):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)
    # an axis value that only some trials get is caught too (here a bad loss parameter)
    cfg = base(grid={"loss": [{"name": "arcface", "m": 0.5}, {"name": "cosface", "mm": 0.3}]})
    with pytest.raises(NoisyFRError, match=r"trial 001_"):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)


def test_missing_dataset_is_an_error(tmp_path):
    cfg = base()
    cfg["data"]["train"] = str(tmp_path / "nope")
    with pytest.raises(NoisyFRError, match="data.train .*nope.*does not exist"):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)
    cfg = base()
    cfg["data"]["val"] = [str(tmp_path / "pairs.txt")]
    with pytest.raises(NoisyFRError, match="data.val .*pairs.txt"):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    cfg = base()
    cfg["data"]["train"] = str(tmp_path / "empty")
    with pytest.raises(NoisyFRError, match="empty folder"):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)


def test_noise_section_and_manifest_conflict(tmp_path):
    cfg = base()
    cfg["data"]["manifest"] = "m.parquet"
    with pytest.raises(NoisyFRError, match="data.manifest.*data.noise"):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path, validate=False)


def test_manifests_are_shared_by_noise_setting_and_seed(tmp_path):
    spec = sweep_spec.load_sweep(base(), sweep_dir=tmp_path)
    groups = sweep_spec.plan_manifests(spec)
    # 2 noise rates x 3 seeds; the two losses share each manifest
    assert len(groups) == 6
    for _, (_, _noise, trials) in groups.items():
        assert {t.config["loss"]["name"] for t in trials} == {"arcface", "cosface"}
        assert len({t.manifest for t in trials}) == 1
        assert all(t.config["data"]["manifest"] == t.manifest for t in trials)
    paths = {t.manifest for t in spec.trials}
    assert len(paths) == 6 and all(p.startswith(str(tmp_path.resolve() / "manifests")) for p in paths)
    # the key depends on every noise setting and on the dataset
    n = NoiseSpec(seed=0)
    k = sweep_spec.manifest_key(SYN, n)
    assert sweep_spec.manifest_key(SYN, NoiseSpec(seed=0)) == k
    assert sweep_spec.manifest_key(SYN, n.replace(seed=1)) != k
    assert sweep_spec.manifest_key(SYN, n.replace(closed_mode="pairwise")) != k
    assert sweep_spec.manifest_key(SYN.replace("seed=0", "seed=1"), n) != k
    # an explicit data.noise.seed decouples the manifest from the training seed
    spec = sweep_spec.load_sweep(base(noise={"closed": 0.0, "seed": 5}), sweep_dir=tmp_path)
    assert len(sweep_spec.plan_manifests(spec)) == 2


def _history(losses, vals, aucs, clean=1.0, noisy=1.2, learned=True):
    return pd.DataFrame({"epoch": np.arange(1, len(losses) + 1), "loss": losses,
                         "val_accuracy": vals, "noisy_auc": aucs,
                         "theta_clean_mean": clean, "theta_noisy_mean": noisy,
                         "clean_true_accuracy": 0.9 if learned else 0.1, "learned": learned})


def test_summarize_trial_final_and_best():
    h = _history([3.0, 2.0, 1.5], [0.6, 0.8, 0.7], [0.5, 0.9, 0.85])
    s = results.summarize_trial(h, None)
    assert s["status"] == "completed" and s["epochs"] == 3
    assert s["final_loss"] == 1.5 and s["final_val_accuracy"] == 0.7
    assert s["best_val_accuracy"] == 0.8 and s["best_epoch"] == 2 and s["best_noisy_auc"] == 0.9
    assert s["final_theta_gap_deg"] == pytest.approx(math.degrees(0.2))
    # a resumed trial may report an epoch twice: the last report wins
    h2 = pd.concat([h.iloc[:2], h.iloc[1:]], ignore_index=True)
    h2.loc[2, "loss"] = 1.9
    assert results.summarize_trial(h2, None)["final_loss"] == 1.5
    assert results.summarize_trial(h2, None)["epochs"] == 3


def test_summarize_failed_and_errored_trials():
    h = _history([3.0], [0.5], [0.5])
    h = pd.concat([h, pd.DataFrame({"failed": [True], "error": ["non-finite loss at epoch 2"]})],
                  ignore_index=True)
    s = results.summarize_trial(h, None)
    assert s["status"] == "failed" and "non-finite" in s["error"] and s["epochs"] == 1
    s = results.summarize_trial(None, "RuntimeError: worker died")
    assert s["status"] == "error" and s["error"] == "RuntimeError: worker died"
    # a trial that never reported (never started) is not counted as completed
    assert results.summarize_trial(None, None)["status"] == "pending"


def test_results_fill_the_epochs_tune_lost_from_the_run_directory(tmp_path):
    """A driver killed between two of Tune's copies of a trial's history loses its latest rows (or
    all of them); the run directory's metrics.csv, written after each epoch, gives them back."""
    spec = sweep_spec.load_sweep(base(grid={"seed": [0, 1, 2, 3]}), sweep_dir=tmp_path)
    full = _history([3.0, 2.0, 1.5, 1.2], [0.6, 0.8, 0.7, 0.75], [0.5, 0.9, 0.85, 0.8])
    a, b, c, d = spec.trials
    for t in (a, b, c):
        out = Path(t.config["output_dir"])
        out.mkdir(parents=True)
        full.assign(checkpoint=str(out / "last.pt")).to_csv(out / "metrics.csv", index=False)
    where = {"hostname": "node-a", "node_id": "n1", "world_size": 1}
    hist = {a.name: (full.iloc[:2].assign(**where), None),   # the last two epochs lost
            b.name: (None, None),                            # every row lost
            c.name: (full.assign(**where), None),            # nothing lost
            d.name: (None, None)}                            # never ran: no run directory
    df = results.results_table(spec, hist).set_index("trial")
    for t in (a, b, c):
        row = df.loc[t.name]
        assert row["status"] == "completed" and row["epochs"] == 4, row
        assert row["final_loss"] == 1.2 and row["best_val_accuracy"] == 0.8 and row["best_epoch"] == 2
    assert df.loc[a.name, "hostname"] == "node-a" and df.loc[c.name, "hostname"] == "node-a"
    assert df.loc[d.name, "status"] == "pending" and df.loc[d.name, "epochs"] == 0
    # Tune's own rows win over the run directory's for the epochs it has
    hist[c.name] = (full.assign(loss=[9.0, 9.0, 9.0, 8.0], **where), None)
    assert results.results_table(spec, hist).set_index("trial").loc[c.name, "final_loss"] == 8.0


def test_results_table_and_summary_statistics(tmp_path):
    spec = sweep_spec.load_sweep(base(), sweep_dir=tmp_path)
    sweep_spec.plan_manifests(spec)
    rng = np.random.default_rng(0)
    hist, finals = {}, {}
    for t in spec.trials:
        acc = float(rng.uniform(0.5, 1.0))
        finals[t.name] = acc
        auc = float("nan") if t.noise.closed == 0 else float(rng.uniform(0.5, 1))
        hist[t.name] = (_history([2.0, 1.0], [acc - 0.1, acc], [auc, auc]), None)
    bad = spec.trials[-1].name
    hist[bad] = (None, "RuntimeError: boom")
    # one cosface trial at closed=0.4 completes without learning: left out of the means, counted
    unlearned = next(t.name for t in spec.trials if t.config["loss"]["name"] == "cosface"
                     and t.noise.closed == 0.4 and t.name != bad)
    hist[unlearned] = (_history([2.0, 1.0], [0.3, 0.2], [0.5, 0.5], learned=False), None)
    df = results.results_table(spec, hist)
    assert not df.set_index("trial").loc[unlearned, "learned"]
    assert not df.set_index("trial").loc[bad, "learned"]
    assert list(df["trial"]) == [t.name for t in spec.trials]
    for col in ("loss.name", "data.noise.closed", "seed", "status", "final_val_accuracy", "best_val_accuracy",
                "final_noisy_auc", "output_dir", "manifest"):
        assert col in df.columns
    assert (df["status"] == "completed").sum() == len(spec.trials) - 1
    assert df.set_index("trial").loc[bad, "status"] == "error"
    results.write_results(df, tmp_path, spec)
    back = pd.read_parquet(tmp_path / "results.parquet")
    assert len(back) == len(df) and list(back.columns) == list(df.columns)
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(df)
    md = (tmp_path / "summary.md").read_text()
    # recompute one cell independently: cosface at closed=0.4 over the completed seeds
    sel = [t for t in spec.trials if t.config["loss"]["name"] == "cosface" and t.noise.closed == 0.4
           and t.name not in (bad, unlearned)]
    vals = [finals[t.name] for t in sel]
    if len(vals) > 1:  # an accuracy: the t-interval on the logit scale, shown in %
        import math

        from scipy.stats import t as student

        m = statistics.mean(vals)
        half = student.ppf(0.975, len(vals) - 1) * statistics.stdev(vals) / len(vals) ** 0.5 / (m * (1 - m))
        lo, hi = (100 / (1 + math.exp(-(math.log(m / (1 - m)) + k * half))) for k in (-1, 1))
        expect = f"learned {100 * m:.2f} [{lo:.2f}, {hi:.2f}] n={len(vals)}"
    else:
        expect = f"learned {100 * vals[0]:.2f} n=1"
    line = next(ln for ln in md.split("## Verification accuracy, last epoch")[1].splitlines()
                if ln.startswith("| cosface"))
    assert expect in line
    counts = next(ln for ln in md.split("## Trials that learned")[1].splitlines()
                  if ln.startswith("| cosface"))
    n_cell = len([t for t in spec.trials if t.config["loss"]["name"] == "cosface"
                  and t.noise.closed == 0.4 and t.name != bad])
    assert f"| {n_cell - 1}/{n_cell} |" in counts
    assert f"`{unlearned}` (cosface" in md.split("## Completed trials that did not learn")[1]
    header = next(ln for ln in md.splitlines() if ln.startswith("| loss |"))
    assert "closed=0" in header and "closed=0.4" in header
    assert f"`{bad}`: error: RuntimeError: boom" in md


def test_sample_rate_is_a_grid_axis_with_its_own_loss_label(tmp_path):
    cfg = base(grid={"loss.sample_rate": [1.0, 0.1], "loss.name": ["arcface", "boundaryface"]})
    with pytest.raises(NoisyFRError, match="loss.sample_rate.*Partial FC cannot train loss "
                                           "boundaryface"):
        sweep_spec.load_sweep(cfg, sweep_dir=tmp_path)
    spec = sweep_spec.load_sweep(base(grid={"loss.sample_rate": [1.0, 0.1], "seed": [0]}),
                                 sweep_dir=tmp_path)
    assert sorted(t.config["loss"]["sample_rate"] for t in spec.trials) == [0.1, 1.0]
    df = results.results_table(spec, {t.name: (_history([1.0], [0.9], [0.6]), None)
                                      for t in spec.trials})
    assert sorted(df["loss.sample_rate"]) == [0.1, 1.0]
    assert sorted(df["loss.label"]) == ["arcface s=16 m=0.5 sample_rate=0.1 exact",
                                        "arcface s=16 m=0.5 sample_rate=1 exact"]


def test_stored_sweep_round_trip(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(base()))
    spec = sweep_spec.load_sweep(p, ["grid.seed=[0]"], sweep_dir=tmp_path / "out")
    sweep_spec.plan_manifests(spec)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / sweep_spec.STATE_FILE).write_text(json.dumps(
        {"state": run._state_json(spec), "source": {"raw": spec.raw, "base_dir": spec.base_dir}}))
    again = sweep_spec.load_stored_sweep(tmp_path / "out")
    sweep_spec.plan_manifests(again)
    assert run._state_json(again) == run._state_json(spec)
    with pytest.raises(NoisyFRError, match="no sweep.json"):
        sweep_spec.load_stored_sweep(tmp_path)


def test_clean_metrics_keeps_scalars():
    m = trainable.clean_metrics({"epoch": np.int64(3), "loss": np.float32(1.5), "checkpoint": "/x/last.pt",
                          "arr": np.zeros(3), "name": "a", "nan": float("nan")})
    assert m["epoch"] == 3 and isinstance(m["epoch"], int)
    assert m["loss"] == 1.5 and m["checkpoint_path"] == "/x/last.pt" and "arr" not in m
    assert math.isnan(m["nan"])


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"


def test_demo_config_is_valid_and_small():
    spec = sweep_spec.load_sweep(CONFIGS / "demo.yaml", base_dir=REPO)
    losses = {t.config["loss"]["name"] for t in spec.trials}
    assert {"arcface", "cosface", "expface"} <= losses
    assert {t.noise.closed for t in spec.trials} == {0.0, 0.4}
    assert spec.sweep_dir == REPO / "runs" / "demo"
    assert spec.resources == {"cpu": 1.0, "gpu": 0.0}
    assert all(t.config["data"]["train"].startswith("synthetic:") for t in spec.trials)
    assert all(t.config["device"] == "cpu" for t in spec.trials)


def test_grad_mode_config_compares_exact_and_detached_for_arcface_and_expface():
    spec = sweep_spec.load_sweep(CONFIGS / "grad_mode.yaml", base_dir=REPO)
    combos = {(t.config["loss"]["name"], t.config["loss"]["grad_mode"], t.noise.closed) for t in spec.trials}
    assert combos == {(n, g, c) for n in ("arcface", "expface") for g in ("exact", "detached")
                      for c in (0.0, 0.4)}
    demo = sweep_spec.load_sweep(CONFIGS / "demo.yaml", base_dir=REPO)
    # the same regime as the demo: only the gradient mode differs
    for key in ("data", "model", "optim"):
        assert spec.trials[0].config[key] == demo.trials[0].config[key]


def test_lfw_demo_config_points_at_the_shared_data(lfw_train_dir, lfw_pairs_file):
    spec = sweep_spec.load_sweep(CONFIGS / "lfw_demo.yaml", base_dir=REPO)
    t = spec.trials[0]
    assert __import__("os").path.samefile(t.config["data"]["train"], lfw_train_dir)
    assert __import__("os").path.samefile(t.config["data"]["val"][0], lfw_pairs_file)
    assert len(spec.trials) == 6


def test_lfw_all_config_caps_and_holds_out_the_shared_faces(lfw_train_all_dir, lfw_pairs_file):
    spec = sweep_spec.load_sweep(CONFIGS / "lfw_all.yaml", base_dir=REPO)
    t = spec.trials[0]
    assert __import__("os").path.samefile(t.config["data"]["train"], lfw_train_all_dir)
    assert __import__("os").path.samefile(t.config["data"]["val"][0], lfw_pairs_file)
    assert t.config["data"]["max_per_id"] == 40 and t.config["data"]["holdout"] == 0.25
    assert len(spec.trials) == 18 and {tr.config["seed"] for tr in spec.trials} == {0, 1, 2}


def test_science_grid_pairs_every_loss_in_both_gradient_modes():
    spec = sweep_spec.load_sweep(CONFIGS / "science.yaml", base_dir=REPO)
    combos = {(t.config["loss"]["name"], t.config["loss"]["grad_mode"]) for t in spec.trials}
    assert combos == {(n, g) for n in ("arcface", "cosface", "expface") for g in ("exact", "detached")}
    assert len(spec.trials) == 160 and {t.config["seed"] for t in spec.trials} == set(range(10))
    # the primary comparison names two losses and a condition of the grid
    from noisyfr.analysis.comparisons import parse_analysis
    from noisyfr.analysis.load import condition_label
    from noisyfr.losses import loss_label

    primary = parse_analysis(spec.raw["analysis"]).primary
    labels = {loss_label(t.config["loss"]) for t in spec.trials}
    assert {primary["a"], primary["b"]} <= labels
    assert primary["condition"] in {condition_label({"closed": t.noise.closed}) for t in spec.trials}
    exact = {(t.config["loss"]["name"], t.config["loss"].get("m")): t.config["loss"] for t in spec.trials
             if t.config["loss"]["grad_mode"] == "exact"}
    assert exact[("arcface", 0.5)]["easy_margin"] is True and exact[("expface", 0.7)]["grad_floor"] == 1.0
    # the matched ArcFace: its m is the library's match to ExpFace 0.7 at 45 degrees
    import math

    from noisyfr.losses.matching import matched_margin

    arc_m = {t.config["loss"]["m"] for t in spec.trials if t.config["loss"]["name"] == "arcface"}
    matched = matched_margin("expface", math.radians(45), "arcface", {"m": 0.7})
    assert len(arc_m) == 2 and min(arc_m) == pytest.approx(matched, abs=5e-4)


@pytest.mark.parametrize("kind, axis", [("closed", "closed"), ("open", "open")])
def test_paper_scale_configs_expand_to_90_gpu_trials(tmp_path, kind, axis):
    rec = tmp_path / "train.rec"
    rec.write_bytes(b"")
    val = tmp_path / "lfw.bin"
    val.write_bytes(b"")
    spec = sweep_spec.load_sweep(CONFIGS / f"casia_{kind}.yaml",
                         [f"data.train={rec}", f"data.val=[{val}]"], sweep_dir=tmp_path / "sw")
    assert len(spec.trials) == 6 * 5 * 3
    assert len({t.config["loss"]["name"] for t in spec.trials}) == 6
    assert {getattr(t.noise, axis) for t in spec.trials} == {0.0, 0.1, 0.2, 0.3, 0.4}
    assert {t.config["seed"] for t in spec.trials} == {0, 1, 2}
    assert spec.resources["gpu"] == 1.0
    assert all(t.config["model"]["backbone"] == "iresnet50" for t in spec.trials)
    # 5 rates x 3 seeds manifests, each shared by the 6 losses
    groups = sweep_spec.plan_manifests(spec)
    assert len(groups) == 15 and all(len(g[2]) == 6 for g in groups.values())


@pytest.mark.parametrize("where", ["override", "grid"])
def test_cli_dry_run_refuses_nan_learning_rate(tmp_path, capsys, where):
    from noisyfr.cli import main

    p = tmp_path / "s.yaml"
    cfg, extra = base(), ["optim.lr=nan"]
    if where == "grid":
        cfg["grid"]["optim.lr"], extra = [0.1, float("nan")], []
    p.write_text(yaml.safe_dump(cfg))
    assert where == "override" or "- .nan" in p.read_text()
    assert main(["sweep", str(p), "--out", str(tmp_path / "o"), "--dry-run", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "config key 'optim.lr': expected a finite number, got " in captured.err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.yaml"]


def test_cli_bad_input_exits_2_and_dry_run(tmp_path, capsys):
    from noisyfr.cli import main

    p = tmp_path / "s.yaml"
    cfg = base()
    cfg["optim"]["lrr"] = 1
    p.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisyfr sweep: error:") and "optim.lrr" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["sweep", "--resume"]) == 2
    p.write_text(yaml.safe_dump(base()))
    # overrides may come after options; --dry-run lists trials and shared manifests without Ray
    assert main(["sweep", str(p), "--out", str(tmp_path / "o"), "--dry-run", "grid.seed=[0]"]) == 0
    out = capsys.readouterr().out
    assert "4 trials, 2 manifests" in out
    assert not (tmp_path / "o").exists()


def test_trial_histories_name_a_trial_whose_config_ray_lost(tmp_path):
    from types import SimpleNamespace

    frame = pd.DataFrame({"epoch": [1]})
    grid = [SimpleNamespace(config={"trial": {"name": "arcface-s32"}}, path=str(tmp_path / "ignored"),
                            metrics_dataframe=frame, error=None),
            SimpleNamespace(config=None, path=str(tmp_path / "tune" / "cosface-s32"), metrics_dataframe=None,
                            error=RuntimeError("worker killed\nout of memory"))]
    got = run.trial_histories(grid)
    assert list(got) == ["arcface-s32", "cosface-s32"]
    assert got["arcface-s32"][0] is frame and got["arcface-s32"][1] is None
    assert got["cosface-s32"] == (None, "out of memory")  # the last line of the error


@pytest.mark.parametrize("kind", ["closed", "open"])
def test_paper_scale_configs_default_to_the_detached_gradient(tmp_path, kind):
    rec, val = tmp_path / "train.rec", tmp_path / "lfw.bin"
    rec.write_bytes(b"")
    val.write_bytes(b"")
    spec = sweep_spec.load_sweep(CONFIGS / f"casia_{kind}.yaml",
                                 [f"data.train={rec}", f"data.val=[{val}]"], sweep_dir=tmp_path / "sw")
    assert {t.config["loss"]["grad_mode"] for t in spec.trials} == {"detached"}
    axis = sweep_spec.load_sweep(CONFIGS / f"casia_{kind}.yaml",
                                 [f"data.train={rec}", f"data.val=[{val}]",
                                  "grid.loss.grad_mode=[detached, exact]"], sweep_dir=tmp_path / "sw2")
    assert len(axis.trials) == 180
    assert {t.config["loss"]["grad_mode"] for t in axis.trials} == {"detached", "exact"}


@pytest.mark.parametrize("name, loss, optim, rate", [
    ("casia_expface", {"name": "expface", "s": 64, "m": 0.7},
     {"lr": 0.02, "momentum": 0.9, "weight_decay": 5.0e-4, "batch_size": 256, "epochs": 20,
      "schedule": "cosine"}, 0.3),
    ("casia_arcface_torch", {"name": "arcface", "s": 64, "m": 0.5},
     {"lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4, "batch_size_per_device": 128,
      "epochs": 20, "schedule": "poly", "power": 2.0, "warmup_epochs": 2}, 1.0),
])
def test_anchor_recipe_configs_parse_with_a_grad_mode_axis(tmp_path, name, loss, optim, rate):
    rec, val = tmp_path / "train.rec", tmp_path / "lfw.bin"
    rec.write_bytes(b"")
    val.write_bytes(b"")
    spec = sweep_spec.load_sweep(CONFIGS / f"{name}.yaml",
                                 [f"data.train={rec}", f"data.val=[{val}]"], sweep_dir=tmp_path / "sw")
    assert len(spec.trials) == 2 * 3
    assert [t.config["loss"]["grad_mode"] for t in spec.trials].count("detached") == 3
    for t in spec.trials:
        assert {k: t.config["loss"][k] for k in loss} == loss
        assert t.config["loss"]["sample_rate"] == rate
        assert {k: t.config["optim"][k] for k in optim} == optim
        assert t.config["model"]["backbone"] == "iresnet50"
    assert {t.noise.closed for t in spec.trials} == {0.0, 0.2, 0.4}


def test_a_stopped_trial_ends_when_its_stop_request_is_withdrawn_and_fails_when_never_ended(tmp_path, monkeypatch):
    """``_wait_for_the_driver`` (a trial stopped by ``RUN/.stop``, in a Ray worker): it waits while
    the request is there and ends its process (``os._exit(0)``, caught here) once the request is
    removed (the sweep driver withdraws it after Tune saved its state); while the request stays it
    fails after the wait with one line naming it."""
    import threading
    import time

    from noisyfr.train.rundir import STOP_NAME, request_stop

    class Exited(Exception):
        pass

    def exit_(code):
        raise Exited(code)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    request_stop(run_dir, "test")
    monkeypatch.setattr(trainable.os, "_exit", exit_)
    withdraw = threading.Timer(0.4, (run_dir / STOP_NAME).unlink)
    t0 = time.monotonic()
    withdraw.start()
    try:
        with pytest.raises(Exited) as info:
            trainable._wait_for_the_driver("t stopped; x", run_dir, 60)
    finally:
        withdraw.cancel()
    assert info.value.args == (0,) and 0.4 <= time.monotonic() - t0 < 30
    request_stop(run_dir, "test")
    with pytest.raises(RuntimeError, match=r"^trial t stopped; no sweep driver ended it within 0.3 s$"):
        trainable._wait_for_the_driver("t stopped; x", run_dir, 0.3)
    assert (run_dir / STOP_NAME).exists()
