"""The training loop: backbone + margin head, SGD with warmup and a cosine/poly/step schedule.

``train(config, report=None)`` runs a whole training described by a config from
:func:`noisyfr.train.load_config` and writes the run directory::

    output_dir/config.yaml                 resolved config (written at start)
    output_dir/metrics.csv                 one row per epoch
    output_dir/angles/epoch_<E>.parquet    per-sample angles (see noisyfr.train.angles)
    output_dir/checkpoints/epoch_<E>.pt    checkpoint after epoch E, and last.pt

Determinism: shuffling comes from a DistributedSampler seeded with (seed, epoch) and the global
torch generator (augmentation, dropout) is re-seeded from (seed, epoch) at the start of every
epoch, so a resumed run needs no sampler state and equals the uninterrupted run on CPU.

Distributed: when ``torch.distributed`` is initialised (e.g. inside a Ray Train worker) every
rank trains on its shard of the data (``optim.batch_size`` is the global batch), gradients are
all-reduced, angle rows are all-gathered, every rank calls ``report`` with the same metrics and
only rank 0 writes files.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_write
from noisyfr.train import angles as angles_mod
from noisyfr.train.checkpoint import (last_checkpoint, load_checkpoint, prune_checkpoints,
                                      save_checkpoint)
from noisyfr.train.config import dump_config, load_config

# Keys that must be equal between a checkpoint and the config resuming from it.
_RESUME_KEYS = ("data.train", "data.manifest", "data.image_size", "data.max_samples",
                "model.backbone", "model.embedding_dim", "model.width", "loss", "seed")


# --------------------------------------------------------------------------- helpers
def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error.

    Under torch.distributed with CUDA, ``cuda``/``auto`` use the local rank's GPU (LOCAL_RANK).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NoisyFRError(f"config key 'device': {name!r} requested but CUDA is not available")
        if name == "cuda" and dist.is_available() and dist.is_initialized():
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the global torch generator for ``epoch`` (augmentation, dropout, workers)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def lr_factor(step: int, cfg: Mapping[str, Any], steps_per_epoch: int) -> float:
    """Learning-rate multiplier for optimiser step ``step`` (0-based).

    Linear warmup over ``optim.warmup_epochs`` (from lr/warmup_steps up to lr), then
    ``cosine``: min + (1 - min) * (1 + cos(pi * p)) / 2; ``poly``: min + (1 - min) * (1 - p)^power;
    ``step``: gamma^(number of optim.lr_steps epochs passed); ``constant``: 1;
    where p is the post-warmup progress in [0, 1) and min = min_lr / lr.
    """
    o = cfg["optim"]
    total = o["epochs"] * steps_per_epoch
    warm = int(round(o["warmup_epochs"] * steps_per_epoch))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    floor = o["min_lr"] / o["lr"]
    sched = o["schedule"]
    if sched == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if sched == "poly":
        return floor + (1.0 - floor) * (1.0 - p) ** o["power"]
    if sched == "step":
        epoch_f = step / steps_per_epoch
        return o["gamma"] ** sum(1 for e in o["lr_steps"] if epoch_f >= e)
    return 1.0


def make_batches(indices: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches; a trailing batch of one sample is merged into the previous one
    (BatchNorm cannot train on a single sample) so that every sample is seen every epoch."""
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


def _write_csv(history: list[dict[str, Any]], output_dir: Path) -> None:
    with atomic_write(output_dir / "metrics.csv", "w", newline="") as fh:
        pd.DataFrame(history).to_csv(fh, index=False)


def _open_dataset(cfg: dict[str, Any], transform, rank: int, world: int):
    """The training dataset: :class:`~noisyfr.noise.NoisyDataset` over ``data.train`` with
    ``data.manifest``.

    With ``data.noise`` and no ``data.manifest``, the manifest is first written to
    ``output_dir/manifest.parquet`` (kept as is when resuming) and ``data.manifest`` is set to it;
    with both, the manifest's sidecar must record that noise spec (a sweep's shared manifests).
    """
    from noisyfr.data import open_index
    from noisyfr.noise import NoiseSpec, NoisyDataset, inject_to, read_meta
    from noisyfr.noise.spec import spec_matches_meta

    data = cfg["data"]
    index = open_index(data["train"])
    if data["noise"] is not None:
        spec = NoiseSpec.from_mapping(data["noise"])
        if data["manifest"] is None:
            path = Path(cfg["output_dir"]) / "manifest.parquet"
            if rank == 0 and not (cfg["resume"] and path.is_file()):
                inject_to(index, spec, path, frame=False)
            if world > 1:
                dist.barrier()
            data["manifest"] = str(path)
        elif not spec_matches_meta(spec, read_meta(data["manifest"])):
            raise NoisyFRError(f"data.manifest {data['manifest']}: was not made with data.noise "
                               f"{spec.to_dict()} (its sidecar records another noise spec)")
    return NoisyDataset(index, manifest=data["manifest"], transform=transform)


def _check_labels(dataset, num_classes: int) -> None:
    labels = np.asarray(dataset.labels, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise NoisyFRError(f"data.train: sample {i} has label {int(labels[i])} outside the head's "
                           f"{num_classes} classes (0..{num_classes - 1})")


def _allreduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _broadcast_state(module: torch.nn.Module) -> None:
    for t in module.state_dict().values():
        if torch.is_tensor(t):
            dist.broadcast(t, 0)


def _remove_stale_outputs(out_dir: Path) -> None:
    """A fresh (not resumed) run owns its directory: drop the epoch files of an earlier run there
    (angle logs, checkpoints, metrics) so none outlives this run. The manifest and config stay."""
    stale = [out_dir / "metrics.csv", *out_dir.glob("angles/epoch_*.parquet"),
             *out_dir.glob("checkpoints/*.pt")]
    for path in stale:
        path.unlink(missing_ok=True)


def _check_resume(state: Mapping[str, Any], cfg: Mapping[str, Any], path: Path) -> None:
    for key in _RESUME_KEYS:
        old, new = _get(state["config"], key), _get(cfg, key)
        if old != new:
            raise NoisyFRError(f"resume: checkpoint {path} was trained with {key}={old!r}, "
                               f"the config has {key}={new!r}")


def _evaluate_sets(model, vsets, cfg, device) -> dict[str, float]:
    from noisyfr.eval import evaluate

    out: dict[str, float] = {}
    accs = []
    for name, vset in vsets:
        res = evaluate(model, vset, image_size=cfg["data"]["image_size"],
                       center_crop=cfg["data"]["center_crop"],
                       batch_size=cfg["eval"]["batch_size"], device=device)
        out[f"val/{name}/accuracy"] = float(res["accuracy"])
        accs.append(float(res["accuracy"]))
    out["val_accuracy"] = float(np.mean(accs)) if accs else math.nan
    return out


def _eval_due(cfg: Mapping[str, Any], epoch: int) -> bool:
    ev = cfg["eval"]
    if ev["epochs"] is not None:
        return epoch in ev["epochs"]
    last = epoch == cfg["optim"]["epochs"]
    return last or (ev["every"] > 0 and epoch % ev["every"] == 0)


# --------------------------------------------------------------------------- one step
class Stepper:
    """One optimiser step of backbone + head, with per-sample angle tracking.

    ``step(images, labels, index, where)`` runs forward (backbone under autocast when
    ``amp_dtype`` is set, head in float32), checks the loss is finite (NoisyFRError naming the loss
    and ``where``), backward, gradient all-reduce (``world > 1``), clipping, optimiser and
    scheduler steps. When ``self.tracker`` is an :class:`~noisyfr.train.angles.AngleTracker`, the
    batch's angles are added to it from this same forward pass, and with ``self.track_grads``
    the per-sample weights (``weight``, ``weight_theta``, ``grad_norm``) from its backward pass.
    Returns ``(loss value, number of correct argmax predictions, lr used)``.
    """

    def __init__(self, model, head, optimizer, scheduler=None, *, scaler=None, amp_dtype=None,
                 grad_clip: float = 0.0, world: int = 1, orig_labels: torch.Tensor | None = None,
                 loss_name: str = "loss"):
        self.model, self.head, self.optimizer, self.scheduler = model, head, optimizer, scheduler
        self.scaler, self.amp_dtype, self.grad_clip, self.world = scaler, amp_dtype, grad_clip, world
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.device = next(model.parameters()).device
        self.orig_labels = orig_labels
        self.loss_name = loss_name
        self.tracker: angles_mod.AngleTracker | None = None
        self.track_grads = True

    def _theta_dominant(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Angle to the labelled class's dominant sub-centre (None for single-centre heads)."""
        if getattr(self.head, "K", 1) == 1:
            return None
        with torch.no_grad():
            x = torch.nn.functional.normalize(feats.detach().float(), dim=1)
            centres = self.head.class_centres()[labels]
            return torch.arccos((x * centres).sum(1).clamp(-1.0, 1.0))

    def step(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
             where: str = "") -> tuple[float, int, float]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True).long()
        index = index.long()
        track = self.tracker is not None
        grads = track and self.track_grads
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            feats = self.model(images)
        feats = feats.float()
        if grads and feats.requires_grad:
            feats.retain_grad()
        loss, logits, cos = self.head(feats, labels)
        if grads and cos.requires_grad:
            cos.retain_grad()
        loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise NoisyFRError(
                f"loss {self.loss_name}: non-finite loss ({loss_val}) at {where}; "
                f"lower optim.lr, change the loss parameters or set optim.grad_clip")
        opt, scaler = self.optimizer, self.scaler
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scale = float(scaler.get_scale())
            scaler.scale(loss).backward()
        else:
            scale = 1.0
            loss.backward()
        if self.world > 1:
            _allreduce_grads(self.params, self.world)
        if self.grad_clip > 0:
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        lr_used = float(opt.param_groups[0]["lr"])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        correct = int((logits.detach().argmax(1) == labels).sum())
        if track:
            orig = (self.orig_labels[index] if self.orig_labels is not None else index.new_full(
                index.shape, -1)).to(self.device)
            used = getattr(self.head, "last_labels", None)
            used = labels if used is None else used
            values = angles_mod.batch_rows(
                cos, labels, used, orig, grad_cos=cos.grad if grads else None,
                grad_feat=feats.grad if grads else None, scale=scale,
                theta_dominant=self._theta_dominant(feats, labels))
            self.tracker.add(index, labels, used, values)
        return loss_val, correct, lr_used


# --------------------------------------------------------------------------- train
def train(config: Mapping[str, Any] | str | os.PathLike,
          report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a backbone + margin head as described by ``config``; returns the last epoch's metrics
    plus ``best_val_accuracy``.

    ``config``: a dict (validated again with :func:`load_config`) or a YAML path. ``report`` is
    called after every epoch (after that epoch's checkpoint is written) with a dict holding
    ``epoch, step, loss, train_accuracy, lr, img_per_s, epoch_time_s, val_accuracy`` (mean over
    the val sets, NaN when none or not evaluated this epoch), ``val/<name>/accuracy``,
    ``noisy_auc`` (ROC AUC of theta_y for manifest noise != clean; NaN without noise),
    ``theta_clean_mean``, ``theta_noisy_mean`` (radians), the health metrics
    ``clean_true_accuracy``, ``noisy_fit_given``, ``noisy_fit_true``, ``theta_clean_median``,
    ``theta_noisy_median`` (see :mod:`noisyfr.train.angles`), ``n_corrected`` (BoundaryFace
    label corrections this epoch), ``learned`` (``clean_true_accuracy >=
    health.learned_accuracy``) and ``checkpoint`` (path of the epoch's checkpoint). Raises NoisyFRError for bad input, a label outside the head's classes, or a
    non-finite loss (naming the loss, epoch and step).
    """
    from noisyfr.data.transforms import face_transform
    from noisyfr.losses import MarginHead, build_loss
    from noisyfr.models import create_backbone

    cfg = load_config(config)
    rank, world = _dist_info()
    device = resolve_device(cfg["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL object collectives use the current device
    out_dir = Path(cfg["output_dir"])
    seed = cfg["seed"]
    o = cfg["optim"]
    amp = o["amp"] if device.type == "cuda" else "none"
    if o["amp"] != "none" and amp == "none" and rank == 0:
        tqdm.write(f"noisyfr train: optim.amp={o['amp']} ignored on {device} (CUDA only)")
    if o["batch_size"] < 2 * world:
        raise NoisyFRError(f"config key 'optim.batch_size': {o['batch_size']} is too small for "
                           f"{world} processes (needs >= 2 per process)")
    local_bs = o["batch_size"] // world

    # ---- data (errors before any training work)
    transform = face_transform(cfg["data"]["image_size"], cfg["data"]["center_crop"], train=True,
                               flip=cfg["data"]["flip"], crop_jitter=cfg["data"]["crop_jitter"])
    dataset = _open_dataset(cfg, transform, rank, world)
    num_classes = int(dataset.num_classes)
    _check_labels(dataset, num_classes)
    noise_types = np.asarray(dataset.noise, dtype=object)
    orig_np = np.array(dataset.orig_labels, dtype=np.int64)
    orig_all = torch.from_numpy(orig_np)
    train_set = dataset
    if cfg["data"]["max_samples"] and cfg["data"]["max_samples"] < len(dataset):
        pick = np.random.default_rng([seed, 1]).choice(len(dataset), cfg["data"]["max_samples"],
                                                       replace=False)
        train_set = Subset(dataset, np.sort(pick).tolist())
    vsets = []
    if rank == 0 and cfg["data"]["val"]:
        from noisyfr.data import load_pairs

        for path in cfg["data"]["val"]:
            vset = load_pairs(path)
            name, k = str(vset.name), 2
            while name in {n for n, _ in vsets}:
                name, k = f"{vset.name}_{k}", k + 1
            vsets.append((name, vset))

    # ---- model, head, optimiser, schedule
    torch.manual_seed(seed)
    model = create_backbone(cfg["model"]["backbone"], embedding_dim=cfg["model"]["embedding_dim"],
                            image_size=cfg["data"]["image_size"], dropout=cfg["model"]["dropout"],
                            width=cfg["model"]["width"])
    loss_params = {k: v for k, v in cfg["loss"].items() if k != "name"}
    head = MarginHead(cfg["model"]["embedding_dim"], num_classes,
                      build_loss(cfg["loss"]["name"], **loss_params))
    model.to(device)
    head.to(device)
    if world > 1:
        _broadcast_state(model)
        _broadcast_state(head)
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                                weight_decay=o["weight_decay"])
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    steps_per_epoch = len(make_batches(list(range(len(sampler))), local_bs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    # ---- resume
    start_epoch, step, history = 1, 0, []
    ckpt_path = last_checkpoint(out_dir) if cfg["resume"] else None
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path, map_location=device)
        _check_resume(state, cfg, ckpt_path)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all([t.cpu() for t in state["rng"]["cuda"]])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        history = list(state.get("history", []))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path is None:
            _remove_stale_outputs(out_dir)
        with atomic_write(out_dir / "config.yaml", "w", encoding="utf-8") as fh:
            fh.write(dump_config(cfg))

    # ---- epochs
    track = cfg["track"]["angles"]
    learned_at = cfg["health"]["learned_accuracy"]
    stepper = Stepper(model, head, optimizer, scheduler, scaler=scaler, amp_dtype=amp_dtype,
                      grad_clip=o["grad_clip"], world=world, orig_labels=orig_all,
                      loss_name=cfg["loss"]["name"])
    stepper.track_grads = track
    metrics: dict[str, Any] = dict(history[-1]) if history else {}
    for epoch in range(start_epoch, o["epochs"] + 1):
        torch.manual_seed(epoch_seed(seed, epoch))
        sampler.set_epoch(epoch)
        batches = make_batches(list(sampler), local_bs)
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        loader = DataLoader(train_set, batch_sampler=batches, num_workers=cfg["data"]["num_workers"],
                            generator=gen, pin_memory=device.type == "cuda")
        if hasattr(head, "loss") and hasattr(head.loss, "set_epoch"):
            head.loss.set_epoch(epoch)
        model.train()
        head.train()
        tracker = angles_mod.AngleTracker()
        stepper.tracker = tracker
        loss_sum, correct, seen = 0.0, 0, 0
        lr_used = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        bar = tqdm(loader, total=len(batches), desc=f"epoch {epoch}/{o['epochs']}", unit="batch",
                   leave=False, disable=None if rank == 0 else True)
        for images, labels, index in bar:
            loss_val, n_correct, lr_used = stepper.step(images, labels, index,
                                                        where=f"epoch {epoch} step {step + 1}")
            step += 1
            b = len(labels)
            loss_sum += loss_val * b
            seen += b
            correct += n_correct
            if bar.disable is False and step % 10 == 0:
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr_used:.4g}",
                                img_s=f"{seen * world / max(dt, 1e-9):.0f}", refresh=False)
        train_time = time.perf_counter() - t0
        bar.close()

        # ---- epoch summary (identical on every rank)
        totals = torch.tensor([loss_sum, float(correct), float(seen), train_time], dtype=torch.float64)
        if world > 1:  # on the training device: NCCL cannot reduce CPU tensors
            sums, mx = totals[:3].to(device), totals[3:].to(device)
            dist.all_reduce(sums)
            dist.all_reduce(mx, op=dist.ReduceOp.MAX)
            totals = torch.cat([sums, mx]).cpu()
        metrics = {
            "epoch": epoch, "step": step,
            "loss": float(totals[0] / max(totals[2], 1)),
            "train_accuracy": float(totals[1] / max(totals[2], 1)),
            "lr": float(lr_used),
            "img_per_s": float(totals[2] / max(float(totals[3]), 1e-9)),
            "epoch_time_s": float(totals[3]),
        }
        # health and angle summary from this epoch's rows (all ranks gathered)
        arrays = tracker.arrays()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, arrays)
            arrays = {k: np.concatenate([g[k] for g in gathered]) for k in arrays}
        frame = angles_mod.rows_frame(arrays, epoch)
        metrics.update(angles_mod.epoch_summary(frame, noise_types, orig_np))
        metrics["learned"] = angles_mod.learned(metrics["clean_true_accuracy"], learned_at)
        if track and rank == 0:
            angles_mod.write_angles(frame, out_dir, epoch)

        val = {"val_accuracy": math.nan, **{f"val/{n}/accuracy": math.nan for n, _ in vsets}}
        if rank == 0 and vsets and _eval_due(cfg, epoch):
            val = _evaluate_sets(model, vsets, cfg, device)
        if world > 1:
            box = [val]
            dist.broadcast_object_list(box, src=0)
            val = box[0]
        metrics.update(val)
        best = [h.get("val_accuracy", math.nan) for h in history] + [metrics["val_accuracy"]]
        best = [v for v in best if isinstance(v, float) and math.isfinite(v)]
        metrics["best_val_accuracy"] = max(best) if best else math.nan

        ckpt_file = str(out_dir / "checkpoints" / f"epoch_{epoch}.pt")
        metrics["checkpoint"] = ckpt_file
        history.append(dict(metrics))
        if rank == 0:
            state = {
                "config": cfg,
                "model": model.state_dict(),
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
                "epoch": epoch, "step": step,
                "num_classes": num_classes, "embedding_dim": cfg["model"]["embedding_dim"],
                "history": history,
            }
            save_checkpoint(state, out_dir)
            prune_checkpoints(out_dir, cfg["checkpoint"]["keep"])
            _write_csv(history, out_dir)
            tqdm.write(_epoch_line(metrics, o["epochs"]))
        if world > 1:
            dist.barrier()
        if report is not None:
            report(dict(metrics))
    if not metrics:  # resumed a finished run
        metrics = dict(history[-1]) if history else {}
    return dict(metrics)


def _epoch_line(m: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {m['epoch']}/{epochs}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.4g}",
             f"{m['img_per_s']:.0f} img/s"]
    if math.isfinite(m.get("val_accuracy", math.nan)):
        parts.append(f"val {m['val_accuracy']:.4f}")
    if math.isfinite(m.get("clean_true_accuracy", math.nan)):
        parts.append(f"clean acc {m['clean_true_accuracy']:.3f}")
    if math.isfinite(m.get("noisy_auc", math.nan)):
        parts.append(f"noisy AUC {m['noisy_auc']:.3f}")
    if math.isfinite(m.get("noisy_fit_given", math.nan)):
        parts.append(f"noisy fit {m['noisy_fit_given']:.3f}")
    return "  ".join(parts)
