"""Never lose a finished run (issue 21): no silent overwrite, one writer per directory, resume past a
damaged checkpoint, and a clean stop on SIGTERM / SIGINT that resumes to the same tensors.

Each refusal is checked the usual way: exit status 2, exactly one stderr line naming the directory,
and a snapshot (names, modes, hashes, mtimes) of the files that is the same before and after.
Concurrency cases use real processes, bounded in time.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import exit_status
from test_hostile_inputs import cli, snapshot

from noisyfr.cli import main
from noisyfr.errors import NoisyFRError, Stopped
from noisyfr.io import load_checkpoint
from noisyfr.lock import LOCK_NAME
from noisyfr.train import load_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TINY = {"seed": 3, "device": "cpu",
        "data": {"train": "synthetic:ids=4,per_id=8,size=32,seed=0", "image_size": 32},
        "model": {"backbone": "small_cnn", "embedding_dim": 8},
        "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
        "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05, "warmup_epochs": 0.5}}


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")


def _wait_for(proc, done, timeout: float, poll: float) -> None:
    """Wait until ``done()`` while ``proc`` runs (its stderr in the failure when it ends first)."""
    deadline = time.time() + timeout
    while not done():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(poll)


def _nf(*argv) -> list[str]:
    return [sys.executable, "-m", "noisyfr", *map(str, argv)]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, config) -> Path:
    """A finished 2-epoch run (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", str(config), "--out", str(out)]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _refused(argv, named, roots, capsys) -> str:
    before = snapshot(*roots)
    code, lines = cli(argv, capsys)
    assert code == 2 and len(lines) == 1, (code, lines)
    assert "error" in lines[0] and str(named) in lines[0], lines
    assert snapshot(*roots) == before
    return lines[0]


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    for key in ("model", "head"):
        assert sa[key].keys() == sb[key].keys()
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), f"{key}.{name}"


# --------------------------------------------------------------------------- 1. no silent overwrite
def test_fresh_train_into_a_run_is_refused_and_overwrite_replaces_it(finished, config, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    line = _refused(["train", config, "--out", run, "optim.epochs=1"], run, [tmp_path], capsys)
    assert "already holds a run (2 epochs done, loss arcface)" in line and "--resume" in line
    assert "--overwrite" in line
    _refused(["train", config, "--out", run, "--resume", "--overwrite"], "--overwrite", [tmp_path], capsys)
    # any run file counts: an angle log alone is a run
    only_log = tmp_path / "only_log"
    (only_log / "angles").mkdir(parents=True)
    (only_log / "angles" / "epoch_1.parquet").write_bytes((run / "angles" / "epoch_1.parquet").read_bytes())
    _refused(["train", config, "--out", only_log], only_log, [tmp_path], capsys)
    # the Python API follows the same rule
    with pytest.raises(NoisyFRError, match="already holds a run"):
        train(load_config(TINY, [("output_dir", str(run))]))
    assert main(["train", str(config), "--out", str(run), "optim.epochs=1", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_1.pt", "last.pt"]
    assert sorted(p.name for p in (run / "angles").iterdir()) == ["epoch_1.parquet"]
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    assert not (run / LOCK_NAME).exists()       # released with the run


# --------------------------------------------------------------------------- 2. one writer per directory
HOLD = ("import sys, time; from noisyfr.lock import acquire; lock = acquire(sys.argv[1], 'dir'); "
        "print('held', flush=True); time.sleep(120)")


def _holder(folder: Path) -> subprocess.Popen:
    """A real process holding ``folder``'s lock (prints ``held`` once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(finished, config, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    holder = _holder(run)
    try:
        for argv in (["train", config, "--out", run, "optim.epochs=3", "--resume"],
                     ["train", config, "--out", run, "--overwrite"]):
            line = _refused(argv, run, [tmp_path], capsys)
            assert f"in use by another writer (pid {holder.pid} on " in line, line
        sweep_dir = tmp_path / "sweep"
        sweep_dir.mkdir()
        sweep_cfg = tmp_path / "sweep.yaml"
        sweep_cfg.write_text(yaml.safe_dump({**TINY, "grid": {"seed": [0]}, "resources": {"cpu": 1}}))
        sweep_holder = _holder(sweep_dir)
        try:
            line = _refused(["sweep", sweep_cfg, "--out", sweep_dir], sweep_dir, [tmp_path], capsys)
            assert f"pid {sweep_holder.pid}" in line
        finally:
            sweep_holder.kill()
            sweep_holder.wait(10)
    finally:
        holder.kill()                   # kill -9: the kernel lets go of the lock
        holder.wait(10)
    assert (run / LOCK_NAME).exists()   # left by the killed holder, and free
    code, lines = cli(["train", config, "--out", run, "optim.epochs=3", "--resume"], capsys)
    assert code == 0, lines
    assert len(pd.read_csv(run / "metrics.csv")) == 3 and not (run / LOCK_NAME).exists()


def test_is_held_sees_a_live_holder_only_and_a_probe_never_refuses_a_writer(tmp_path):
    """``is_held`` (the sweep driver's question when it stops its trials): True while a live
    process holds the lock, False without a lock file or after the holder was killed; a writer
    taking the lock while another process probes it in a tight loop is never refused."""
    from noisyfr.lock import acquire, check_free, is_held

    folder = tmp_path / "d"
    folder.mkdir()
    assert not is_held(folder)
    holder = _holder(folder)
    try:
        assert is_held(folder)
    finally:
        holder.kill()
        holder.wait(10)
    assert (folder / LOCK_NAME).exists() and not is_held(folder)
    probe = subprocess.Popen([sys.executable, "-c", "import sys; from noisyfr.lock import is_held\n"
                              "while True: is_held(sys.argv[1])", str(folder)], env=_env())
    try:
        for _ in range(200):
            check_free(folder, "dir")
            acquire(folder, "dir").release()
    finally:
        probe.kill()
        probe.wait(10)


def test_two_trains_started_into_one_directory(config, tmp_path):
    """The issue's measurement: the second of two trains started while the first runs is
    refused; the directory holds the first run alone. The first is paused (SIGSTOP) after its
    first epoch while the second starts, so it is still running whatever the machine's speed,
    then continued to its end."""
    out = tmp_path / "run"
    first = subprocess.Popen(_nf("train", config, "--out", out, "optim.epochs=4", "optim.batch_size=8"),
                             env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "checkpoints" / "epoch_1.pt").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        try:
            assert first.poll() is None  # paused, not ended: it holds the directory
            second = subprocess.run(_nf("train", config, "--out", out, "loss.name=cosface", "loss.m=0.35"),
                                    env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        finally:
            first.send_signal(signal.SIGCONT)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"{out}: in use by another writer (pid {first.pid} on " in lines[0]
        assert first.wait(180) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"]["name"] == "arcface"
    assert len(pd.read_csv(out / "metrics.csv")) == 4 and not (out / LOCK_NAME).exists()


# --------------------------------------------------------------------------- 3. resume past damage
def test_resume_skips_damaged_checkpoints_and_truncates_later_epochs(config, tmp_path, capsys):
    full = tmp_path / "full"
    assert main(["train", str(config), "--out", str(full), "optim.epochs=4"]) == 0
    run = _copy(full, tmp_path / "run")
    for name in ("last.pt", "epoch_4.pt", "epoch_3.pt"):     # torn by a crash of the storage
        p = run / "checkpoints" / name
        p.write_bytes(p.read_bytes()[:1000])
    code, lines = cli(["train", config, "--out", run, "optim.epochs=4", "--resume"], capsys)
    assert code == 0
    assert len(lines) == 1 and all(n in lines[0] for n in ("last.pt", "epoch_4.pt", "epoch_3.pt")), lines
    assert "resuming" in lines[0] and "from epoch_2.pt (epoch 2)" in lines[0]
    assert "..." not in lines[0] and lines[0].count("(") == lines[0].count(")")
    _same_weights(full / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    pd.testing.assert_frame_equal(pd.read_parquet(full / "angles" / "epoch_3.parquet"),
                                  pd.read_parquet(run / "angles" / "epoch_3.parquet"))
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2, 3, 4]
    assert "resume: skipped last.pt" in (run / "train.log").read_text()


def test_resume_keeps_a_consistent_run_when_the_later_epochs_are_gone(finished, config, tmp_path, capsys):
    """Resuming from an older checkpoint drops the later angle logs and metrics rows at once."""
    run = _copy(finished, tmp_path / "run")
    p = run / "checkpoints" / "last.pt"
    p.write_bytes(p.read_bytes()[:500])
    (run / "checkpoints" / "epoch_2.pt").write_bytes(b"torn")
    import noisyfr.train.trainer as trainer

    class Boom(Exception):
        pass

    def stop(*a, **k):
        raise Boom()

    with pytest.MonkeyPatch.context() as mp:        # stop right after the output is prepared
        mp.setattr(trainer, "_stepper", stop)
        with pytest.raises(Boom):
            train(load_config(TINY, [("output_dir", str(run)), ("resume", True)]))
    assert sorted(p.name for p in (run / "angles").iterdir()) == ["epoch_1.parquet"]
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_1.pt", "last.pt"]


def test_resume_with_no_readable_checkpoint_is_one_whole_line(finished, config, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    for p in (run / "checkpoints").iterdir():
        p.write_bytes(p.read_bytes()[:1000])
    line = _refused(["train", config, "--out", run, "--resume"], run / "checkpoints", [tmp_path], capsys)
    for name in ("last.pt", "epoch_2.pt", "epoch_1.pt"):
        assert name in line
    assert line.endswith("epoch_1.pt") and "is)" not in line, line


# --------------------------------------------------------------------------- 4. clean stop
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    train(load_config(TINY, [("output_dir", str(out))]))
    return out


@pytest.mark.parametrize("stop_at, signum", [(1, signal.SIGTERM), (3, signal.SIGINT), (3, "request")])
def test_stop_mid_epoch_then_resume_gives_the_same_tensors(uninterrupted, tmp_path, stop_at, signum):
    """A signal (or the stop request ``RUN/.stop``) after optimiser step ``stop_at`` (2 steps per
    epoch: 1 = inside epoch 1 of a fresh run, 3 = inside epoch 2) writes interrupted.pt; the
    resumed run equals the uninterrupted one."""
    from noisyfr.train.rundir import STOP_NAME, request_stop
    from noisyfr.train.step import Stepper

    out = tmp_path / "run"
    real_step, count = Stepper.step, {"n": 0}

    def step(self, *a, **k):
        result = real_step(self, *a, **k)
        count["n"] += 1
        if count["n"] == stop_at:
            if signum == "request":
                request_stop(out, "test")
            else:
                os.kill(os.getpid(), signum)     # arrives during the step; the step still completes
        return result

    by = f"the stop request {out / STOP_NAME}" if signum == "request" else signal.Signals(signum).name
    # what was installed before (an in-process ray.init of an earlier test on this worker leaves its own)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Stepper, "step", step)
        with pytest.raises(Stopped, match=f"stopped by {by} at epoch "
                                          f"{(stop_at + 1) // 2} step {stop_at}") as info:
            train(load_config(TINY, [("output_dir", str(out))]))
    assert info.value.code == (143 if signum == "request" else 128 + signum)
    assert {s: signal.getsignal(s) for s in before} == before          # handlers given back
    assert (out / "checkpoints" / "interrupted.pt").is_file() and not (out / LOCK_NAME).exists()
    assert not (out / "angles" / f"epoch_{(stop_at + 1) // 2}.parquet").exists()
    train(load_config(TINY, [("output_dir", str(out)), ("resume", True)]))
    _same_weights(uninterrupted / "checkpoints" / "last.pt", out / "checkpoints" / "last.pt")
    for epoch in (1, 2):
        pd.testing.assert_frame_equal(pd.read_parquet(uninterrupted / "angles" / f"epoch_{epoch}.parquet"),
                                      pd.read_parquet(out / "angles" / f"epoch_{epoch}.parquet"))
    a, b = pd.read_csv(uninterrupted / "metrics.csv"), pd.read_csv(out / "metrics.csv")
    for col in ("loss", "train_accuracy", "lr", "step", "clean_true_accuracy"):
        assert a[col].tolist() == b[col].tolist(), col
    assert not (out / "checkpoints" / "interrupted.pt").exists()


def test_sigterm_of_the_train_command_exits_143_and_resumes(config, tmp_path):
    out = tmp_path / "run"
    argv = ["train", config, "--out", out, "optim.epochs=12", "optim.batch_size=8"]
    proc = subprocess.Popen(_nf(*argv), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, lambda: (out / "checkpoints" / "epoch_1.pt").exists(), 60, 0.05)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 143, err
    assert len(lines) == 1 and lines[0].startswith("noisyfr train: stopped by SIGTERM") and "--resume" in lines[0]
    assert not (out / LOCK_NAME).exists()
    done = len(pd.read_csv(out / "metrics.csv"))
    assert done < 12
    assert "stopped by SIGTERM" in (out / "train.log").read_text()
    # the resume in this process: a second command's start (torch's import) is not what is tested
    assert main([*map(str, argv), "--resume"]) == 0
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == list(range(1, 13))


def test_the_stop_request_alone_stops_a_train_mid_epoch_and_resume_clears_a_stale_one(config, tmp_path):
    """``RUN/.stop`` written while ``noisyfr train`` runs (no signal) stops it after the current
    step with interrupted.pt, exit 143 and one line; the request is left behind, and ``--resume``
    removes it instead of stopping at once."""
    from noisyfr.train.rundir import STOP_NAME, request_stop

    out = tmp_path / "run"
    argv = ["train", config, "--out", out, "optim.epochs=3", "optim.batch_size=8",
            "data.train=synthetic:ids=4,per_id=64,size=32,seed=0"]         # 32 steps an epoch
    proc = subprocess.Popen(_nf(*argv), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, lambda: (out / "metrics.csv").exists(), 120, 0.05)
        time.sleep(0.3)                                                     # inside epoch 2
        request_stop(out, "test")
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 143, err
    assert len(lines) == 1 and lines[0].startswith(f"noisyfr train: stopped by the stop request {out / STOP_NAME} "
                                                   "at epoch 2 step "), lines
    assert lines[0].endswith("interrupted.pt holds the run: continue with --resume"), lines
    assert load_checkpoint(out / "checkpoints" / "interrupted.pt")["partial"]["epoch"] == 2
    assert (out / STOP_NAME).exists() and not (out / LOCK_NAME).exists()   # stale from here on
    assert main([*map(str, argv), "--resume"]) == 0                      # in this process
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert not (out / STOP_NAME).exists() and not (out / "checkpoints" / "interrupted.pt").exists()


def test_sweep_overwrite_replaces_only_what_the_sweep_wrote(tmp_path):
    """``sweep --overwrite``: the used-directory check lets it through, and the clearing removes
    the sweep's own files and nothing else; with --resume it is refused."""
    from noisyfr.tune import run as sweep_run
    from noisyfr.tune.spec import STATE_FILE

    sdir = tmp_path / "sw"
    for name in ("trials/t0", "tune", "manifests", "report/tables"):
        (sdir / name).mkdir(parents=True)
    for name in (STATE_FILE, "results.csv", "summary.md", "trials/t0/metrics.csv", "notes.txt"):
        (sdir / name).write_text("x")
    sweep_run.clear_sweep(sdir)
    assert sorted(p.name for p in sdir.iterdir()) == ["notes.txt"]


def test_sweep_refusal_names_overwrite_and_resume_with_overwrite_is_refused(tmp_path, capsys):
    from noisyfr.tune.spec import STATE_FILE

    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "s", "device": "cpu", "data": {"train": "synthetic:ids=2,per_id=2,size=32,seed=0",
                                               "image_size": 32},
        "model": {"backbone": "small_cnn", "embedding_dim": 8}, "optim": {"epochs": 1, "batch_size": 2},
        "grid": {"seed": [0]}}))
    sdir = tmp_path / "sw"
    sdir.mkdir()
    (sdir / STATE_FILE).write_text("{}")
    before = sorted(p.name for p in sdir.iterdir())
    for extra, needle in (([], "--overwrite to replace it"), (["--resume", "--overwrite"], "exclude each other")):
        code = exit_status(["sweep", str(cfg), "--out", str(sdir), *extra])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
        assert sorted(q.name for q in sdir.iterdir()) == before
