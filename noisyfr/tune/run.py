"""Running a sweep: Ray set-up, manifests, the Tuner (fresh or restored) and the results files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from noisyfr.errors import NoisyFRError
from noisyfr.tune.results import results_table, write_results
from noisyfr.tune.spec import STATE_FILE, SweepSpec, plan_manifests
from noisyfr.tune.trainable import one_line, trial_fn, trial_name

DRIVER_CPU = 0.01   # CPU reserved by a trial's driver when its workers are Ray Train actors

#: Environment of Ray: quiet, offline, light. Set (unless already set) before ray is imported.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
}


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
    for key, (train, noise, trials) in tqdm(groups.items(), desc="manifests", unit="manifest",
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


def _progress_callback(total: int, progress: bool | None):
    from ray import tune

    class _Progress(tune.Callback):
        """tqdm bar over finished trials (not pickled with the experiment)."""

        def __init__(self):
            self.bar = None

        def __getstate__(self):
            return {"bar": None}

        def setup(self, **info):
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="trials", unit="trial",
                            disable=None if progress is None else not progress)

        def _tick(self, trial):
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(trial_name(trial)[:40])

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._tick(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._tick(trial)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return _Progress()


def _state_json(spec: SweepSpec) -> dict:
    return json.loads(json.dumps(spec.state(), sort_keys=True, default=str))


def _check_state(spec: SweepSpec, state: dict, resume: bool) -> None:
    """A sweep directory holds one sweep: refuse another, or a resume of a different config."""
    sdir, state_path = spec.sweep_dir, spec.sweep_dir / STATE_FILE
    if state_path.exists():
        if not resume:
            raise NoisyFRError(f"sweep dir {sdir}: already holds a sweep; use --resume to finish it "
                               "or choose another output directory")
        try:
            stored = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NoisyFRError(f"sweep dir {sdir}: unreadable {STATE_FILE} ({exc})") from None
        if stored.get("state") != state:
            raise NoisyFRError(f"sweep dir {sdir}: the config differs from the sweep stored there; "
                               "resume with the same config or choose another output directory")
    elif resume and (sdir / "tune").exists():
        raise NoisyFRError(f"sweep dir {sdir}: no {STATE_FILE}, cannot resume")


def _tuner(spec: SweepSpec, resume: bool, progress: bool | None):
    from ray import tune

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
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            storage_path=str(spec.sweep_dir), name="tune", verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_progress_callback(len(spec.trials), progress)]),
    )


def run_sweep(spec: SweepSpec, *, resume: bool = False, address: str | None = None,
              progress: bool | None = None, echo: Callable[[str], Any] | None = print):
    """Run every trial of ``spec`` with Ray Tune; write results and summary; return the results DataFrame.

    ``resume``: finish an interrupted sweep in ``spec.sweep_dir`` (``Tuner.restore``: finished trials are
    kept, unfinished ones continue from their last checkpoint, errored ones are not re-run).
    ``address``: an existing Ray cluster (``auto`` or ``HOST:PORT``); default: reuse an initialised Ray
    session, else start a local one. Everything is checked before the first trial starts.
    """
    from noisyfr.io import atomic_write

    state_path = spec.sweep_dir / STATE_FILE
    plan_manifests(spec)
    state = _state_json(spec)
    _check_state(spec, state, resume)
    quiet_ray_env()
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        started = True
    try:
        check_cluster(spec)
        make_manifests(spec, progress=progress)
        if not state_path.exists():
            with atomic_write(state_path, "w", encoding="utf-8") as fh:
                json.dump({"state": state, "source": {"raw": spec.raw, "base_dir": spec.base_dir}},
                          fh, sort_keys=True, indent=1, default=str)
        grid = _tuner(spec, resume, progress).fit()
        histories = {r.config["trial"]["name"]: (r.metrics_dataframe,
                                                 None if r.error is None else one_line(r.error))
                     for r in grid}
    finally:
        if started:
            ray.shutdown()
    table = results_table(spec, histories)
    write_results(table, spec.sweep_dir, spec)
    if echo is not None:
        echo((spec.sweep_dir / "summary.md").read_text(encoding="utf-8"))
    return table
