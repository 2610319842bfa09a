"""End-to-end sweeps on one local Ray (2 CPUs, started once for the module)."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ray_session

from noisyfr.errors import NoisyFRError

HERE = Path(__file__).resolve().parent
SYN = "synthetic:ids=6,per_id=6,size=32,seed=0"


# --------------------------------------------------------------------------- stand-in trainer
def fake_train(config, report=None):
    """Stand-in for noisyfr.train.train (the report/checkpoint/resume contract, no learning).

    Loss 1/epoch; ``sphereface`` diverges at epoch 2 like the real guard rail does; events go to
    ``config["fake"]["log"]`` (one JSON line per start/epoch/end) so tests can count runs.
    """
    from noisyfr.errors import NoisyFRError as Err

    fake = config.get("fake", {})
    out = Path(config["output_dir"])
    ck = out / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    start = 1
    if config.get("resume") and (ck / "last.pt").is_file():
        start = json.loads((ck / "last.pt").read_text())["epoch"] + 1

    def log(event, **kw):
        if fake.get("log"):
            with open(fake["log"], "a") as fh:
                fh.write(json.dumps({"trial": config["name"], "event": event, "pid": os.getpid(), **kw}) + "\n")

    log("start", epoch=start)
    if fake.get("barrier"):  # wait (at most a minute) until that many trials have started
        deadline = time.monotonic() + 60
        def started() -> int:
            return sum(json.loads(x)["event"] == "start" for x in Path(fake["log"]).read_text().splitlines())

        while time.monotonic() < deadline and started() < fake["barrier"]:
            time.sleep(0.1)
    epochs = config["optim"]["epochs"]
    for e in range(start, epochs + 1):
        time.sleep(fake.get("sleep", 0.0))
        if config["loss"]["name"] == "sphereface" and e == 2:
            raise Err("loss sphereface: non-finite loss (nan) at epoch 2 step 7")
        path = ck / f"epoch_{e}.pt"
        path.write_text(json.dumps({"epoch": e}))
        (ck / "last.pt").write_text(json.dumps({"epoch": e}))
        log("epoch", epoch=e)
        metrics = {"epoch": e, "step": e * 3, "loss": 1.0 / e, "val_accuracy": 0.5 + 0.1 * e,
                   "noisy_auc": float("nan"), "theta_clean_mean": 1.0, "theta_noisy_mean": 1.1,
                   "clean_true_accuracy": 0.9, "learned": True}
        # the trainer's run-directory contract: metrics.csv after the epoch's checkpoint
        with open(out / "metrics.csv", "a") as fh:
            fh.write(("" if e > 1 or start > 1 else ",".join(metrics) + "\n")
                     + ",".join(str(v) for v in metrics.values()) + "\n")
        if report:
            report({**metrics, "checkpoint": str(path)})
    log("end")
    return {"epoch": epochs}


def load_config(config):
    """Validator the sweep uses for trainers from this module: stand-in configs pass through, real ones
    go through noisyfr.train.load_config (minus the test-only ``crash_after_epoch`` key)."""
    if "fake" in config:
        return config
    from noisyfr.train import load_config as real

    config = dict(config)
    extra = {k: config.pop(k) for k in ("crash_after_epoch", "crash_trials", "step_sleep", "step_log")
             if k in config}
    return {**real(config), **extra}


def crash_once_train(config, report=None):
    """The real trainer, but the trial's process dies (os._exit) right after reporting epoch
    ``crash_after_epoch``, once: Tune must restart it from its last checkpoint."""
    from noisyfr.train import train

    config = dict(config)
    crash = config.pop("crash_after_epoch", 0)
    out = Path(config["output_dir"])
    if not config["name"].startswith(config.pop("crash_trials", "")):
        crash = 0
    marker = out.parent / f"{out.name}.crashed"
    with open(out.parent / f"{out.name}.starts", "a") as fh:
        fh.write(f"{bool(config.get('resume'))}\n")

    def rep(metrics):
        report(metrics)
        if crash and metrics["epoch"] == crash and not marker.exists():
            marker.touch()
            os._exit(3)

    return train(config, report=rep)


def slow_steps_train(config, report=None):
    """The real trainer, each optimiser step followed by ``step_sleep`` seconds and a line
    ``PID epoch E step S`` in the file ``step_log``: a stop lands inside an epoch, and the log
    shows where a resumed run goes on."""
    from noisyfr.train import train
    from noisyfr.train.step import Stepper

    config = dict(config)
    pause, log = config.pop("step_sleep", 0.0), config.pop("step_log", None)
    real = Stepper.step

    def step(self, *a, **k):
        out = real(self, *a, **k)
        if log:
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {k.get('where', '')}\n")
        time.sleep(pause)
        return out

    Stepper.step = step
    try:
        return train(config, report=report)
    finally:
        Stepper.step = real


def pid_train(config, report=None):
    """The real trainer; records the worker's pid beside the run directory first."""
    from noisyfr.train import train

    with open(str(config["output_dir"]).rstrip("/") + ".pid", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return train(config, report=report)


@pytest.fixture(scope="module")
def ray_local():
    pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    # Ray workers import the stand-in trainer from this folder.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE)] + ([old] if old else []))
    try:
        with ray_session(num_cpus=2) as ray:
            yield ray
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def real_cfg(**extra):
    cfg = {
        "name": "e2e", "device": "cpu", "seed": 0,
        "data": {"train": SYN, "image_size": 32, "noise": {"closed": 0.0}},
        "model": {"backbone": "small_cnn", "embedding_dim": 16},
        "loss": {"name": "arcface", "s": 16, "m": 0.3},
        "optim": {"lr": 0.05, "batch_size": 12, "epochs": 3},
        "track": {"log_every": 1},
        "grid": {"loss.name": ["arcface", "cosface"], "data.noise.closed": [0.0, 0.5]},
        "resources": {"cpu": 1},
    }
    if "noise" in extra:
        cfg["data"]["noise"] = extra.pop("noise")
    cfg.update(extra)
    return cfg


def test_four_trial_sweep_with_the_real_trainer(ray_local, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from noisyfr.noise import read_manifest
    from noisyfr.tune import load_sweep, run_sweep

    # the real trainer; trial 003's process dies once right after reporting epoch 2 (max_failures=1)
    cfg = real_cfg(trainer="test_tune_sweep:crash_once_train", crash_after_epoch=2, crash_trials="003_",
                   max_failures=1)
    spec = load_sweep(cfg, sweep_dir=tmp_path / "sw")
    df = run_sweep(spec, echo=None, progress=False)
    # no progress bar (as with redirected output): one line per finished trial epoch, with an ETA
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "epochs, ETA" in ln]
    assert len([ln for ln in lines if " epoch " in ln]) >= 4 * 3 and "12/12 epochs" in lines[-1]
    log = (tmp_path / "sw" / "sweep.log").read_text()
    assert log.count("epochs, ETA") == len(lines) and "# Sweep `e2e`" in log
    # `tensorboard --logdir SWEEP_DIR`: every trial has per-step curves and theta_y histograms
    for out in df["output_dir"]:
        acc = EventAccumulator(str(Path(out) / "tb"), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        assert len(acc.Scalars("train/loss")) == 9 and len(acc.Histograms("theta_y/clean")) == 3
    sdir = tmp_path / "sw"
    assert len(df) == 4 and set(df["status"]) == {"completed"}, df[["trial", "status", "error"]]
    assert (df["epochs"] == 3).all()
    # the crashed trial restarted once, with resume: true (its Tune checkpoint put back as last.pt),
    # and trained every epoch exactly once in its run directory
    crashed = Path(df.loc[df["trial"].str.startswith("003_"), "output_dir"].iloc[0])
    assert crashed.with_name(crashed.name + ".crashed").exists()
    assert crashed.with_name(crashed.name + ".starts").read_text().split() == ["False", "True"]
    assert pd.read_csv(crashed / "metrics.csv")["epoch"].tolist() == [1, 2, 3]
    other = Path(df["output_dir"].iloc[0])
    assert other.with_name(other.name + ".starts").read_text().split() == ["False"]
    back = pd.read_csv(sdir / "results.csv")
    assert list(back["trial"]) == list(df["trial"])
    assert pd.read_parquet(sdir / "results.parquet").shape == df.shape
    # one manifest per noise setting, shared by both losses, with the requested noise rate
    manifests = sorted((sdir / "manifests").glob("*.parquet"))
    assert len(manifests) == 2
    assert df.groupby("data.noise.closed")["manifest"].nunique().eq(1).all()
    for rate, path in df.groupby("data.noise.closed")["manifest"].first().items():
        m, _ = read_manifest(path)
        assert (m["noise"] != "clean").mean() == pytest.approx(rate, abs=1 / len(m))
    # Tune's per-epoch reports reach the table unchanged: compare with each run's own metrics.csv
    for _, row in df.iterrows():
        metrics = pd.read_csv(Path(row["output_dir"]) / "metrics.csv")
        assert row["final_loss"] == pytest.approx(metrics["loss"].iloc[-1], rel=1e-6)
        assert row["final_theta_clean_mean"] == pytest.approx(metrics["theta_clean_mean"].iloc[-1], rel=1e-6)
        assert (Path(row["output_dir"]) / "checkpoints" / "last.pt").is_file()
        if row["data.noise.closed"] == 0:
            assert math.isnan(row["final_noisy_auc"])
        else:
            assert 0.0 <= row["final_noisy_auc"] <= 1.0
    md = (sdir / "summary.md").read_text()
    # rows name the loss with its scale, margin and grad_mode; every trial's learned flag is the
    # trainer's own last-epoch verdict, counted per cell
    assert "| arcface s=16 m=0.3 exact |" in md and "| cosface s=16 m=0.3 exact |" in md
    assert "closed=0.5" in md
    for _, row in df.iterrows():
        metrics = pd.read_csv(Path(row["output_dir"]) / "metrics.csv")
        assert bool(row["learned"]) == bool(metrics["learned"].iloc[-1])
        assert row["final_clean_true_accuracy"] == pytest.approx(metrics["clean_true_accuracy"].iloc[-1])
        assert row["loss.grad_mode"] == "exact" and row["loss.s"] == 16
    assert f"{int(df['learned'].sum())} of 4 completed trials learned" in md
    # the sweep directory is taken: a second run without --resume is refused
    with pytest.raises(NoisyFRError, match="already holds a sweep"):
        run_sweep(load_sweep(cfg, sweep_dir=sdir), echo=None)
    # --resume of a finished sweep re-runs nothing and rewrites the same results
    before = {p: p.stat().st_mtime_ns for p in sdir.glob("trials/*/metrics.csv")}
    df2 = run_sweep(load_sweep(cfg, sweep_dir=sdir), resume=True, echo=None)
    assert list(df2["final_loss"]) == list(df["final_loss"])
    assert before == {p: p.stat().st_mtime_ns for p in sdir.glob("trials/*/metrics.csv")}


def test_trials_reuse_one_worker_and_match_a_fresh_process(ray_local, tmp_path):
    """Tune reuses a trial's worker process for the next trial (a fresh process per trial cost
    seconds each, most of a small feature-regime trial). Reuse must not leak state from one trial
    into the next: every trial's numbers equal those of the same config trained alone."""
    import torch
    import yaml

    from noisyfr.train import train
    from noisyfr.tune import load_sweep, run_sweep

    cfg = real_cfg(trainer="test_tune_sweep:pid_train", max_concurrent_trials=1)
    cfg["grid"] = {"loss.name": ["arcface", "cosface", "expface"]}
    cfg["optim"]["epochs"] = 2
    cfg["data"]["noise"] = {"closed": 0.3}
    df = run_sweep(load_sweep(cfg, sweep_dir=tmp_path / "sw"), echo=None, progress=False)
    assert len(df) == 3 and set(df["status"]) == {"completed"}, df[["trial", "status", "error"]]
    pids = {Path(out).with_name(Path(out).name + ".pid").read_text().split()[0] for out in df["output_dir"]}
    assert len(pids) == 1, f"each trial started its own worker: {pids}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial's worker (resources: cpu 1)
    try:
        for out in df["output_dir"][1:]:  # the trials that ran in a reused worker
            alone = yaml.safe_load((Path(out) / "config.yaml").read_text())
            alone["output_dir"] = str(tmp_path / "alone" / Path(out).name)
            train(alone)
            a = pd.read_csv(Path(out) / "metrics.csv")
            b = pd.read_csv(Path(alone["output_dir"]) / "metrics.csv")
            for col in ("loss", "theta_clean_mean", "theta_noisy_mean"):
                assert a[col].tolist() == b[col].tolist(), (out, col)
    finally:
        torch.set_num_threads(threads)


def test_gpu_request_without_gpu_fails_before_any_trial(ray_local, tmp_path):
    from noisyfr.tune import load_sweep, run_sweep

    if ray_local.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has a GPU")
    cfg = real_cfg(resources={"cpu": 1, "gpu": 0.25})
    with pytest.raises(NoisyFRError, match="resources.gpu.*no GPU"):
        run_sweep(load_sweep(cfg, sweep_dir=tmp_path / "sw"), echo=None)
    assert not (tmp_path / "sw").exists()     # nor its sweep.log: the directory it made is gone
    cfg["resources"] = {"cpu": 3}
    with pytest.raises(NoisyFRError, match="resources.cpu.*no node"):
        run_sweep(load_sweep(cfg, sweep_dir=tmp_path / "sw2"), echo=None)


def test_distributed_trial_with_two_gloo_workers(ray_local, tmp_path):
    from noisyfr.tune import load_sweep, run_sweep

    cfg = real_cfg(grid={"seed": [0]}, workers_per_trial=2, resources={"cpu": 0.5}, noise=None)
    cfg["optim"]["epochs"] = 1
    df = run_sweep(load_sweep(cfg, sweep_dir=tmp_path / "sw"), echo=None)
    assert df["status"].tolist() == ["completed"], df["error"].tolist()
    row = df.iloc[0]
    assert row["epochs"] == 1 and np.isfinite(row["final_loss"])
    assert row["world_size"] == 2  # reported from inside the 2-process TorchTrainer group
    assert (Path(row["output_dir"]) / "metrics.csv").is_file()



PLUGIN = '''
"""A user's loss, outside the package: registered when the config's plugins: imports this file."""
import torch

from noisyfr.losses import MarginLoss, register_loss


@register_loss("plugin_halfcos")
class HalfCos(MarginLoss):
    """T(theta) = cos(theta) - 0.25 * (1 - cos(theta))."""

    def target_logit(self, theta, norms=None):
        return torch.cos(theta) - 0.25 * (1 - torch.cos(theta))
'''


def test_custom_loss_from_a_plugin_trains_in_a_two_trial_sweep(ray_local, tmp_path):
    """plugins: [file] is imported before the trial configs are checked (driver) and again when
    each trial's config is loaded (Ray workers, another working directory)."""
    from noisyfr.losses import LOSSES
    from noisyfr.tune import load_sweep, run_sweep

    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "my_losses.py").write_text(PLUGIN)
    cfg = real_cfg(plugins=["plugin/my_losses.py"], grid={"seed": [0, 1]}, noise=None)
    cfg["loss"] = {"name": "plugin_halfcos", "s": 16}
    cfg["optim"]["epochs"] = 1
    try:
        spec = load_sweep(cfg, sweep_dir=tmp_path / "sw", base_dir=tmp_path)
        assert spec.trials[0].config["plugins"] == [str(tmp_path / "plugin" / "my_losses.py")]
        df = run_sweep(spec, echo=None)
    finally:
        LOSSES.pop("plugin_halfcos", None)
    assert df["status"].tolist() == ["completed", "completed"], df["error"].tolist()
    assert set(df["loss.name"]) == {"plugin_halfcos"} and np.isfinite(df["final_loss"]).all()
    for out in df["output_dir"]:
        assert (Path(out) / "angles" / "epoch_1.parquet").is_file()


def test_mapping_axis_sweep_resumes_from_its_directory_alone(ray_local, tmp_path, capsys):
    """A whole-section axis (a list of mappings) names its trials in the config's key order;
    ``noisyfr sweep --resume --out DIR`` (no config) rebuilds those names from sweep.json."""
    from noisyfr import cli
    from noisyfr.tune import load_sweep, run_sweep

    log = tmp_path / "events.jsonl"
    cfg = {"name": "maps", "trainer": "test_tune_sweep:fake_train", "optim": {"epochs": 2},
           "fake": {"log": str(log)}, "loss": {"name": "arcface"},
           "grid": {"loss": [{"name": "arcface", "s": 32, "m": 0.5}, {"name": "cosface", "s": 32, "m": 0.35}],
                    "seed": [0]},
           "resources": {"cpu": 1}}
    sdir = tmp_path / "sw"
    df = run_sweep(load_sweep(cfg, sweep_dir=sdir), echo=None, progress=False)
    names = ["000_loss=arcface-s32-m0.5_seed=0", "001_loss=cosface-s32-m0.35_seed=0"]
    assert df["trial"].tolist() == names and set(df["status"]) == {"completed"}
    starts = log.read_text().count('"start"')
    capsys.readouterr()
    assert cli.main(["sweep", "--resume", "--out", str(sdir)]) == 0, capsys.readouterr().err
    back = pd.read_csv(sdir / "results.csv")
    assert back["trial"].tolist() == names and set(back["status"]) == {"completed"}
    assert (back["epochs"] == 2).all()
    assert log.read_text().count('"start"') == starts   # nothing re-run


def _fail_after_manifests(monkeypatch, exc: BaseException) -> None:
    """Make the sweep's manifests for real, then raise ``exc`` (before sweep.json is written)."""
    from noisyfr.tune import run as run_mod

    real = run_mod.make_manifests

    def make_then_fail(spec, progress=None):
        paths = real(spec, progress=progress)
        assert paths and all(Path(p).exists() for p in paths)
        assert (spec.sweep_dir / "sweep.log").exists()
        raise exc

    monkeypatch.setattr(run_mod, "make_manifests", make_then_fail)


def test_failed_first_start_leaves_the_sweep_directory_as_it_was(ray_local, tmp_path, monkeypatch):
    """Before sweep.json exists, a failure removes what the sweep added (sweep.log, manifests/)
    and keeps what was there; a directory (and parents) it made go; a full disk is one line."""
    import errno

    from noisyfr.tune import load_sweep, run_sweep

    cfg = real_cfg(noise={"closed": 0.5})
    _fail_after_manifests(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    sdir = tmp_path / "sw"
    sdir.mkdir()
    (sdir / "notes.txt").write_text("mine")
    (sdir / "old").mkdir()
    with pytest.raises(NoisyFRError, match="No space left on device") as info:
        run_sweep(load_sweep(cfg, sweep_dir=sdir), echo=None, progress=False)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in sdir.rglob("*")) == ["notes.txt", "old"]
    assert (sdir / "notes.txt").read_text() == "mine"

    monkeypatch.undo()
    _fail_after_manifests(monkeypatch, RuntimeError("boom"))
    deep = tmp_path / "a" / "b" / "sw"
    with pytest.raises(RuntimeError, match="boom"):
        run_sweep(load_sweep(cfg, sweep_dir=deep), echo=None, progress=False)
    assert not (tmp_path / "a").exists()


def test_failure_after_sweep_json_keeps_a_resumable_directory(ray_local, tmp_path, monkeypatch):
    """Once sweep.json is written the directory holds a sweep: a failure then removes nothing,
    and --resume finishes it."""
    from noisyfr.tune import load_sweep, run_sweep
    from noisyfr.tune import run as run_mod

    cfg = {"name": "keep", "trainer": "test_tune_sweep:fake_train", "optim": {"epochs": 1}, "fake": {},
           "loss": {"name": "arcface"}, "grid": {"loss.name": ["arcface"]}, "resources": {"cpu": 1}}
    sdir = tmp_path / "sw"
    with monkeypatch.context() as m:
        m.setattr(run_mod, "_tuner", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            run_sweep(load_sweep(cfg, sweep_dir=sdir), echo=None, progress=False)
    assert {p.name for p in sdir.iterdir()} == {"sweep.json", "sweep.log"}
    df = run_sweep(load_sweep(cfg, sweep_dir=sdir), resume=True, echo=None, progress=False)
    assert df["status"].tolist() == ["completed"]
