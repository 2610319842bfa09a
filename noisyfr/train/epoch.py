"""One epoch of the training recipe (:func:`noisyfr.train.trainer.train`): its steps with the
per-sample angle rows, the agreed stop between ranks (and the state saved when one comes
mid-epoch), the epoch's totals, the angle summary, evaluation, the health rule, and what is saved
after it."""
from __future__ import annotations

import math
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from noisyfr.errors import Stopped
from noisyfr.io import atomic_write
from noisyfr.train import angles as angles_mod
from noisyfr.train import heldout as heldout_mod
from noisyfr.train import parallel, rundir
from noisyfr.train.checkpoint import INTERRUPTED, prune_checkpoints, save_checkpoint, save_interrupted
from noisyfr.train.schedule import epoch_seed
from noisyfr.train.step import Stepper

# Keys that must be equal between a checkpoint and the config resuming from it.

if TYPE_CHECKING:
    from noisyfr.train.trainer import _Run


def train_epoch(run: _Run, stepper: Stepper, epoch: int) -> tuple[dict, angles_mod.AngleTracker]:
    """One pass over the (sharded) training set: the epoch's totals and its angle rows."""
    seed, epochs = run.cfg["seed"], run.cfg["optim"]["epochs"]
    torch.manual_seed(epoch_seed(seed, epoch))
    run.sampler.set_epoch(epoch)
    run.loader.generator.manual_seed(epoch_seed(seed, epoch))
    loader = run.loader
    run.head.set_epoch(epoch)
    run.model.train()
    run.head.train()
    stepper.tracker = tracker = angles_mod.AngleTracker()
    loss_sum, correct, seen, done = 0.0, 0, 0, 0
    part, run.partial = run.partial, None
    if part is not None and int(part["epoch"]) == epoch:  # stopped mid-epoch: go on from there
        mine = part["ranks"][run.rank] if "ranks" in part else part
        done, loss_sum, correct, seen = (int(part["batches"]), float(mine["loss_sum"]), int(mine["correct"]),
                                         int(mine["seen"]))
        rows = mine["rows"]
        if len(rows["sample_index"]):
            tracker.add(rows["sample_index"], rows["label"], rows["label_used"], rows["values"])
        torch.set_rng_state(mine["rng"].cpu())
        if run.device.type == "cuda" and mine.get("cuda_rng"):  # manual_seed above reseeded CUDA too
            torch.cuda.set_rng_state_all([t.cpu() for t in mine["cuda_rng"]])
        if mine.get("head_rng") is not None and hasattr(run.head, "load_sampling_state"):
            run.head.load_sampling_state(mine["head_rng"])
    run.batches.skip = done
    lr_used = run.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    bar = tqdm(loader, total=len(loader), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
               disable=None if run.rank == 0 else True)
    try:
        for images, labels, index in bar:
            loss_val, n_correct, lr_used = stepper.step(images, labels, index,
                                                        where=f"epoch {epoch} step {run.step + 1}")
            run.step += 1
            done += 1
            loss_sum, seen, correct = loss_sum + loss_val * len(labels), seen + len(labels), correct + n_correct
            img_s = seen * run.world / max(time.perf_counter() - t0, 1e-9)
            run.monitor.step(run.step, loss_val, lr_used, img_s)
            if bar.disable is False and run.step % 10 == 0:
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr_used:.4g}", img_s=f"{img_s:.0f}", refresh=False)
            if stop_agreed(run):
                _stop_mid_epoch(run, epoch, done, tracker, loss_sum, correct, seen)
    finally:
        bar.close()
        run.batches.skip = 0
    return _epoch_totals(run, epoch, loss_sum, correct, seen, time.perf_counter() - t0, lr_used), tracker


def _state(run: _Run, epoch: int) -> dict:
    """The checkpoint dict after ``epoch`` completed epochs (rank 0; every rank must call
    :func:`parallel.head_state` / :func:`parallel.optimizer_state` before)."""
    return {"config": run.cfg, "model": run.model.state_dict(), "head": parallel.head_state(run.head),
            "optimizer": parallel.optimizer_state(run.optimizer, run.head),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else []},
            "epoch": epoch, "step": run.step, "num_classes": run.num_classes,
            "embedding_dim": run.cfg["model"]["embedding_dim"], "history": run.history}


def stop_agreed(run: _Run) -> bool:
    """Whether the run stops now, the same answer on every rank: this process's signal, or (rank 0)
    the run directory's stop request, all-reduced over the ranks after every step. Sets
    ``run.stop`` once it is agreed."""
    if run.stop is not None:
        return True
    signum = run.stop_signal or 0  # read once: the handler may set it meanwhile (next step then)
    by_request = False
    if not signum and run.rank == 0 and os.path.exists(run.out_dir / rundir.STOP_NAME):
        signum, by_request = int(signal.SIGTERM), True
    if run.world > 1:  # on the training device: NCCL cannot reduce CPU tensors
        flags = torch.tensor([signum, int(by_request)], dtype=torch.int64, device=run.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, by_request = int(flags[0]), bool(flags[1])
    if signum:
        run.stop = (signum, by_request)
    return run.stop is not None


def stopped_by(run: _Run) -> str:
    signum, by_request = run.stop
    return f"the stop request {run.out_dir / rundir.STOP_NAME}" if by_request else signal.Signals(signum).name


def _stop_mid_epoch(run: _Run, epoch: int, done: int, tracker: angles_mod.AngleTracker, loss_sum: float,
                    correct: int, seen: int) -> None:
    """A stop was agreed: write ``checkpoints/interrupted.pt`` (the usual checkpoint plus the
    epoch's position and, for every rank, its angle rows, sums and RNG states), flush the logs and
    raise :class:`Stopped` (on every rank, once rank 0 has written the file)."""
    rows = {k: torch.cat(getattr(tracker, f"_{a}")) if getattr(tracker, f"_{a}") else torch.zeros(0)
            for k, a in (("sample_index", "index"), ("label", "labels"), ("label_used", "used"),
                         ("values", "values"))}
    sampling = getattr(run.head, "sampling_state", None)
    mine = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
            "head_rng": sampling() if sampling is not None else None,
            "rows": {k: v.cpu() for k, v in rows.items()}}
    state = _state(run, epoch - 1)  # every rank: a sharded head is gathered
    if run.world > 1:
        ranks: list[Any] | None = [None] * run.world if run.rank == 0 else None
        dist.gather_object(mine, ranks, dst=0)
        partial = {"epoch": epoch, "batches": done, "ranks": ranks}
    else:
        partial = {"epoch": epoch, "batches": done, **mine}
    path = run.out_dir / "checkpoints" / INTERRUPTED
    if run.rank == 0:
        state["partial"] = partial
        path = save_interrupted(state, run.out_dir)
    if run.world > 1:
        dist.barrier()  # no rank ends (and makes its launcher end the others) before the file is written
    run.stopped_saved = True
    msg = (f"stopped by {stopped_by(run)} at epoch {epoch} step {run.step} ({done} of {len(run.loader)} "
           f"batches{f', on each of {run.world} processes' if run.world > 1 else ''}); "
           f"{path} holds the run: continue with --resume")
    run.monitor.message(msg)
    raise Stopped(run.stop[0], msg)


def _epoch_totals(run: _Run, epoch: int, loss_sum: float, correct: int, seen: int, train_time: float,
                  lr_used: float) -> dict:
    """The epoch's loss, accuracy and speed, reduced over the ranks (identical on every rank)."""
    totals = torch.tensor([loss_sum, float(correct), float(seen), train_time], dtype=torch.float64)
    if run.world > 1:  # on the training device: NCCL cannot reduce CPU tensors
        sums, mx = totals[:3].to(run.device), totals[3:].to(run.device)
        dist.all_reduce(sums)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        totals = torch.cat([sums, mx]).cpu()
    return {"epoch": epoch, "step": run.step,
            "loss": float(totals[0] / max(totals[2], 1)),
            "train_accuracy": float(totals[1] / max(totals[2], 1)),
            "lr": float(lr_used),
            "img_per_s": float(totals[2] / max(float(totals[3]), 1e-9)),
            "epoch_time_s": float(totals[3])}


def angle_summary(run: _Run, tracker: angles_mod.AngleTracker, epoch: int) -> dict:
    """Health and angle summary of the epoch's rows (all ranks gathered, every sample); rank 0
    writes the log on the epochs of ``track.angles_every``, with the rows of the samples of
    ``track.angles_fraction``."""
    arrays = tracker.arrays()
    if run.world > 1:
        gathered: list[Any] = [None] * run.world
        dist.all_gather_object(gathered, arrays)
        arrays = {k: np.concatenate([g[k] for g in gathered]) for k in arrays}
    frame = angles_mod.rows_frame(arrays, epoch)
    out = angles_mod.epoch_summary(frame, run.noise_types, run.orig_labels)
    track = run.cfg["track"]
    if track["angles"] and run.rank == 0 and \
            angles_mod.is_logged_epoch(epoch, run.cfg["optim"]["epochs"], track["angles_every"]):
        angles_mod.write_angles(angles_mod.keep_samples(frame, run.logged_samples), run.out_dir, epoch)
    run.frame = frame
    return out


def evaluate(run: _Run, epoch: int) -> dict:
    """Verification accuracy of the sets due this epoch (rank 0, broadcast) and the best so far,
    by the code of ``noisyfr eval --val`` (:func:`noisyfr.eval.suite.evaluate_sets`)."""
    from noisyfr.eval.suite import evaluate_sets

    cfg, ev = run.cfg, run.cfg["eval"]
    due = epoch in ev["epochs"] if ev["epochs"] is not None else (
        epoch == cfg["optim"]["epochs"] or (ev["every"] > 0 and epoch % ev["every"] == 0))
    val = {"val_accuracy": math.nan, **{f"val/{n}/accuracy": math.nan for n, _ in run.vsets},
           **run.reference}
    sharded = getattr(run.head, "sharded", False)
    if run.rank == 0 or sharded:  # every epoch: the held-out images of the training identities
        val.update(heldout_mod.heldout_accuracy(run.model, run.head, run.heldout, run.device,
                                                ev["batch_size"]))
    if run.rank == 0 and run.vsets and due:
        results = evaluate_sets(run.model, [vset for _, vset in run.vsets],
                                image_size=cfg["data"]["image_size"],
                                center_crop=cfg["data"]["center_crop"], batch_size=ev["batch_size"],
                                device=run.device)
        for (name, _), res in zip(run.vsets, results):
            val[f"val/{name}/accuracy"] = float(res["accuracy"])
        val["val_accuracy"] = float(np.mean([val[f"val/{n}/accuracy"] for n, _ in run.vsets]))
    if run.world > 1:
        box = [val]
        dist.broadcast_object_list(box, src=0)
        val = box[0]
    best = [h.get("val_accuracy", math.nan) for h in run.history] + [val["val_accuracy"]]
    best = [v for v in best if isinstance(v, float) and math.isfinite(v)]
    val["best_val_accuracy"] = max(best) if best else math.nan
    return val


def health(run: _Run, metrics: dict) -> dict:
    """``learned`` and ``learned_on`` of the epoch (held-out evidence when there is some)."""
    ok, on = heldout_mod.learned_from(metrics, run.cfg["health"])
    return {"learned": ok, "learned_on": on}


def save_epoch(run: _Run, metrics: dict) -> None:
    """Checkpoint, metrics.csv and the epoch line (rank 0); every rank keeps the history."""
    epoch = metrics["epoch"]
    metrics["checkpoint"] = str(run.out_dir / "checkpoints" / f"epoch_{epoch}.pt")
    run.history.append(dict(metrics))
    state = _state(run, epoch)  # every rank: a sharded head is gathered
    if run.rank == 0:
        save_checkpoint(state, run.out_dir)
        (run.out_dir / "checkpoints" / INTERRUPTED).unlink(missing_ok=True)
        prune_checkpoints(run.out_dir, run.cfg["checkpoint"]["keep"])
        with atomic_write(run.out_dir / "metrics.csv", "w", newline="") as fh:
            pd.DataFrame(run.history).to_csv(fh, index=False)
    run.monitor.epoch(metrics, run.frame, run.noise_types)
    if run.world > 1:
        dist.barrier()
