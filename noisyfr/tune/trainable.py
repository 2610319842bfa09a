"""The Ray side of a sweep: one trial = one training run, in a Tune function trainable or as a
Ray Train ``TorchTrainer`` of DDP workers. Runs inside Ray worker processes.

A trial stopped by its run directory's stop request (the sweep driver writes ``RUN/.stop`` when it
is TERMed, see :mod:`noisyfr.tune.run`) has written ``checkpoints/interrupted.pt``; it does not
return (Tune would count it finished) but waits for the driver to end Tune's experiment, which
saves it as unfinished: ``sweep --resume`` runs it again and it continues from that file. Once
that state is saved the driver withdraws the request, and the trial ends at once (otherwise Tune
waits 10 s before it kills a trial's process that does not stop)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from noisyfr.dotted import get_dotted
from noisyfr.errors import NoisyFRError, Stopped
from noisyfr.tune.results import clean_metrics, run_dir_epochs, scalar
from noisyfr.tune.spec import import_callable, validator_for

#: How long a stopped trial waits for the sweep driver to end it before it fails instead (Tune then
#: retries it, from its interrupted.pt, within max_failures).
STOPPED_WAIT_S = 600.0
#: How often a stopped trial looks whether its stop request is still there.
STOPPED_POLL_S = 0.1


def one_line(exc: BaseException | str) -> str:
    """The last non-empty line of an error (Ray wraps remote errors with a traceback: the last
    line is the original ``Type: message``), at most 500 characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return lines[-1][:500]


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _node_info(name: str) -> dict:
    import socket

    info = {"trial": name, "hostname": socket.gethostname()}
    try:
        import ray
        info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - outside Ray
        info["node_id"] = None
    return info


def _restore_checkpoint(cfg: dict, ckpt: Any, run_epoch: int) -> int | None:
    """Put the Tune checkpoint's ``last.pt`` at ``output_dir/checkpoints/last.pt`` and set
    ``resume``, unless the run directory already holds a later epoch (``run_epoch``: the driver
    was killed before it recorded the trial's latest report); return the Tune checkpoint's epoch
    (None without a checkpoint)."""
    if ckpt is None:
        return None
    last = Path(cfg["output_dir"]) / "checkpoints" / "last.pt"
    with ckpt.as_directory() as d:
        try:
            epoch = int(json.loads((Path(d) / "trial.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            epoch = None
        src = Path(d) / "last.pt"
        if src.is_file():
            if not (last.is_file() and epoch is not None and run_epoch > epoch):
                from noisyfr.io import atomic_path
                with atomic_path(last) as tmp:
                    shutil.copyfile(src, tmp)
            cfg["resume"] = True
    return epoch


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """End this worker process when its parent (the raylet) dies.

    Ray starts each worker in a process group of its own, so a SIGKILL of the driver's group (an
    OOM killer, a lost allocation) leaves workers training on, writing into run directories that a
    ``sweep --resume`` is about to use. A daemon thread watches the parent pid and exits at once."""
    import threading

    parent = os.getppid()
    if parent <= 1 or getattr(_exit_with_parent, "started", False):
        return
    _exit_with_parent.started = True

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="noisyfr-exit-with-raylet", daemon=True).start()


def _set_threads(cpu: float) -> None:
    import torch

    n = max(1, int(cpu))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def _reporter(info: dict, report_fn: Callable, checkpoint_cls, with_checkpoint: bool = True) -> Callable:
    """The ``report(metrics)`` callback handed to the trainer: Tune/Train ``report_fn`` with the
    scalar metrics plus ``info``, and a checkpoint holding the epoch's ``last.pt`` when
    ``with_checkpoint`` (rank 0) and the file exists."""

    def report(metrics: Mapping) -> None:
        row = {**clean_metrics(metrics), **info}
        path = metrics.get("checkpoint")
        if with_checkpoint and path and os.path.isfile(path):
            with tempfile.TemporaryDirectory(prefix="noisyfr-ckpt-") as d:
                _link_or_copy(path, Path(d) / "last.pt")
                (Path(d) / "trial.json").write_text(json.dumps({"epoch": scalar(metrics.get("epoch"))}))
                report_fn(row, checkpoint=checkpoint_cls.from_directory(d))
        else:
            report_fn(row)

    return report


def _load(t: dict, cfg: dict) -> tuple[Callable, dict]:
    """The trainer callable and the trial config validated by its module's ``load_config``."""
    train = import_callable(t["trainer"])
    load_config = validator_for(t["trainer"])
    return train, (load_config(cfg) if load_config is not None else cfg)


def trial_fn(tune_config: dict) -> None:
    """Tune function trainable: one trial = one training run (or one TorchTrainer run)."""
    from ray import tune

    _exit_with_parent()
    t = tune_config["trial"]
    cfg = copy.deepcopy(t["config"])
    Path(cfg["output_dir"]).mkdir(parents=True, exist_ok=True)
    ckpt = tune.get_checkpoint()
    # A sweep directory holds one sweep (run.py refuses a second), so a run directory that already
    # has epochs is this trial's own, from before the driver died.
    rows = run_dir_epochs(cfg["output_dir"])
    run_epoch = int(rows[-1]["epoch"]) if rows and "epoch" in rows[-1] else 0
    done_epoch = _restore_checkpoint(cfg, ckpt, run_epoch)
    ckpts = Path(cfg["output_dir"]) / "checkpoints"
    if ckpt is None and ((run_epoch and (ckpts / "last.pt").is_file()) or (ckpts / "interrupted.pt").is_file()):
        # Tune's experiment state predates the trial's first checkpoint (the driver is killed
        # between its periodic state saves, or stopped the trial inside its first epoch):
        # continue from the run directory instead of epoch 1.
        cfg["resume"] = True
    _own_run_dir(t, cfg)
    if t["workers"] > 1:
        _run_distributed(t, cfg)
        return
    _set_threads(t["resources"]["cpu"])
    info = _node_info(t["name"])
    try:
        train, cfg = _load(t, cfg)
        epochs = get_dotted(cfg, "optim.epochs")
        if isinstance(epochs, int) and max(done_epoch or 0, run_epoch) >= epochs:
            # Finished before the driver died, but Tune had not recorded it all: report the epochs
            # it missed from the run directory, re-run nothing.
            for row in rows:
                if int(row["epoch"]) > (done_epoch or 0):
                    tune.report({**clean_metrics(row), **info})
            return
        train(cfg, report=_reporter(info, tune.report, tune.Checkpoint))
    except Stopped as exc:
        _wait_for_the_driver(str(exc), cfg["output_dir"])
    except NoisyFRError as exc:
        # Deterministic failures (divergence: non-finite loss, bad data) are not retried: the trial
        # ends with status "failed" and its reason in the results; other trials go on.
        tune.report({**info, "failed": True, "error": one_line(exc)})


def _wait_for_the_driver(why: str, run_dir: str | os.PathLike, wait_s: float | None = None) -> None:
    """A trial stopped by its stop request stays running for Tune until the sweep driver, which
    asked, has saved Tune's experiment state with this trial unfinished and withdraws the request
    (removes ``run_dir/.stop``): the trial's process then ends, which Tune, stopping, no longer
    records. When nothing ends it within ``wait_s`` (:data:`STOPPED_WAIT_S`; a request no driver
    made) the trial fails with a one-line error, and when such a request is removed while Tune
    still runs its process ends; either way Tune retries it (within ``max_failures``), from its
    ``interrupted.pt``."""
    import time

    from noisyfr.train.rundir import STOP_NAME

    wait_s = STOPPED_WAIT_S if wait_s is None else wait_s
    request = Path(run_dir) / STOP_NAME
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not request.exists():
            # the process ends (an error raised here would be a task error no one reads, which
            # Ray prints on the driver's stderr); Tune sees a trial whose actor died
            os._exit(0)
        time.sleep(STOPPED_POLL_S)
    raise RuntimeError(f"trial {why.split(';')[0]}; no sweep driver ended it within {wait_s:g} s")


def _stopped_unfinished(cfg: dict) -> bool:
    """The run directory holds a run stopped before its last epoch, with its stop request."""
    from noisyfr.train.rundir import STOP_NAME

    out = Path(cfg["output_dir"])
    rows = run_dir_epochs(cfg["output_dir"])
    done = int(rows[-1]["epoch"]) if rows and "epoch" in rows[-1] else 0
    epochs = get_dotted(cfg, "optim.epochs")
    return (out / STOP_NAME).is_file() and isinstance(epochs, int) and done < epochs


def _own_run_dir(t: dict, cfg: dict) -> None:
    """A trial's run directory is the sweep's own (the sweep driver holds the sweep directory and
    refuses another sweep there): a trial that does not resume replaces what an earlier attempt
    of it left there (``overwrite``; noisyfr's trainer only, whose config knows the key)."""
    from noisyfr.tune.spec import DEFAULT_TRAINER

    if t["trainer"] == DEFAULT_TRAINER:
        cfg["overwrite"] = not cfg.get("resume", False)


def _worker_loop(loop_config: dict) -> None:
    """Ray Train worker: runs ``train`` under torch.distributed (set up by TorchTrainer)."""
    import ray.train

    _exit_with_parent()
    t, cfg = loop_config["trial"], copy.deepcopy(loop_config["config"])
    _set_threads(t["resources"]["cpu"])
    rank = ray.train.get_context().get_world_rank()
    if t["resources"]["gpu"] > 0:
        # Ray Train shows each node's workers all of that node's trial GPUs: use this worker's own.
        import torch
        from ray.train.torch import get_device

        device = get_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
            cfg["device"] = f"cuda:{device.index or 0}"
    train, cfg = _load(t, cfg)
    info = {**_node_info(t["name"]), "world_size": ray.train.get_context().get_world_size()}
    try:
        train(cfg, report=_reporter(info, ray.train.report, ray.train.Checkpoint, with_checkpoint=rank == 0))
    except Stopped:
        return  # every rank stopped at the same step; rank 0 wrote interrupted.pt (the trial waits)


def _run_distributed(t: dict, cfg: dict) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    last = Path(cfg["output_dir"]) / "checkpoints" / "last.pt"
    if last.is_file():
        cfg["resume"] = True
        _own_run_dir(t, cfg)
    res = t["resources"]
    use_gpu = res["gpu"] > 0
    per_worker = {"CPU": res["cpu"]}
    if use_gpu:
        per_worker["GPU"] = res["gpu"]
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": t, "config": cfg},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t["workers"], use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=t["name"], storage_path=str(Path(t["sweep_dir"]) / "train"),
                                       callbacks=[TuneReportCallback()]),
    )
    try:
        trainer.fit()
        if _stopped_unfinished(cfg):
            _wait_for_the_driver(f"{t['name']} stopped by the stop request in {cfg['output_dir']}",
                                 cfg["output_dir"])
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's exception
        text = f"{exc!r} {exc.__cause__!r}"
        if "NoisyFRError" not in text:
            raise
        from ray import tune
        # deterministic failure inside the workers (e.g. non-finite loss): do not retry
        tune.report({**_node_info(t["name"]), "failed": True, "error": one_line(exc.__cause__ or exc)})


def trial_name(trial: Any) -> str:
    """The name of a Tune trial (its config's trial name)."""
    return trial.config["trial"]["name"]
