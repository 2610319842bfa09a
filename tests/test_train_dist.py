"""train() inside an initialised torch.distributed group (2 gloo processes on CPU, as Ray Train does)."""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
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
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "reports_0.json").read_text())
    r1 = json.loads((tmp_path / "reports_1.json").read_text())
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
    mp.spawn(_torchrun_worker, args=(2, _free_port(), str(path)), nprocs=2, join=True)
    assert [(tmp_path / f"exit_{r}").read_text() for r in range(2)] == ["0", "0"]
    frame = pd.read_parquet(run / "angles" / "epoch_1.parquet")
    expected = logged_samples(np.arange(8), 0.75, seed=0)
    assert len(expected) == 6                                   # more than one rank holds
    assert frame["sample_index"].tolist() == expected.tolist()  # both ranks' samples of the subset
    assert load_checkpoint(run / "checkpoints" / "last.pt")["head"]["weight"].shape == (4, 16)
