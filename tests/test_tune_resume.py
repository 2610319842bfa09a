"""SIGKILL the sweep driver mid-way, then ``noisyfr sweep --resume`` finishes every trial exactly once.

The driver runs in its own process (and process group); the trainer is the stand-in from test_tune_sweep.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EPOCHS = 3


def _events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group started for ``proc`` (Ray daemons of that driver)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigkill_then_resume_runs_each_trial_to_completion_once(tmp_path):
    pytest.importorskip("ray")
    log = tmp_path / "events.jsonl"
    cfg = {"name": "resume", "trainer": "test_tune_sweep:fake_train", "loss": {"name": "arcface"},
           "optim": {"epochs": EPOCHS}, "fake": {"log": str(log), "sleep": 0.6},
           "grid": {"loss.name": ["arcface", "cosface", "expface"]},
           "resources": {"cpu": 1}, "max_failures": 0}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "sw"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "noisyfr", "sweep", str(path), "--out", str(out)]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "first.err", "w"), start_new_session=True)
    killed_after: set[str] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            ev = _events(log)
            ended = {e["trial"] for e in ev if e["event"] == "end"}
            epochs = Counter(e["trial"] for e in ev if e["event"] == "epoch")
            running = [t for t, n in epochs.items() if t not in ended and n >= 2]
            if ended and running:
                break
            assert first.poll() is None, (tmp_path / "first.err").read_text()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the sweep did not get going in 120 s")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        killed_after = {e["trial"] for e in _events(log) if e["event"] == "end"}
    finally:
        time.sleep(0.5)
        _kill_group(first)
    assert first.returncode == -signal.SIGKILL
    assert not (out / "results.csv").exists()
    n_before = len(_events(log))

    second = subprocess.run([sys.executable, "-m", "noisyfr", "sweep", "--resume", "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
                            start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]

    df = pd.read_csv(out / "results.csv")
    assert len(df) == 3 and set(df["status"]) == {"completed"}, df[["trial", "status", "error"]]
    assert (df["epochs"] == EPOCHS).all()
    assert df["final_loss"].tolist() == pytest.approx([1 / EPOCHS] * 3)
    ev = _events(log)
    ends = Counter(e["trial"] for e in ev if e["event"] == "end")
    assert set(ends) == set(df["trial"]) and set(ends.values()) == {1}
    starts = Counter(e["trial"] for e in ev if e["event"] == "start")
    for t in killed_after:           # finished before the kill: not run again
        assert starts[t] == 1
    later_starts = [e for e in ev[n_before:] if e["event"] == "start"]
    assert later_starts, "nothing was resumed"
    # an interrupted trial continued from its Tune checkpoint, not from epoch 1
    assert any(e["epoch"] > 1 for e in later_starts)
    # every epoch of every trial ran, and none more than twice (at most the one cut by the kill)
    per_epoch = Counter((e["trial"], e["epoch"]) for e in ev if e["event"] == "epoch")
    assert set(per_epoch) == {(t, k) for t in df["trial"] for k in range(1, EPOCHS + 1)}
    assert max(per_epoch.values()) <= 2
    assert "| arcface s=64 m=0.5 exact | 1/1 |" in (out / "summary.md").read_text()
