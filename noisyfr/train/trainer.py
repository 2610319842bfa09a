"""The training recipe: backbone + margin head, SGD with warmup and a cosine/poly/step schedule.

``train(config, report=None)`` runs a whole training described by a config from
:func:`noisyfr.train.load_config` and writes the run directory::

    output_dir/config.yaml                 resolved config (written at start)
    output_dir/metrics.csv                 one row per epoch
    output_dir/angles/epoch_<E>.parquet    per-sample angles (see noisyfr.train.angles; the epochs
                                           of track.angles_every, the samples of track.angles_fraction)
    output_dir/checkpoints/epoch_<E>.pt    checkpoint after epoch E, and last.pt

It reads as a recipe: build the data, the model and head, the optimiser and schedule, restore a
checkpoint, then run the epochs (train, summarise, evaluate, save). Every build step checks its
input before the first file is written.

Determinism: shuffling comes from a DistributedSampler seeded with (seed, epoch) and the global
torch generator (augmentation, dropout) is re-seeded from (seed, epoch) at the start of every
epoch, so a resumed run needs no sampler state and equals the uninterrupted run on CPU.

Distributed: when ``torch.distributed`` is initialised (e.g. inside a Ray Train worker) every
rank trains on its shard of the data (``optim.batch_size`` is the global batch,
``optim.batch_size_per_device`` the batch of each process), the backbone
runs under DistributedDataParallel (gradients averaged during backward), the head is replicated
(DDP too) or, with ``loss.sample_rate``, model-parallel (Partial FC: centres sharded over the
ranks, see :mod:`noisyfr.train.parallel`), angle rows are all-gathered, every rank calls
``report`` with the same metrics and only rank 0 writes files.

Stopping: SIGTERM / SIGINT (where a handler can be installed: the main thread, each rank under
torchrun) or the run directory's stop request ``.stop`` (rank 0 looks for it after every step;
the sweep driver writes it into its trials' directories) stop the run at the end of the current
step, every rank at the same one: the ranks agree after each step by an all-reduce of the stop
flag. ``checkpoints/interrupted.pt`` then holds what a resume needs to go on from the next step
(each rank's position, sums, angle rows and RNG states).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from noisyfr.device import resolve_device
from noisyfr.dotted import get_dotted
from noisyfr.errors import NoisyFRError, Stopped
from noisyfr.io import atomic_write
from noisyfr.lock import acquire, check_free
from noisyfr.outputs import (
    WriteError,
    check_output,
    folder_entries,
    is_write_error,
    make_dirs,
    protected_input,
    remove_dirs,
    undo_folder,
    write_error,
)
from noisyfr.safefs import check_no_links
from noisyfr.train import angles as angles_mod
from noisyfr.train import epoch as epoch_mod
from noisyfr.train import heldout as heldout_mod
from noisyfr.train import parallel, rundir
from noisyfr.train.checkpoint import INTERRUPTED
from noisyfr.train.config import dump_config, load_config, run_inputs
from noisyfr.train.data import check_labels, open_dataset, split_rows, training_subset, verification_sets
from noisyfr.train.monitor import Monitor
from noisyfr.train.schedule import EpochBatches, lr_factor
from noisyfr.train.step import Stepper

# Keys that must be equal between a checkpoint and the config resuming from it.
_RESUME_KEYS = ("data.train", "data.manifest", "data.image_size", "data.max_samples", "data.max_per_id",
                "data.holdout",
                "model.backbone", "model.embedding_dim", "model.width", "loss", "seed",
                "track.angles_every", "track.angles_fraction")
# Their values in checkpoints from before the key existed.
_RESUME_DEFAULTS = {"track.angles_every": 1, "track.angles_fraction": 1.0}


@dataclass
class _Run:
    """Everything one training run holds, filled in by the build steps of :func:`train`."""

    cfg: dict
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    out_dir: Path = Path(".")
    local_bs: int = 1
    amp: str = "none"
    dataset: Any = None
    train_set: Any = None
    num_classes: int = 0
    noise_types: np.ndarray | None = None
    logged_samples: np.ndarray | None = None
    orig_labels: np.ndarray | None = None
    vsets: list = field(default_factory=list)
    heldout: Any = None
    model: Any = None
    head: Any = None
    model_call: Any = None
    head_call: Any = None
    loader: Any = None
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    sampler: Any = None
    start_epoch: int = 1
    step: int = 0
    history: list = field(default_factory=list)
    resumed_from: Path | None = None
    monitor: Any = None
    frame: Any = None
    pending_manifest: Any = None
    epochs_done: int = 0
    created_dirs: list = field(default_factory=list)
    batches: Any = None
    partial: dict | None = None
    lock: Any = None
    stop_signal: int | None = None     # set by the signal handler of this process
    stop: tuple[int, bool] | None = None  # agreed by every rank: (signal, by the stop request)
    stopped_saved: bool = False
    resume_note: str | None = None
    reference: dict = field(default_factory=dict)  # a features run's references (train/reference.py)


#: what a run writes in its output directory
RUN_FILES = ("config.yaml", "manifest.parquet", "manifest.parquet.json", "metrics.csv", "train.log",
             "angles", "checkpoints", "tb")


# --------------------------------------------------------------------------- the build steps
def _setup(config) -> _Run:
    """Config, process group, device and batch split (errors before any work)."""
    cfg = load_config(config)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
        else (0, 1)
    run = _Run(cfg=cfg, rank=rank, world=world, device=resolve_device(cfg["device"]),
               out_dir=Path(cfg["output_dir"]))
    if run.device.type == "cuda":
        torch.cuda.set_device(run.device)  # NCCL object collectives use the current device
    skip = ({"config.yaml"} if cfg["resume"] else set()) | \
        ({"manifest.parquet", "manifest.parquet.json"} if cfg["data"]["manifest"] else set())
    config_file = [config] if isinstance(config, (str, os.PathLike)) else []
    check_output(run.out_dir, [*config_file, *run_inputs(cfg)], what="output_dir", kind="dir",
                 writes=[w for w in RUN_FILES if w not in skip])
    if rank == 0:  # the ranks are one writer; another rank may still be ending the previous run
        check_free(run.out_dir, "output_dir")
        check_no_links(run.out_dir, RUN_FILES, "output_dir entry")  # a planted link is never written through
    rundir.check_existing_run(run.out_dir, cfg)
    o = cfg["optim"]
    parallel.check_amp(o["amp"], run.device)
    if cfg["model"]["compile"]:
        parallel.check_compile(run.device)
    run.amp = o["amp"]
    if o["batch_size_per_device"] is not None:  # arcface_torch's batch_size: per GPU
        run.local_bs = o["batch_size_per_device"]
    elif o["batch_size"] < 2 * world:
        raise NoisyFRError(f"config key 'optim.batch_size': {o['batch_size']} is too small for "
                           f"{world} processes (needs >= 2 per process)")
    else:
        run.local_bs = o["batch_size"] // world
    return run


def _build_data(run: _Run) -> None:
    """The (noisy) training set, its noise types and true labels, and the verification sets."""
    from noisyfr.data.transforms import face_transform

    data = run.cfg["data"]
    transform = face_transform(data["image_size"], data["center_crop"], train=True,
                               flip=data["flip"], crop_jitter=data["crop_jitter"])
    run.dataset, run.pending_manifest = open_dataset(run.cfg, transform)
    run.num_classes = int(run.dataset.num_classes)
    check_labels(run.dataset, run.num_classes)
    run.noise_types = np.asarray(run.dataset.noise, dtype=object)
    run.orig_labels = np.array(run.dataset.orig_labels, dtype=np.int64)
    names = getattr(getattr(run.dataset, "index", None), "identities", None)
    rows, held = split_rows(getattr(run.dataset, "manifest", None), run.orig_labels, data["max_per_id"],
                            data["holdout"], run.cfg["seed"], names)
    run.train_set = training_subset(run.dataset, data["max_samples"], run.cfg["seed"], rows)
    trained = run.train_set.indices if isinstance(run.train_set, Subset) else np.arange(len(run.dataset))
    run.logged_samples = angles_mod.logged_samples(trained, run.cfg["track"]["angles_fraction"],
                                                   run.cfg["seed"])
    run.heldout = heldout_mod.heldout_set(
        run.dataset, held, face_transform(data["image_size"], data["center_crop"], train=False))
    vectors = getattr(run.dataset.index, "vectors", False)
    vsets = verification_sets(data["val"]) if (run.rank == 0 or vectors) and data["val"] else []
    if vectors:
        from noisyfr.train import reference

        reference.check_dims(run.cfg, run.dataset, vsets)
        run.reference = reference.class_means_reference(run.dataset, trained, held)
        if run.rank == 0:
            run.reference.update(reference.reference_verification(vsets, run.cfg["eval"]["batch_size"]))
    run.vsets = vsets if run.rank == 0 else []


def _build_model_and_head(run: _Run) -> None:
    """Backbone and margin head, initialised from the seed (the same on every rank; a Partial FC
    head's shard from the seed too); the backbone then takes the weights of ``model.init`` when set
    (an insightface backbone.pth or a checkpoint); and what the step calls (DDP, channels-last,
    compile)."""
    from noisyfr.models import create_backbone

    cfg = run.cfg
    torch.manual_seed(cfg["seed"])
    model = create_backbone(cfg["model"]["backbone"], embedding_dim=cfg["model"]["embedding_dim"],
                            image_size=cfg["data"]["image_size"], dropout=cfg["model"]["dropout"],
                            width=cfg["model"]["width"], depth=cfg["model"]["depth"],
                            input_dim=cfg["model"]["input_dim"])
    if cfg["model"]["init"] is not None:
        from noisyfr.eval.checkpoint import init_backbone

        init_backbone(model, cfg["model"]["init"], what="config key 'model.init'")
    run.head = parallel.build_head(cfg, run.num_classes, run.rank, run.world)
    run.model = parallel.sync_batchnorm(model, cfg, run.device, run.world).to(run.device)
    run.head.to(run.device)
    run.model_call, run.head_call = parallel.wrap(run.model, run.head, cfg, run.device, run.world)


def _build_optimiser(run: _Run) -> None:
    """SGD (or AdamW) over backbone and head, the per-step schedule, the sampler and loader, the
    AMP scaler.

    The loader is built once: on CUDA its workers persist across epochs and batches are pinned;
    elsewhere the workers are re-created every epoch from the epoch's seed (deterministic)."""
    o, data = run.cfg["optim"], run.cfg["data"]
    params = [p for p in list(run.model.parameters()) + list(run.head.parameters()) if p.requires_grad]
    if o["name"] == "adamw":
        run.optimizer = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        run.optimizer = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                                        weight_decay=o["weight_decay"])
    run.sampler = DistributedSampler(run.train_set, num_replicas=run.world, rank=run.rank, shuffle=True,
                                     seed=run.cfg["seed"])
    run.batches = batches = EpochBatches(run.sampler, run.local_bs)
    cuda = run.device.type == "cuda"
    run.loader = DataLoader(run.train_set, batch_sampler=batches, num_workers=data["num_workers"],
                            generator=torch.Generator(), pin_memory=cuda,
                            persistent_workers=cuda and data["num_workers"] > 0)
    steps_per_epoch = len(batches)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.optimizer, lambda s: lr_factor(s, run.cfg, steps_per_epoch))
    run.scaler = torch.amp.GradScaler("cuda") if run.amp == "fp16" else None


def _restore(run: _Run) -> None:
    """With ``resume`` and a readable checkpoint: model, head, optimiser, schedule, RNG, epoch,
    history and, after a stop mid-epoch, the epoch's position and sums (``run.partial``)."""
    found = rundir.newest_readable_checkpoint(run.out_dir) if run.cfg["resume"] else None
    if found is None:
        return
    path, state, run.resume_note = found
    for key in _RESUME_KEYS:
        old, new = get_dotted(state["config"], key, _RESUME_DEFAULTS.get(key)), get_dotted(run.cfg, key)
        if key == "loss" and isinstance(old, dict):  # checkpoints from before loss.sample_rate
            old = {"sample_rate": None, **old}
        if old != new:
            raise NoisyFRError(f"resume: checkpoint {path} was trained with {key}={old!r}, "
                               f"the config has {key}={new!r}")
    run.model.load_state_dict(state["model"])
    parallel.load_head_state(run.head, state["head"])
    parallel.load_optimizer_state(run.optimizer, run.head, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if run.device.type == "cuda" and state["rng"].get("cuda"):
        torch.cuda.set_rng_state_all([t.cpu() for t in state["rng"]["cuda"]])
    run.start_epoch, run.step = int(state["epoch"]) + 1, int(state["step"])
    run.history = list(state.get("history", []))
    run.partial = state.get("partial") if path.name == INTERRUPTED else None
    if run.partial is not None:
        stopped_with = len(run.partial["ranks"]) if "ranks" in run.partial else 1
        if stopped_with != run.world:
            raise NoisyFRError(f"resume: {path} was stopped mid-epoch in a run of {stopped_with} "
                               f"process{'es' if stopped_with != 1 else ''}, this one has {run.world}; "
                               f"resume it with {stopped_with}, or remove it to resume from the "
                               "last epoch checkpoint")
    run.resumed_from = path


def _prepare_output(run: _Run) -> None:
    """Rank 0 owns the run directory: it takes the directory's lock (held until the run ends), a
    fresh run (with ``overwrite``, else it was refused) drops an earlier run's epoch files (angle
    logs, checkpoints, metrics, event files, train.log; the manifest stays), a resumed one what lies
    after its checkpoint; the resolved config is written."""
    if run.rank != 0:
        return
    run.created_dirs = make_dirs(run.out_dir)
    run.lock = acquire(run.out_dir, "output_dir")
    rundir.check_existing_run(run.out_dir, run.cfg)  # again, holding the lock: another writer may have ended
    rundir.clear_stop(run.out_dir)  # a request left by an earlier run never stops this one
    if run.pending_manifest is not None:
        run.pending_manifest.write(run.cfg["data"]["manifest"])
    if run.resumed_from is None:
        for path in [run.out_dir / "metrics.csv", run.out_dir / "train.log",
                     *run.out_dir.glob("angles/epoch_*.parquet"), *run.out_dir.glob("checkpoints/*.pt"),
                     *run.out_dir.glob("tb/events.out.tfevents.*")]:
            path.unlink(missing_ok=True)
    else:
        rundir.truncate_after(run.out_dir, run.history, run.start_epoch - 1)
    config_path = run.out_dir / "config.yaml"
    if run.resumed_from is not None and protected_input(config_path):
        return  # resumed from the run's own saved config: it stays as it is
    with atomic_write(config_path, "w", encoding="utf-8") as fh:
        fh.write(dump_config(run.cfg))


def _monitor(run: _Run) -> Monitor:
    """TensorBoard, train.log and the epoch lines (rank 0; a resumed run drops the event records
    after its checkpoint's step)."""
    return Monitor(run.out_dir, run.cfg["optim"]["epochs"], run.start_epoch, run.cfg["track"]["log_every"],
                   purge_step=run.step + 1 if run.resumed_from is not None else None, active=run.rank == 0)


def _stepper(run: _Run) -> Stepper:
    o = run.cfg["optim"]
    stepper = Stepper(run.model_call, run.head, run.optimizer, run.scheduler, scaler=run.scaler,
                      amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.amp),
                      grad_clip=o["grad_clip"], orig_labels=torch.from_numpy(run.orig_labels),
                      loss_name=run.cfg["loss"]["name"], head_call=run.head_call,
                      channels_last=run.cfg["model"]["channels_last"])
    stepper.track_grads = run.cfg["track"]["angles"]
    return stepper


# --------------------------------------------------------------------------- one epoch
def _after_failure(run: _Run, exc: BaseException, created: bool, before: set[str]) -> None:
    """A fresh run that fails before its first checkpoint leaves nothing behind (the run
    directory when it created it, else the entries it added); a resumed run, or one with a
    checkpoint, keeps its directory (the last checkpoint was written atomically and is intact).
    A failed write (full disk, permission, ...) is raised as a one-line NoisyFRError."""
    kept = run.rank != 0 or run.resumed_from is not None or run.epochs_done > 0 or run.stopped_saved
    if not kept and run.lock is not None:  # without the lock this call wrote nothing
        undo_folder(run.out_dir, created, before)
        remove_dirs(run.created_dirs[:-1])
    if is_write_error(exc) or isinstance(exc, WriteError):
        err = exc if isinstance(exc, WriteError) else \
            write_error(exc, getattr(exc, "filename", None) or run.out_dir)
        if kept and run.rank == 0:
            err = WriteError(f"{err}; {run.out_dir} keeps its last checkpoint (continue with --resume)")
        raise err from None


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
    label corrections this epoch), ``heldout_accuracy`` (identification of the held-out images
    of the training identities by their nearest class centre, NaN without ``data.holdout``),
    ``heldout_given_accuracy`` (their agreement with their given, possibly noisy labels),
    on a dataset of features, the references of :mod:`noisyfr.train.reference`
    (``reference_heldout_accuracy``, ``val/<name>/reference_accuracy``, ``val_reference_accuracy``),
    ``learned`` and ``learned_on`` (the rule of :mod:`noisyfr.train.heldout`: held-out accuracy
    >= ``health.learned_heldout_accuracy``, or without held-out images ``clean_true_accuracy >=
    health.learned_accuracy``) and ``checkpoint`` (path of the epoch's checkpoint). Raises
    NoisyFRError for bad input, a label outside the head's classes, a non-finite loss (naming
    the loss, epoch and step), a fresh start into a directory holding a run without
    ``overwrite``, or a directory another writer holds. SIGTERM / SIGINT (in the main thread:
    a single process, or each rank under torchrun) or the stop request ``output_dir/.stop``
    (:func:`noisyfr.train.rundir.request_stop`; any thread, e.g. a Ray trial) stop the run after
    the current step, every rank at the same one, with ``checkpoints/interrupted.pt`` written,
    and raise :class:`noisyfr.errors.Stopped` (exit status 143 for SIGTERM and the stop request,
    130 for SIGINT).
    """
    run = _setup(config)
    _build_data(run)
    _build_model_and_head(run)
    _build_optimiser(run)
    _restore(run)
    # every input is checked: from here on the run writes
    created, before = not run.out_dir.exists(), folder_entries(run.out_dir)
    metrics: dict[str, Any] = dict(run.history[-1]) if run.history else {}
    handlers = {}
    try:
        _prepare_output(run)
        stepper = _stepper(run)
        run.monitor = _monitor(run)
        if run.resume_note and run.rank == 0:
            print(run.resume_note, file=sys.stderr, flush=True)
            run.monitor.log.info(run.resume_note)
        handlers = _catch_stop_signals(run)
        try:
            for epoch in range(run.start_epoch, run.cfg["optim"]["epochs"] + 1):
                metrics, tracker = epoch_mod.train_epoch(run, stepper, epoch)
                metrics.update(epoch_mod.angle_summary(run, tracker, epoch))
                metrics.update(epoch_mod.evaluate(run, epoch))
                metrics.update(epoch_mod.health(run, metrics))
                epoch_mod.save_epoch(run, metrics)
                run.epochs_done += 1
                if report is not None:
                    report(dict(metrics))
                if epoch < run.cfg["optim"]["epochs"] and epoch_mod.stop_agreed(run):
                    msg = (f"stopped by {epoch_mod.stopped_by(run)} after epoch {epoch}; "
                           f"{run.out_dir / 'checkpoints' / 'last.pt'} holds the run: continue with --resume")
                    run.monitor.message(msg)
                    raise Stopped(run.stop[0], msg)
        finally:
            run.monitor.close()
    except BaseException as exc:
        _after_failure(run, exc, created, before)
        raise
    finally:
        for signum, old in handlers.items():
            signal.signal(signum, old)
        if run.lock is not None:
            run.lock.release()
    return dict(metrics)


def _catch_stop_signals(run: _Run) -> dict:
    """SIGTERM and SIGINT stop the run at the end of the current step, with a checkpoint to
    resume from (in the main thread: a single process, or each rank under torchrun, which
    forwards its SIGTERM to every rank; elsewhere, a Ray worker's thread, the stop request
    does it). A second signal stops at once. Returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum, frame):
        if run.stop_signal is not None:  # asked twice: stop now
            raise Stopped(signum, f"stopped by {signal.Signals(signum).name} (second signal), at once")
        run.stop_signal = signum

    return {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
