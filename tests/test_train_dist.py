"""train() inside an initialised torch.distributed group (2 gloo processes on CPU, as Ray Train does).

The ranks are forked from the test process (``start_method="fork"``): a spawned rank imports
torch, torchvision and noisyfr again, about 3 s of CPU each, most of what these tests cost."""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from noisyfr.io import load_checkpoint
from noisyfr.train import load_config
from noisyfr.train.angles import logged_samples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    from noisyfr.train import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        reports = []
        train(cfg, report=reports.append)
        Path(out, f"reports_{rank}.json").write_text(json.dumps(reports))
        dist.barrier()  # both ranks done before either tears its gloo connections down
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes(tmp_path):
    run = tmp_path / "run"
    cfg = load_config({"data": {"train": "synthetic:ids=4,per_id=4,size=32,seed=0", "image_size": 32,
                                "noise": {"closed": 0.25, "seed": 0}},
                       "model": {"backbone": "small_cnn", "embedding_dim": 16},
                       "loss": {"name": "arcface", "s": 30.0, "m": 0.3},
                       "optim": {"epochs": 2, "batch_size": 8, "lr": 0.05},
                       "device": "cpu", "output_dir": str(run)})
    mp.start_processes(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0 = json.loads((tmp_path / "reports_0.json").read_text())
    assert [r["epoch"] for r in r0] == [1, 2]
    # every rank reports the same metrics (compared as text: NaN != NaN)
    assert (tmp_path / "reports_0.json").read_text() == (tmp_path / "reports_1.json").read_text()
    assert r0[-1]["step"] == 2 * 2                      # 16 samples, global batch 8
    assert math.isfinite(r0[-1]["noisy_auc"])
    for epoch in (1, 2):                                # rows of both ranks, every sample once
        frame = pd.read_parquet(run / "angles" / f"epoch_{epoch}.parquet")
        assert frame["sample_index"].tolist() == list(range(16))
        assert frame["weight"].notna().all()
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    assert (run / "checkpoints" / "last.pt").is_file()
    assert np.isfinite(pd.read_csv(run / "metrics.csv")["loss"]).all()


def _torchrun_worker(rank: int, world: int, port: int, path: str) -> None:
    from noisyfr.cli import main as cli_main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    code = cli_main(["train", path])
    Path(path).with_name(f"exit_{rank}").write_text(str(code))


def test_noisyfr_train_under_torchrun_starts_its_own_process_group(tmp_path):
    run = tmp_path / "run"
    cfg = {"data": {"train": "synthetic:ids=4,per_id=2,size=32,seed=0", "image_size": 32},
           "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.25, "sync_bn": True},
           "loss": {"name": "arcface", "s": 16.0, "sample_rate": 0.5},
           "optim": {"epochs": 1, "batch_size": 4, "lr": 0.05}, "device": "cpu",
           # the last epoch is logged whatever angles_every; 6 of the 8 samples (4 per rank)
           "track": {"angles_every": 2, "angles_fraction": 0.75},
           "output_dir": str(run)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    mp.start_processes(_torchrun_worker, args=(2, _free_port(), str(path)), nprocs=2, join=True, start_method="fork")
    assert [(tmp_path / f"exit_{r}").read_text() for r in range(2)] == ["0", "0"]
    frame = pd.read_parquet(run / "angles" / "epoch_1.parquet")
    expected = logged_samples(np.arange(8), 0.75, seed=0)
    assert len(expected) == 6                                   # more than one rank holds
    assert frame["sample_index"].tolist() == expected.tolist()  # both ranks' samples of the subset
    assert load_checkpoint(run / "checkpoints" / "last.pt")["head"]["weight"].shape == (4, 16)


# --------------------------------------------------------------------------- a clean stop of every rank
def _stopping_worker(rank: int, world: int, port: int, path: str, argv: list, stop_rank: int, stop_at: int,
                     tag: str) -> None:
    """``noisyfr train`` as one torchrun rank; rank ``stop_rank`` SIGTERMs itself during its optimiser
    step ``stop_at`` (0: never). Writes its exit status and stderr next to the config."""
    import contextlib
    import io
    import signal

    from noisyfr.cli import main as cli_main
    from noisyfr.train.step import Stepper

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if rank == stop_rank and stop_at:
        real, count = Stepper.step, {"n": 0}

        def step(self, *a, **k):
            result = real(self, *a, **k)
            count["n"] += 1
            if count["n"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)   # this rank only: torchrun would send it to each
            return result

        Stepper.step = step
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(["train", path, *argv])
    Path(path).with_name(f"{tag}_exit_{rank}").write_text(str(code))
    Path(path).with_name(f"{tag}_err_{rank}").write_text(err.getvalue())


DIST_STOP = {"data": {"train": "synthetic:ids=16,per_id=2,size=32,seed=0", "image_size": 32},
             "model": {"backbone": "small_cnn", "embedding_dim": 16},
             # Partial FC: a sharded head whose negative sampling draws from its own generator
             "loss": {"name": "arcface", "s": 16.0, "sample_rate": 0.5},
             "optim": {"epochs": 2, "batch_size": 4, "lr": 0.05}, "device": "cpu", "seed": 1}


def _spawn_train(tmp_path: Path, tag: str, argv: list, stop_rank: int = -1, stop_at: int = 0) -> list[tuple]:
    path = tmp_path / "c.yaml"
    mp.start_processes(_stopping_worker, args=(2, _free_port(), str(path), argv, stop_rank, stop_at, tag), nprocs=2,
                       join=True, start_method="fork")
    return [(int((tmp_path / f"{tag}_exit_{r}").read_text()),
             (tmp_path / f"{tag}_err_{r}").read_text().strip().splitlines()) for r in range(2)]


@pytest.mark.slow
def test_sigterm_of_one_rank_stops_every_rank_at_one_step_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    """Under torchrun a SIGTERM (here of rank 1 alone, during step 11 of 16: epoch 2, 3 of its 8
    batches) stops every rank after that step: the ranks agree by an all-reduce of the stop flag,
    rank 0 writes interrupted.pt with each rank's position, sums, angle rows and RNG states (the
    Partial FC head's sampling generator too), every rank exits 143 with one line, and ``--resume``
    with 2 processes ends with the tensors of an uninterrupted 2-process run."""
    from noisyfr.cli import main as cli_main

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(DIST_STOP))
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert [c for c, _ in _spawn_train(tmp_path, "ref", ["--out", str(ref)])] == [0, 0]

    stopped = _spawn_train(tmp_path, "stop", ["--out", str(run)], stop_rank=1, stop_at=11)
    for code, lines in stopped:
        assert code == 143 and len(lines) == 1, stopped
        assert lines[0].startswith("noisyfr train: stopped by SIGTERM at epoch 2 step 11 (3 of 8 batches, on each "
                                   "of 2 processes); "), lines
    state = load_checkpoint(run / "checkpoints" / "interrupted.pt")
    part = state["partial"]
    assert state["epoch"] == 1 and state["step"] == 11 and (part["epoch"], part["batches"]) == (2, 3)
    assert len(part["ranks"]) == 2 and [len(r["rows"]["sample_index"]) for r in part["ranks"]] == [6, 6]
    assert all(r["head_rng"] is not None for r in part["ranks"])       # negatives were drawn this epoch
    assert not (run / "angles" / "epoch_2.parquet").exists()

    # one process cannot go on with the position of two: one line, nothing written
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert cli_main(["train", str(tmp_path / "c.yaml"), "--out", str(run), "--resume"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "stopped mid-epoch in a run of 2 processes, this one has 1" in line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before

    assert [c for c, _ in _spawn_train(tmp_path, "resume", ["--out", str(run), "--resume"])] == [0, 0]
    a, b = load_checkpoint(ref / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("model", "head"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for epoch in (1, 2):
        pd.testing.assert_frame_equal(pd.read_parquet(ref / "angles" / f"epoch_{epoch}.parquet"),
                                      pd.read_parquet(run / "angles" / f"epoch_{epoch}.parquet"))
    ma, mb = pd.read_csv(ref / "metrics.csv"), pd.read_csv(run / "metrics.csv")
    for col in ("loss", "train_accuracy", "lr", "step", "clean_true_accuracy"):
        assert ma[col].tolist() == mb[col].tolist(), col
    assert not (run / "checkpoints" / "interrupted.pt").exists()
