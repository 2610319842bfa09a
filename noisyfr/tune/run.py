"""Running a sweep: Ray set-up, manifests, the Tuner (fresh or restored) and the results files."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from noisyfr.errors import NoisyFRError
from noisyfr.tune.reaper import local_ray
from noisyfr.tune.results import results_table, write_results
from noisyfr.tune.spec import STATE_FILE, SweepSpec, plan_manifests
from noisyfr.tune.state import check_state as _check_state
from noisyfr.tune.state import state_json as _state_json
from noisyfr.tune.state import write_state
from noisyfr.tune.trainable import one_line, trial_fn, trial_name

DRIVER_CPU = 0.01   # CPU reserved by a trial's driver when its workers are Ray Train actors
#: The sweep's progress log (``SWEEP_DIR/sweep.log`` while a sweep runs).
LOG = logging.getLogger("noisyfr.sweep")
#: The graceful stop in progress in this driver (:class:`_TrialStopper`), for Tune's callback.
_ACTIVE: dict[str, Any] = {"stopper": None}

#: Environment of Ray: quiet, offline, light. Set (unless already set) before ray is imported.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
}


#: How noisyfr starts (or joins) Ray: no dashboard, workers' output kept off the driver's console.
RAY_INIT = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}


def quiet_ray_env() -> None:
    """Set :data:`RAY_ENV` in this process (existing values win); call before importing ray."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def check_cluster(spec: SweepSpec) -> dict:
    """Compare the per-trial resources with the connected Ray cluster; NoisyFRError if they cannot fit."""
    import ray

    from noisyfr.tune.spec import _err

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total_gpu = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    max_cpu = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    max_gpu = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
    cpu, gpu = spec.resources["cpu"], spec.resources["gpu"]
    if gpu > 0 and total_gpu == 0:
        raise _err("resources.gpu", f"{gpu:g} GPU per trial requested but the Ray cluster has no GPU "
                                    "(set resources.gpu: 0 to train on CPU)")
    if gpu > max_gpu:
        raise _err("resources.gpu", f"{gpu:g} GPUs per trial requested but no node has more than {max_gpu:g}")
    if cpu > max_cpu:
        raise _err("resources.cpu", f"{cpu:g} CPUs per trial requested but no node has more than {max_cpu:g}")
    total_cpu = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
    if spec.workers_per_trial > 1 and spec.workers_per_trial * cpu + DRIVER_CPU > total_cpu:
        raise _err("workers_per_trial", f"{spec.workers_per_trial} workers x {cpu:g} CPUs (+ {DRIVER_CPU:g} "
                                        f"for the trial driver) do not fit the cluster's {total_cpu:g} CPUs")
    return {"nodes": len(nodes), "cpu": total_cpu, "gpu": total_gpu}


def make_manifests(spec: SweepSpec, progress: bool | None = None) -> list[str]:
    """Write each distinct manifest once (skipping those already written); return their paths."""
    from tqdm import tqdm

    groups = plan_manifests(spec)
    if not groups:
        return []
    from noisyfr.data import open_index
    from noisyfr.noise import inject_to

    indexes: dict[str, Any] = {}
    written = []
    for _key, (train, noise, trials) in tqdm(groups.items(), desc="manifests", unit="manifest",
                                            disable=None if progress is None else not progress):
        path = trials[0].manifest
        written.append(path)
        # The file name carries the dedup key; a manifest and its sidecar both present = already made
        # (each is written atomically), e.g. on --resume.
        if Path(path).exists() and Path(path + ".json").exists():
            continue
        if train not in indexes:
            indexes[train] = open_index(train)
        inject_to(indexes[train], noise, path, frame=False)
    return written


def _trial_dicts(spec: SweepSpec) -> list[dict]:
    return [{"name": t.name, "config": t.config, "trainer": spec.trainer, "resources": spec.resources,
             "workers": spec.workers_per_trial, "sweep_dir": str(spec.sweep_dir)} for t in spec.trials]


def _progress_callback(total_trials: int, total_epochs: int, progress: bool | None):
    """The sweep's progress: a tqdm bar over finished trials on a terminal; otherwise (output to a
    file, CI, ``nohup``) one line per finished epoch or trial with the elapsed time and an ETA.
    Every line also goes to ``sweep.log``."""
    import sys

    from ray import tune
    from tqdm import tqdm

    from noisyfr.train.monitor import format_duration

    class _Progress(tune.Callback):
        def __init__(self):
            self.bar, self.t0, self.epochs = None, None, set()

        def __getstate__(self):  # pickled with the experiment: start afresh when restored
            return {"bar": None, "t0": None, "epochs": set()}

        def setup(self, **info):
            import time

            self.t0 = time.time()
            bar_on = sys.stdout.isatty() if progress is None else progress
            self.bar = tqdm(total=total_trials, desc="trials", unit="trial", disable=not bar_on)

        def _line(self, text: str) -> None:
            import time

            elapsed = time.time() - (self.t0 or time.time())
            done = len(self.epochs)
            eta = elapsed / done * max(total_epochs - done, 0) if done else float("nan")
            line = (f"[{format_duration(elapsed)}] {text} | {done}/{total_epochs} epochs, ETA "
                    f"{format_duration(eta) if eta == eta else '?'}")
            LOG.info(line)
            if self.bar is None or self.bar.disable:
                print(line, flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            epoch = result.get("epoch")
            if result.get("failed") or epoch is None or (trial_name(trial), epoch) in self.epochs:
                return
            self.epochs.add((trial_name(trial), epoch))
            parts = [f"trial {trial_name(trial)} epoch {epoch}"]
            for key, label in (("loss", "loss"), ("clean_true_accuracy", "clean acc"), ("noisy_auc", "noisy AUC")):
                value = result.get(key)
                if isinstance(value, float) and value == value:
                    parts.append(f"{label} {value:.3f}")
            self._line("  ".join(parts))

        def _finished(self, trial, what: str) -> None:
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(trial_name(trial)[:40])
            self._line(f"trial {trial_name(trial)} {what}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finished(trial, "finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finished(trial, "ended with an error")

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return _Progress()


def _release_callback():
    """A Tune callback whose ``get_state`` (Tune asks for it while it saves the experiment state,
    in the driver's main thread) lets the trials that this driver stopped end
    (:meth:`_TrialStopper.release`). Pickled with the experiment by value: it finds the driver's
    stopper in this module when called, so a restored sweep has it too."""
    from ray import tune

    class _ReleaseStoppedTrials(tune.Callback):
        def get_state(self):
            from noisyfr.tune import run as this

            if this._ACTIVE["stopper"] is not None:
                this._ACTIVE["stopper"].release()
            return None

    return _ReleaseStoppedTrials()


def _tuner(spec: SweepSpec, resume: bool, progress: bool | None):
    from ray import tune

    from noisyfr.dotted import get_dotted

    tune_dir = spec.sweep_dir / "tune"
    driver_res = ({"cpu": DRIVER_CPU} if spec.workers_per_trial > 1 else
                  {k: v for k, v in spec.resources.items() if v > 0})
    trainable = tune.with_resources(trial_fn, driver_res)
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        return tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False)
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(_trial_dicts(spec))},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent_trials or None,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=str(spec.sweep_dir), name="tune", verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            # two: after a hard kill the saved experiment state may still name the previous one
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[_progress_callback(len(spec.trials), sum(
                int(get_dotted(t.config, "optim.epochs", 1) or 1) for t in spec.trials), progress),
                _release_callback()]),
    )


def trial_histories(grid) -> dict[str, tuple]:
    """Tune results by trial name: ``(metrics DataFrame, one-line error or None)``. A trial whose
    config Ray lost (its workers killed, for example when memory ran out) is named by its
    directory, which Tune names after the trial."""
    out = {}
    for r in grid:
        config = r.config or {}
        name = config["trial"]["name"] if "trial" in config else Path(r.path).name
        out[name] = (r.metrics_dataframe, None if r.error is None else one_line(r.error))
    return out


#: what a sweep writes in its directory
SWEEP_FILES = ("sweep.json", "sweep.log", "results.csv", "results.parquet", "summary.md", "trials",
               "tune", "manifests")


def clear_sweep(sweep_dir: Path) -> None:
    """Remove what a sweep wrote in ``sweep_dir`` (:data:`SWEEP_FILES` and the report), nothing
    else: ``--overwrite`` replaces a sweep deliberately."""
    import shutil

    for name in (*SWEEP_FILES, "report"):
        path = Path(sweep_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run_sweep(spec: SweepSpec, *, resume: bool = False, address: str | None = None,
              progress: bool | None = None, echo: Callable[[str], Any] | None = print,
              inputs: Iterable = (), overwrite: bool = False):
    """Run every trial of ``spec`` with Ray Tune; write results and summary; return the results DataFrame.

    ``resume``: finish an interrupted sweep in ``spec.sweep_dir`` (``Tuner.restore``: finished trials are
    kept, unfinished ones continue from their last checkpoint, errored ones are not re-run).
    ``address``: an existing Ray cluster (``auto`` or ``HOST:PORT``); default: reuse an initialised Ray
    session, else start a local one, whose processes all end with the sweep, however the driver
    ends (:mod:`noisyfr.tune.reaper`). Everything is checked before the first trial starts; a first
    start that fails before ``sweep.json`` is written leaves the sweep directory as it found it.
    ``overwrite``: replace a sweep the directory already holds (its files are removed once the
    directory's lock is held; nothing else in the directory is touched); refused with ``resume``.
    ``inputs``: files the caller read the sweep from (its config); like every trial's data,
    manifest and checkpoints, they may not be or lie inside the sweep directory's outputs
    (:func:`noisyfr.outputs.check_output`, before Ray starts).
    """
    from noisyfr.lock import acquire, check_free
    from noisyfr.outputs import check_output, make_dirs, remove_dirs
    from noisyfr.train.config import run_inputs

    check_output(spec.sweep_dir, [*inputs, *(p for t in spec.trials for p in run_inputs(t.config))],
                 kind="dir", writes=SWEEP_FILES)
    if resume and overwrite:
        raise NoisyFRError("sweep: --resume and --overwrite exclude each other (finish the sweep, or replace it)")
    plan_manifests(spec)
    state = _state_json(spec)
    _check_state(spec, state, resume, overwrite)
    check_free(spec.sweep_dir, "sweep dir")
    # One writer per sweep directory: the driver holds its lock until it ends (the kernel lets go
    # of it when the driver dies, kill -9 included); each trial holds its own run directory's.
    created = make_dirs(spec.sweep_dir)
    try:
        lock = acquire(spec.sweep_dir, "sweep dir")
    except BaseException:
        remove_dirs(created)
        raise
    try:
        _check_state(spec, state, resume, overwrite)  # again, holding the lock: another driver may have ended
        if overwrite and (spec.sweep_dir / STATE_FILE).exists():
            clear_sweep(spec.sweep_dir)
        return _run_locked(spec, state, resume, address, progress, echo)
    finally:
        lock.release()
        remove_dirs(created)  # only when empty: a first start that failed


class _TrialStopper:
    """The driver's side of a graceful stop (SIGTERM / SIGINT while the trials run), in a thread of
    its own: it writes the stop request (``RUN/.stop``) into the run directory of every trial that
    is training (whose lock is held), again for any that starts meanwhile, waits until none is
    training (each finishes its step, writes ``checkpoints/interrupted.pt`` and lets its lock go)
    or ``grace_s`` has passed, then stops Tune the graceful way (SIGUSR1: the experiment state is
    saved with those trials unfinished, and Ray ends their processes). When Tune saves that state
    the stopped trials are released (:meth:`release`): Tune would wait 10 s before it kills each."""

    POLL_S = 0.2

    def __init__(self, spec: SweepSpec, signum: int):
        import threading

        self.dirs = {t.name: Path(t.config["output_dir"]) for t in spec.trials if t.config.get("output_dir")}
        self.signum, self.grace_s = signum, float(spec.stop_grace_s)
        self.asked: set[str] = set()
        self.left: list[str] = []
        self.tune_stopping = False      # SIGUSR1 sent: Tune is stopping its experiment
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="noisyfr-stop-trials", daemon=True)

    def start(self) -> _TrialStopper:
        self.thread.start()
        return self

    def _run(self) -> None:
        import signal
        import time

        from noisyfr.lock import is_held
        from noisyfr.train.rundir import STOP_NAME, request_stop

        name = signal.Signals(self.signum).name
        deadline = time.monotonic() + self.grace_s
        while not self.done.is_set():
            training = [n for n, d in self.dirs.items() if is_held(d)]
            for n in training:
                if not (self.dirs[n] / STOP_NAME).exists():
                    with contextlib.suppress(OSError):
                        request_stop(self.dirs[n], f"noisyfr sweep (pid {os.getpid()}): {name}")
                        self.asked.add(n)
            if not training or time.monotonic() >= deadline:
                self.left = training
                break
            time.sleep(self.POLL_S)
        while not self.done.is_set() and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            time.sleep(self.POLL_S)  # Tune has not installed its handler yet (fit is starting)
        if not self.done.is_set():
            LOG.info(f"{name}: {len(self.asked)} trials asked to stop, "
                     + (f"{len(self.left)} still training after {self.grace_s:g} s ({', '.join(self.left)})"
                        if self.left else "none training now") + "; stopping Tune")
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop (its handler, main thread)
            self.tune_stopping = True

    def release(self) -> None:
        """Called in the main thread while Tune saves its experiment state: once Tune is stopping,
        withdraw the stop request of every asked trial that has stopped (its lock is free; it
        waits in :func:`noisyfr.tune.trainable._wait_for_the_driver`), and it ends. SIGUSR1 is
        raised here again, so that Tune's handler has run (the loop takes no further step, in
        which a released trial's end could be recorded) before the first trial is released; the
        state being saved, and the final one, hold those trials unfinished."""
        import signal
        import threading

        from noisyfr.lock import is_held
        from noisyfr.train.rundir import STOP_NAME, clear_stop

        if (not self.tune_stopping or threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None)):
            return
        signal.raise_signal(signal.SIGUSR1)  # Tune's handler runs before this returns
        for n in sorted(self.asked):
            if (self.dirs[n] / STOP_NAME).exists() and not is_held(self.dirs[n]):
                with contextlib.suppress(OSError):
                    clear_stop(self.dirs[n])

    def finish(self) -> None:
        """Tune has returned: end the thread and remove the stop requests it wrote (the trials'
        processes are gone with Ray; a run removes a stale request when it starts anyway)."""
        from noisyfr.train.rundir import clear_stop

        self.done.set()
        self.thread.join(self.POLL_S * 10)
        for n in self.asked:
            with contextlib.suppress(OSError):
                clear_stop(self.dirs[n])

    def summary(self) -> str:
        stopped = len(self.asked - set(self.left))
        if not self.asked:
            return "no trial was training; the trials keep their last checkpoints"
        text = (f"{stopped} training trial{'s' if stopped != 1 else ''} stopped after the current step "
                "and saved it (checkpoints/interrupted.pt)")
        if self.left:
            text += (f", {len(self.left)} did not stop within stop_grace_s={self.grace_s:g} s and "
                     "keep their last epoch checkpoints")
        return text


def _run_locked(spec: SweepSpec, state: dict, resume: bool, address: str | None, progress: bool | None,
                echo: Callable[[str], Any] | None):
    """:func:`run_sweep` once the sweep directory is checked and locked."""
    import signal
    import threading

    from noisyfr.errors import Stopped
    from noisyfr.outputs import output_folder

    quiet_ray_env()
    import ray

    first = not (spec.sweep_dir / STATE_FILE).exists()
    handler = None
    stop: dict[str, Any] = {"signal": None, "fitting": False, "stopper": None}

    def on_stop(signum, frame):
        if stop["fitting"]:
            if stop["signal"] is None:  # the trials stop at their current step, then Tune stops
                stop["signal"] = signum
                stop["stopper"] = _ACTIVE["stopper"] = _TrialStopper(spec, signum).start()
                # Tune's own lines about the stop (SIGINT, Tuner.restore) would contradict the one
                # line this driver prints
                tune_log.setLevel(logging.ERROR)
            elif signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
                # asked twice: Tune's graceful stop now (the trials keep their last checkpoints)
                signal.raise_signal(signal.SIGUSR1)
                if stop["stopper"] is not None:
                    stop["stopper"].tune_stopping = True
        else:
            stop["signal"] = signum
            raise Stopped(signum, f"sweep dir {spec.sweep_dir}: stopped by {signal.Signals(signum).name} "
                          "before its trials ran" + ("" if first else "; continue with noisyfr sweep --resume"))

    tune_log = logging.getLogger("ray.tune.tune")
    tune_level = tune_log.level
    main = threading.current_thread() is threading.main_thread()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    old_handlers = {s: signal.signal(s, on_stop) for s in stop_signals} if main else {}
    old_sigint_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    if main:  # SIGINT is this driver's too: Tune's own handler would end the trials at once
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        with local_ray(lambda: ray.init(address=address, **RAY_INIT), address):
            # Until sweep.json is written, a failure removes what this call added to the directory
            # (the directory too when it made it); from then on the directory holds a sweep that
            # --resume finishes.
            if main:  # again: ray.init installs its own SIGTERM handler (it ends the driver, status 1)
                for s in stop_signals:
                    signal.signal(s, on_stop)
            with output_folder(spec.sweep_dir) if first else contextlib.nullcontext():
                handler = _sweep_log(spec.sweep_dir)
                LOG.info(f"sweep {spec.name}: {len(spec.trials)} trials -> {spec.sweep_dir}"
                         + (" (resumed)" if resume else ""))
                check_cluster(spec)
                make_manifests(spec, progress=progress)
                if first:
                    write_state(spec, state)
            tuner = _tuner(spec, resume, progress)
            stop["fitting"] = True
            try:
                grid = tuner.fit()
            finally:
                stop["fitting"] = False
                if stop["stopper"] is not None:
                    stop["stopper"].done.set()
            if stop["signal"] is not None:
                stopper = stop["stopper"]
                msg = (f"sweep dir {spec.sweep_dir}: stopped by {signal.Signals(stop['signal']).name}; "
                       f"{stopper.summary() if stopper is not None else 'its trials keep their last checkpoints'}: "
                       f"continue with noisyfr sweep --resume --out {spec.sweep_dir}")
                LOG.info(msg)
                raise Stopped(stop["signal"], msg)
            histories = trial_histories(grid)
    finally:
        _ACTIVE["stopper"] = None
        if stop["stopper"] is not None:  # Ray is shut down: the trials' processes are gone
            stop["stopper"].finish()
            tune_log.setLevel(tune_level)
        if main:
            for s, old in old_handlers.items():
                signal.signal(s, old)
            if old_sigint_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_sigint_env
        if handler is not None:
            LOG.removeHandler(handler)
            handler.close()
    table = results_table(spec, histories)
    write_results(table, spec.sweep_dir, spec)
    summary = (spec.sweep_dir / "summary.md").read_text(encoding="utf-8")
    with open(spec.sweep_dir / "sweep.log", "a", encoding="utf-8") as fh:
        fh.write(summary + "\n")
    if echo is not None:
        echo(summary)
    return table


def _sweep_log(sweep_dir: Path) -> logging.Handler:
    """Append the sweep's progress lines to ``SWEEP_DIR/sweep.log``."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(sweep_dir / "sweep.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    LOG.addHandler(handler)
    return handler
