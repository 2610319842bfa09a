"""The sweep driver stopped by SIGTERM (issue 21, split from test_run_safety so that the train-only
checks there run beside the Ray tests): it stops Tune the graceful way, exits 143 with one line,
and ``sweep --resume`` finishes the trials, a trial stopped mid-epoch from the step it saved."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_run_safety import TINY, _env, _nf, _same_weights, _wait_for

from noisyfr.io import load_checkpoint
from noisyfr.lock import LOCK_NAME
from noisyfr.train import load_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _start_sweep(tmp_path: Path, cfg: dict):
    """``noisyfr sweep`` of ``cfg`` started in its own session: ``(process, sweep dir)``."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "sw"
    proc = subprocess.Popen(_nf("sweep", path, "--out", out), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, out


@pytest.mark.slow
def test_sigterm_of_the_sweep_driver_then_resume_finishes_the_trials(tmp_path):
    """The driver TERMed mid-sweep stops Tune the graceful way (experiment state saved), exits 143
    with one line, and ``sweep --resume`` finishes every trial."""
    pytest.importorskip("ray")
    log = tmp_path / "events.jsonl"
    cfg = {"name": "term", "trainer": "test_tune_sweep:fake_train", "loss": {"name": "arcface"},
           "optim": {"epochs": 4}, "fake": {"log": str(log), "sleep": 0.5},
           "grid": {"loss.name": ["arcface", "cosface"]}, "resources": {"cpu": 1}, "max_failures": 0}
    proc, out = _start_sweep(tmp_path, cfg)
    try:
        _wait_for(proc, lambda: log.exists() and '"event": "epoch"' in log.read_text(), 120, 0.2)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("noisyfr sweep: sweep dir"), err[-2000:]
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
    assert not (out / "results.csv").exists() and not (out / LOCK_NAME).exists()
    second = subprocess.run(_nf("sweep", "--resume", "--out", out), env=_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=180, start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    assert set(df["status"]) == {"completed"} and (df["epochs"] == 4).all(), df
    assert all(json.loads(x)["event"] in ("start", "epoch", "end") for x in log.read_text().splitlines())


def _steps(log: Path) -> list[tuple[int, int, int]]:
    """``(pid, epoch, global step)`` of every logged optimiser step (test_tune_sweep.slow_steps_train)."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        pid, _, epoch, _, step = line.split()
        out.append((int(pid), int(epoch), int(step)))
    return out


@pytest.mark.slow
def test_sigterm_of_the_sweep_driver_stops_its_trial_mid_epoch_and_resume_equals_an_uninterrupted_run(
        tmp_path):
    """The TERMed driver writes the stop request into its training trial's run directory: the trial
    (a Ray worker thread, where no signal handler can be installed) finishes its step, writes
    interrupted.pt and waits; the driver stops Tune, exits 143 with one line, and ``sweep --resume``
    reruns the trial from that step to the tensors of an uninterrupted run."""
    pytest.importorskip("ray")
    steps = tmp_path / "steps.log"
    cfg = {**TINY, "name": "mid", "trainer": "test_tune_sweep:slow_steps_train",
           "optim": {**TINY["optim"], "epochs": 3, "batch_size": 4},   # 8 steps an epoch
           "step_sleep": 0.25, "step_log": str(steps),
           "grid": {"seed": [3]}, "resources": {"cpu": 1}, "max_failures": 0}
    proc, out = _start_sweep(tmp_path, cfg)
    try:
        _wait_for(proc, lambda: any(e == 2 and s >= 10 for _, e, s in _steps(steps)), 180, 0.05)  # in epoch 2
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Ray's own start-up line (token authentication) aside, the driver prints one line
    lines = [ln for ln in err.strip().splitlines() if "authentication_token_setup" not in ln]
    assert proc.returncode == 143, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"noisyfr sweep: sweep dir {out}: stopped by SIGTERM; 1 training trial stopped "
                               "after the current step"), lines
    assert lines[0].endswith(f"continue with noisyfr sweep --resume --out {out}"), lines
    (trial,) = (out / "trials").iterdir()
    state = load_checkpoint(trial / "checkpoints" / "interrupted.pt")
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2 and 2 <= state["partial"]["batches"] < 8
    stopped_at = state["step"]
    assert max(s for _, _, s in _steps(steps)) == stopped_at          # no step after the saved one
    assert not (trial / ".stop").exists() and not (trial / LOCK_NAME).exists() and not (out / LOCK_NAME).exists()
    assert not (out / "results.csv").exists()
    first_pids = {p for p, _, _ in _steps(steps)}

    second = subprocess.run(_nf("sweep", "--resume", "--out", out), env=_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=240, start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    assert df["status"].tolist() == ["completed"] and df["epochs"].tolist() == [3], df
    resumed = [(p, e, s) for p, e, s in _steps(steps) if p not in first_pids]
    assert resumed[0][1:] == (2, stopped_at + 1) and [s for _, _, s in resumed] == list(range(stopped_at + 1, 25))
    assert not (trial / "checkpoints" / "interrupted.pt").exists()

    ref_cfg = yaml.safe_load((trial / "config.yaml").read_text())
    ref = tmp_path / "ref"
    train(load_config(ref_cfg, [("output_dir", str(ref)), ("resume", False), ("overwrite", False)]))
    _same_weights(ref / "checkpoints" / "last.pt", trial / "checkpoints" / "last.pt")
    for epoch in (1, 2, 3):
        pd.testing.assert_frame_equal(pd.read_parquet(ref / "angles" / f"epoch_{epoch}.parquet"),
                                      pd.read_parquet(trial / "angles" / f"epoch_{epoch}.parquet"))
    a, b = pd.read_csv(ref / "metrics.csv"), pd.read_csv(trial / "metrics.csv")
    for col in ("loss", "train_accuracy", "lr", "step", "clean_true_accuracy"):
        assert a[col].tolist() == b[col].tolist(), col
