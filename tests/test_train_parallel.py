"""Data and model parallel training on 2 gloo processes (CPU): one DDP step and one Partial FC step
against the single-process step on the concatenated batch, Partial FC under sampling against a
softmax over the sampled classes, and a Partial FC run's checkpoint and resume. The 2 processes are
forked from the test process, as in tests/test_train_dist.py."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from noisyfr.io import load_checkpoint
from noisyfr.losses import MarginHead, build_loss
from noisyfr.train import load_config
from noisyfr.train.angles import AngleTracker
from noisyfr.train.step import Stepper

WORLD, B, C, DIM, SIZE = 2, 8, 10, 16, 32  # global batch 8 = 2 ranks x 4; 10 classes (5 per rank)
LOSSES = {"arcface": {"s": 16.0, "m": 0.3}, "curricularface": {"s": 16.0, "alpha": 0.5},
          "magface": {"s": 16.0, "lambda_g": 5.0}, "subcenter_arcface": {"s": 16.0, "K": 2}}
STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(**model) -> dict:
    return load_config({"data": {"train": "synthetic:ids=2,per_id=2,size=32", "image_size": SIZE},
                        "model": {"backbone": "small_cnn", "embedding_dim": DIM, "width": 0.25,
                                  **model}, "device": "cpu"})


def _problem(loss: str):
    """The same backbone, head and batches in every process (seeded), in float64 so that the
    comparisons see the arithmetic, not the float32 rounding of a different summation order."""
    from noisyfr.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("small_cnn", embedding_dim=DIM, image_size=SIZE, width=0.25).double()
    head = MarginHead(DIM, C, build_loss(loss, **LOSSES[loss])).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(B, 3, SIZE, SIZE, generator=g, dtype=torch.float64),
                torch.randint(0, C, (B,), generator=g)) for _ in range(STEPS)]
    orig = torch.randint(-1, C, (STEPS * B,), generator=g)
    return model, head, batches, orig


def _run(model_call, head, head_call, params, batches, orig, rows=slice(None)):
    """STEPS SGD steps on ``rows`` of each batch: losses and the angle rows of every step."""
    opt = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=5e-4)
    stepper = Stepper(model_call, head, opt, head_call=head_call, orig_labels=orig)
    stepper.tracker = AngleTracker()
    losses = []
    for k, (images, labels) in enumerate(batches):
        index = torch.arange(k * B, (k + 1) * B)[rows]
        losses.append(stepper.step(images[rows], labels[rows], index)[0])
    return losses, stepper.tracker.arrays()


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from noisyfr.distributed import shard_range
    from noisyfr.losses.partial_fc import PartialFCHead
    from noisyfr.train import parallel, train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    mine = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    result = {}
    try:
        # DDP + synchronised BatchNorm, replicated head
        model, head, batches, orig = _problem("arcface")
        cfg = _cfg(sync_bn=True)
        model = parallel.sync_batchnorm(model, cfg, torch.device("cpu"), WORLD)
        model_call, head_call = parallel.wrap(model, head, cfg, torch.device("cpu"), WORLD)
        params = list(model.parameters()) + list(head.parameters())
        losses, rows = _run(model_call, head, head_call, params, batches, orig, mine)
        result["ddp"] = {"losses": losses, "rows": rows,
                         "params": [p.detach().clone() for p in params],
                         "buffers": {k: v.clone() for k, v in model.named_buffers()}}
        # Partial FC, sample_rate 1: every loss (centres copied from the full head's)
        for loss in LOSSES:
            model, full, batches, orig = _problem(loss)
            model = parallel.sync_batchnorm(model, cfg, torch.device("cpu"), WORLD)
            head = PartialFCHead(DIM, C, build_loss(loss, **LOSSES[loss]), 1.0).double()
            start, n = shard_range(C, rank, WORLD)
            K = head.K
            with torch.no_grad():
                head.weight.copy_(full.weight[start * K:(start + n) * K])
            model_call, _ = parallel.wrap(model, head, cfg, torch.device("cpu"), WORLD)
            params = list(model.parameters()) + list(head.parameters())
            losses, rows = _run(model_call, head, head, params, batches, orig, mine)
            result[f"pfc/{loss}"] = {"losses": losses, "rows": rows, "shard": (start, n),
                                     "model": [p.detach().clone() for p in model.parameters()],
                                     "weight": head.weight.detach().clone()}
        # Partial FC, sample_rate 0.5: which classes each rank sampled, forward only
        model, full, batches, orig = _problem("arcface")
        head = PartialFCHead(DIM, C, build_loss("arcface", **LOSSES["arcface"]), 0.5).double()
        start, n = shard_range(C, rank, WORLD)
        with torch.no_grad():
            head.weight.copy_(full.weight[start:start + n])
        images, labels = batches[0]
        value, _, cos = head(model.eval()(images[mine]), labels[mine])
        result["sampled"] = {"loss": float(value.detach()), "columns": cos.shape[1], "shard": (start, n),
                             "classes": head.last.classes.tolist()}
        torch.save(result, Path(out) / f"steps_{rank}.pt")
        # a Partial FC run, its checkpoint and resume (2 epochs == stopped after 1 + resumed)
        reports = []
        train(_train_cfg(Path(out) / "whole"), report=reports.append)
        Path(out, f"reports_whole_{rank}.json").write_text(json.dumps(reports))

        def stop_after_first_epoch(metrics):
            if metrics["epoch"] == 1:
                raise KeyboardInterrupt

        try:
            train(_train_cfg(Path(out) / "split"), report=stop_after_first_epoch)
        except KeyboardInterrupt:
            pass
        train(_train_cfg(Path(out) / "split", resume=True))
    finally:
        dist.destroy_process_group()


def _train_cfg(out: Path, resume: bool = False) -> dict:
    raw = {"data": {"train": "synthetic:ids=16,per_id=2,size=32,seed=0", "image_size": SIZE,
                    "noise": {"closed": 0.25, "seed": 0}},
           "model": {"backbone": "small_cnn", "embedding_dim": DIM, "width": 0.25},
           "loss": {"name": "subcenter_arcface", "s": 16.0, "K": 2, "sample_rate": 0.75},
           "optim": {"epochs": 2, "batch_size": 8, "lr": 0.05, "grad_clip": 5.0},
           "device": "cpu", "output_dir": str(out), "resume": resume}
    return load_config(raw)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="fork")
    return out, [torch.load(out / f"steps_{r}.pt", weights_only=False) for r in range(WORLD)]


def _reference(loss: str):
    model, head, batches, orig = _problem(loss)
    params = list(model.parameters()) + list(head.parameters())
    losses, rows = _run(model, head, head, params, batches, orig)
    return model, head, losses, rows


def _check_update(got: list[torch.Tensor], ref: list[torch.Tensor], start: list[torch.Tensor]):
    """Parameters after the steps equal the reference's, and so do the updates."""
    for p, q, p0 in zip(got, ref, start):
        q, p0 = q.detach(), p0.detach()
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)
        assert float((p - q).norm()) <= 1e-7 * float((q - p0).norm()) + 1e-12


def _check_rows(got: list[dict], ref: dict, cols=slice(None)) -> None:
    """Each rank's angle rows equal the reference's rows of the same samples."""
    for rank_rows in got:
        idx = rank_rows["sample_index"]
        pos = [int(np.flatnonzero(ref["sample_index"] == i)[0]) for i in idx]
        np.testing.assert_array_equal(rank_rows["label"], ref["label"][pos])
        np.testing.assert_allclose(rank_rows["values"][:, cols], ref["values"][pos][:, cols],
                                   rtol=2e-4, atol=2e-5)


def test_ddp_step_with_sync_bn_equals_the_single_process_step(spawned):
    _, results = spawned
    model, head, ref_losses, ref_rows = _reference("arcface")
    ref_params = list(model.parameters()) + list(head.parameters())
    model0, head0, _, _ = _problem("arcface")
    # every rank's loss is its half's mean: the average over the ranks is the global mean
    got = np.mean([r["ddp"]["losses"] for r in results], axis=0)
    np.testing.assert_allclose(got, ref_losses, rtol=1e-12)
    for r in results:
        _check_update(r["ddp"]["params"], ref_params,
                      list(model0.parameters()) + list(head0.parameters()))
        for name, buf in model.named_buffers():  # synchronised BatchNorm: global statistics
            torch.testing.assert_close(r["ddp"]["buffers"][name], buf, rtol=1e-9, atol=1e-11)
    _check_rows([r["ddp"]["rows"] for r in results], ref_rows)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_partial_fc_at_rate_one_equals_the_full_head(spawned, loss):
    _, results = spawned
    model, head, ref_losses, ref_rows = _reference(loss)
    model0, head0, _, _ = _problem(loss)
    K = head.K
    for r in results:
        got = r[f"pfc/{loss}"]
        np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-12)  # the global mean
        _check_update(got["model"], list(model.parameters()), list(model0.parameters()))
        start, n = got["shard"]
        rows = slice(start * K, (start + n) * K)
        _check_update([got["weight"]], [head.weight[rows]], [head0.weight[rows]])
    _check_rows([r[f"pfc/{loss}"]["rows"] for r in results], ref_rows)


def test_partial_fc_sampling_is_a_softmax_over_the_sampled_classes(spawned):
    _, results = spawned
    model, head, batches, _ = _problem("arcface")
    images, labels = batches[0]
    _, logits, _ = head(model.eval()(images), labels)
    for r in results:  # 5 classes per rank at rate 0.5: 2 drawn, unless the positives are more
        start, n = r["sampled"]["shard"]
        mine = set(range(start, start + n))
        chosen = r["sampled"]["classes"]
        assert chosen == sorted(chosen) and set(chosen) <= mine
        positives = set(labels.tolist()) & mine
        assert positives <= set(chosen)
        assert len(chosen) == max(2, len(positives)) == r["sampled"]["columns"]
    union = sorted(c for r in results for c in r["sampled"]["classes"])
    assert len(union) < C  # something was left out
    remap = {c: i for i, c in enumerate(union)}
    ref = torch.nn.functional.cross_entropy(logits.detach()[:, union],
                                            torch.tensor([remap[int(y)] for y in labels]))
    for r in results:
        assert r["sampled"]["loss"] == pytest.approx(float(ref), rel=1e-12)


def test_partial_fc_run_saves_the_full_head_and_resumes_exactly(spawned):
    out, _ = spawned
    whole = [json.loads((out / f"reports_whole_{r}.json").read_text()) for r in range(WORLD)]
    assert json.dumps(whole[0]) == json.dumps(whole[1])  # same metrics on every rank
    assert [m["epoch"] for m in whole[0]] == [1, 2]
    a = load_checkpoint(out / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "split" / "checkpoints" / "last.pt")
    assert a["head"]["weight"].shape == (16 * 2, DIM)           # the full head: 16 classes x K=2
    assert a["head"]["subcentre_counts"].shape == (16, 2)
    # every sample counted each epoch: epoch 2 in the current counts, epoch 1 in the previous
    assert int(a["head"]["subcentre_counts"].sum()) == 32
    assert int(a["head"]["subcentre_counts_prev"].sum()) == 32
    assert int(a["head"]["subcentre_epoch"]) == 2
    for key in ("model", "head"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, rtol=0, atol=0, msg=f"{key}.{name}")
    for i, st in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][i]["momentum_buffer"],
                                   st["momentum_buffer"], rtol=0, atol=0)
    frame = pd.read_parquet(out / "whole" / "angles" / "epoch_2.parquet")
    assert frame["sample_index"].tolist() == list(range(32))
    assert frame[["theta_y", "theta_nearest", "weight", "grad_norm"]].notna().all().all()
    assert (frame["nearest_label"] != frame["label"]).all()
