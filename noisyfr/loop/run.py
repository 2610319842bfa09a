"""The cleaning loop: train on noisy labels, clean with each rule, retrain on each cleaned
manifest, and compare with the run on the noisy labels and the oracle run on the truly clean
samples (``noisyfr loop CONFIG.yaml``; docs/cleaning.md).

A loop config is a training config (docs/training.md) plus a ``loop`` section::

    loop:
      losses: [{name: arcface, ...}, {name: expface, ...}]   # each replaces the loss section
      conditions:                                           # label -> data.noise (docs/noise.md)
        closed=0.2: {closed: 0.2, holdout_ids: 8}
      seeds: [0, 1, 2]
      rules:                                                # one noisyfr clean rule each
        - {score: subcentre, max_deg: 75}
        - {score: aum, fraction: heldout}                   # the held-out noise-rate estimate
      epoch: last                                           # the epoch the scores are read at
      threads: 1                                            # torch threads (one training at a time)

For every loss x condition x seed the loop trains the **noisy** run (the noise drawn from the
seed: every loss and rule of one seed shares the draw, the held-out split and the
initialisation), cleans it with every rule and with the **oracle** (``--score truth
--fraction`` = the true noisy fraction of the trained samples: exactly the noisy ones removed),
and retrains on each cleaned manifest (same loss, seed and regime; the cleaned manifest records
the noisy run's held-out images, so every run of a seed is judged on the same ones). A rule
that removes nothing reuses the noisy run (the retrained run would be the same run); a rule that
fails (it would empty an identity) is a row saying so.

Outputs: ``DIR/loop.csv`` (one row per run, :data:`COLUMNS`) and ``DIR/loop.md`` (per loss x
condition x rule: mean [95 % interval over seeds] of the cleaning's score against the truth and
of the accuracies; then, paired by seed, in percentage points: rule minus noisy, oracle minus
rule, oracle minus noisy, and a recovered fraction only where the oracle's gain is identified,
as a ratio of mean gains with its Fieller interval: :mod:`noisyfr.analysis.recovery`). Each
stage is skipped when its output exists and finished (``--resume``); everything runs one after another in this process.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from noisyfr.analysis.recovery import markdown_lines, paired_gains
from noisyfr.errors import NoisyFRError
from noisyfr.loop.plan import (  # noqa: F401 (the plan's names, part of this module's API)
    ACCURACIES,
    COLUMNS,
    HELDOUT,
    LOOP_KEY,
    NOISY,
    ORACLE,
    PLAN_FILE,
    RESERVED,
    RULE_KEYS,
    SECTION_KEYS,
    Plan,
    Rule,
    check_names,
    common,
    load_plan,
    loss_slug,
    noisy_config,
    retrain_config,
)
from noisyfr.names import slug
from noisyfr.outputs import csv_safe


def finished(run_dir: Path, epochs: int) -> bool:
    """True when ``run_dir`` holds a finished run: ``config.yaml`` and a ``metrics.csv`` row of
    its last epoch."""
    metrics = run_dir / "metrics.csv"
    if not (run_dir / "config.yaml").is_file() or not metrics.is_file():
        return False
    try:
        m = pd.read_csv(metrics)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return False
    return "epoch" in m and len(m) > 0 and int(m["epoch"].max()) >= epochs


def _train(cfg: dict, resume: bool, log) -> None:
    """One training, its terminal lines sent to ``log`` (the run keeps them in train.log)."""
    from noisyfr.train import load_config, train

    out = Path(cfg["output_dir"])
    cfg = dict(cfg, resume=bool(resume and out.exists()))
    with contextlib.redirect_stdout(log):
        train(load_config(cfg))


def _noisy_fraction(run_dir: Path, epoch_rule: str) -> float:
    """The true noisy fraction of the samples the run's logs score (its trained samples)."""
    from noisyfr.analysis import load
    from noisyfr.cleaning import scores

    run = load.scan_run(run_dir)
    epoch, _ = scores.choose_epoch(run, epoch_rule)
    table = scores.run_scores(run, epoch)
    return float(table["is_noisy"].mean())


def heldout_estimate(run_dir: Path, epoch_rule: str = "last") -> float:
    """The run's closed-set noise rate estimated from its held-out images at the epoch the scores
    are read at (:func:`noisyfr.train.heldout.heldout_noise_rate`: no ground truth used); NaN
    without held-out images."""
    from noisyfr.analysis import load
    from noisyfr.angle_log import heldout_noise_rate
    from noisyfr.cleaning import scores

    run = load.scan_run(run_dir)
    epoch, _ = scores.choose_epoch(run, epoch_rule)
    m = run.metrics
    row = m[m["epoch"] == epoch]
    if row.empty or "heldout_given_accuracy" not in row:
        return math.nan
    classes = int((run.manifest_meta or {}).get("num_classes") or 0)
    r = row.iloc[-1]
    return heldout_noise_rate(float(r["heldout_accuracy"]), float(r["heldout_given_accuracy"]), classes)


def _last(run_dir: Path) -> dict:
    """The accuracies and the ``learned`` verdict of a run's last epoch, and its trained samples."""
    m = pd.read_csv(run_dir / "metrics.csv")
    row = m.sort_values("epoch").iloc[-1]
    out = {k: float(row[k]) if k in row and pd.notna(row[k]) else math.nan for k in ACCURACIES}
    out["learned"] = bool(row["learned"]) if "learned" in row and pd.notna(row["learned"]) else None
    return out


def _truth(side: dict) -> dict:
    rows = (side.get("cleaned") or {}).get("truth") or []
    allrow = next((r for r in rows if r.get("noise") == "all"), {})
    return {k: (math.nan if allrow.get(k) is None else float(allrow[k]))
            for k in ("precision", "recall", "f1", "noise_left", "clean_lost")}


def _clean_done(path: Path) -> bool:
    from noisyfr.noise.manifest import sidecar_path

    return path.is_file() and sidecar_path(path).is_file() and \
        path.with_name(path.stem + ".scores.parquet").is_file()


class _Progress:
    """A progress bar on a terminal, one line per stage otherwise."""

    def __init__(self, total: int, stream, check=None):
        from tqdm.auto import tqdm

        self.check = check
        self.stream = stream
        self.done = 0
        self.total = total
        self.bar = tqdm(total=total, unit="stage", file=stream, dynamic_ncols=True, disable=None,
                        desc="loop")
        self.tty = not self.bar.disable

    def start(self, text: str) -> None:
        if self.check is not None:
            self.check()
        if self.tty:
            self.bar.set_description_str(text[:60])

    def end(self, text: str, seconds: float | None = None, skipped: bool = False) -> None:
        self.done += 1
        self.bar.update(1)
        if not self.tty:
            took = "skipped (done)" if skipped else f"{seconds:.0f} s" if seconds is not None else ""
            print(f"[{self.done}/{self.total}] {text}  {took}", file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


def run_loop(plan: Plan, out: Path, resume: bool = False, stream=None, log=None) -> pd.DataFrame:
    """Run every stage of ``plan`` into ``out`` (skipping finished ones when ``resume``), then
    write ``loop.csv`` and ``loop.md``; return the table."""
    import torch
    import yaml

    from noisyfr.outputs import make_dirs

    stream = sys.stderr if stream is None else stream
    log = io.StringIO() if log is None else log
    out = Path(out)
    plan_path = out / PLAN_FILE
    text = yaml.safe_dump(plan.raw, sort_keys=True, default_flow_style=None)
    if plan_path.is_file():
        if not resume:
            raise NoisyFRError(f"--out {out}: already holds a loop ({PLAN_FILE}); continue it with "
                               "--resume or choose another directory")
        if yaml.safe_load(plan_path.read_text(encoding="utf-8")) != yaml.safe_load(text):
            raise NoisyFRError(f"--out {out}: holds a loop of another config ({plan_path}); "
                               "resume it with that config, or choose another directory")
    elif out.exists() and any(out.iterdir()):
        raise NoisyFRError(f"--out {out}: not empty and holds no loop ({PLAN_FILE})")
    make_dirs(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    try:
        return _run(plan, out, resume, stream, log, plan_path, text)
    finally:
        torch.set_num_threads(threads)


def _run(plan: Plan, out: Path, resume: bool, stream, log, plan_path: Path, text: str) -> pd.DataFrame:
    from noisyfr.cleaning.cli import clean
    from noisyfr.data.synthetic import shared_renders
    from noisyfr.io import atomic_write
    from noisyfr.lock import acquire
    from noisyfr.noise.manifest import read_meta
    from noisyfr.outputs import make_dirs

    epochs = int(plan.base.get("optim", {}).get("epochs", 0) or 0)
    if epochs <= 0:
        from noisyfr.train import load_config

        epochs = int(load_config(common(plan, plan.losses[0], plan.seeds[0], out))["optim"]["epochs"])
    cells = list(plan.cells())
    n_stages = len(cells) * (1 + 2 * (len(plan.rules) + 1))
    rows: list[dict] = []
    t_start = time.perf_counter()
    trained = 0
    with acquire(out, "loop directory"):
        if not plan_path.is_file():
            with atomic_write(plan_path, "w") as fh:
                fh.write(text)
        bar = _Progress(n_stages, stream, _stop_between_stages(out))
        try:
            with shared_renders():
                for loss, cond, noise, seed in cells:
                    from noisyfr.losses import loss_label

                    name = loss_label(loss)
                    cell = out / "runs" / loss_slug(loss) / slug(cond) / f"seed_{seed}"
                    where = f"{name} | {cond} | seed {seed}"
                    noisy_dir = cell / NOISY
                    bar.start(f"train {where} | {NOISY}")
                    t0 = time.perf_counter()
                    skipped = finished(noisy_dir, epochs)
                    if not skipped:
                        _train(noisy_config(plan, loss, noise, seed, noisy_dir), resume, log)
                        trained += 1
                    bar.end(f"train {where} | {NOISY}", time.perf_counter() - t0, skipped)
                    ref = {"loss": name, "condition": cond, "seed": seed}
                    noisy_frac = _noisy_fraction(noisy_dir, plan.epoch)
                    rows.append({**ref, "rule": NOISY, "status": "ok", "removed": 0,
                                 "trained": _trained(noisy_dir), "precision": math.nan, "recall": 0.0,
                                 "f1": math.nan, "noise_left": noisy_frac, "clean_lost": 0.0,
                                 **_last(noisy_dir), "run": str(noisy_dir.relative_to(out))})
                    oracle = Rule(label=ORACLE, score="truth", fraction=noisy_frac)
                    for rule in [oracle, *plan.rules]:
                        manifest = cell / "clean" / f"{slug(rule.label)}.parquet"
                        row = {**ref, "rule": rule.label}
                        if rule.fraction_from == HELDOUT:
                            rule = replace(rule, fraction=heldout_estimate(noisy_dir, plan.epoch))
                            row["fraction"] = rule.fraction
                            if not rule.fraction > 0:   # nothing to remove (or no estimate)
                                bar.end(f"clean {where} | {rule.label}: estimate {rule.fraction}", 0.0)
                                bar.end(f"train {where} | {rule.label}: nothing removed, the noisy run", 0.0)
                                rows.append({**row, "status": "nothing removed (the noisy run)", "removed": 0,
                                             "trained": _trained(noisy_dir), "recall": 0.0,
                                             "noise_left": noisy_frac, "clean_lost": 0.0, **_last(noisy_dir),
                                             "run": str(noisy_dir.relative_to(out))})
                                continue
                        elif rule.fraction is not None:
                            row["fraction"] = rule.fraction
                        bar.start(f"clean {where} | {rule.label}")
                        t0 = time.perf_counter()
                        skipped = _clean_done(manifest)
                        try:
                            if not skipped:
                                make_dirs(manifest.parent)
                                command = " ".join(["noisyfr", "clean", str(noisy_dir), "--out", str(manifest),
                                                    "--score", rule.score, *rule.flags(),
                                                    "--epoch", plan.epoch, "--seed", str(seed)])
                                with contextlib.redirect_stdout(log):
                                    clean(noisy_dir, manifest, rule.score, max_deg=rule.max_deg,
                                          fraction=rule.fraction, estimate=rule.estimate, epoch=plan.epoch,
                                          seed=seed, command=command)
                        except NoisyFRError as exc:
                            bar.end(f"clean {where} | {rule.label}: failed", time.perf_counter() - t0)
                            bar.end(f"train {where} | {rule.label}: not run", 0.0)
                            rows.append({**row, "status": f"clean failed: {str(exc).splitlines()[0]}"})
                            continue
                        bar.end(f"clean {where} | {rule.label}", time.perf_counter() - t0, skipped)
                        side = read_meta(manifest)
                        prov = side.get("cleaned") or {}
                        row.update({"removed": int(prov.get("removed", 0)), **_truth(side)})
                        retrain = cell / slug(rule.label)
                        bar.start(f"train {where} | {rule.label}")
                        t0 = time.perf_counter()
                        if row["removed"] == 0:
                            bar.end(f"train {where} | {rule.label}: nothing removed, the noisy run", 0.0)
                            rows.append({**row, "status": "nothing removed (the noisy run)",
                                         "trained": _trained(noisy_dir), **_last(noisy_dir),
                                         "run": str(noisy_dir.relative_to(out))})
                            continue
                        skipped = finished(retrain, epochs)
                        if not skipped:
                            _train(retrain_config(plan, loss, seed, retrain, manifest.resolve()), resume, log)
                            trained += 1
                        bar.end(f"train {where} | {rule.label}", time.perf_counter() - t0, skipped)
                        rows.append({**row, "status": "ok", "trained": _trained(retrain), **_last(retrain),
                                     "run": str(retrain.relative_to(out))})
        finally:
            bar.close()
            bar.check.restore()
        table = paired_gains(pd.DataFrame(rows))
        table = table.reindex(columns=list(COLUMNS))
        wall = time.perf_counter() - t_start
        with atomic_write(out / "loop.csv", "w", newline="") as fh:
            csv_safe(table).to_csv(fh, index=False)
        with atomic_write(out / "loop.md", "w") as fh:
            fh.write(markdown(table, plan, wall=wall, trained=trained))
    print(f"loop: {trained} training run(s) in {wall:.0f} s; {out / 'loop.csv'}, {out / 'loop.md'}",
          file=stream, flush=True)
    return table


class _stop_between_stages:
    """SIGTERM / SIGINT between two stages stop the loop before the next one (Stopped, exit
    143 / 130; every finished stage is kept and ``--resume`` continues). During a training the
    trainer's own handler applies: it stops the run after the current step, in any epoch, with
    ``checkpoints/interrupted.pt``, and the loop stops with it; ``--resume`` resumes that run
    from there (``_train``). A second signal stops at once."""

    def __init__(self, out: Path):
        import signal
        import threading

        self.out, self.signum, self.old = out, None, {}
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._on) for s in (signal.SIGTERM, signal.SIGINT)}

    def _on(self, signum, frame):
        from noisyfr.errors import Stopped

        if self.signum is not None:
            raise Stopped(signum, "stopped by a second signal, at once")
        self.signum = signum

    def __call__(self) -> None:
        import signal

        from noisyfr.errors import Stopped

        if self.signum is not None:
            raise Stopped(self.signum, f"stopped by {signal.Signals(self.signum).name} between two stages; "
                          f"continue with noisyfr loop --resume --out {self.out}")

    def restore(self) -> None:
        import signal

        for s, old in self.old.items():
            signal.signal(s, old)
        self.old = {}


def _trained(run_dir: Path) -> int:
    """How many samples the run trained on (the rows of its first angle log)."""
    import pyarrow.parquet as pq

    logs = sorted((run_dir / "angles").glob("epoch_*.parquet"))
    return int(pq.ParquetFile(logs[0]).metadata.num_rows) if logs else -1


# --------------------------------------------------------------------------- the table

#: Columns of ``loop.md`` (metric, header), each mean [95 % interval over seeds].
MD_METRICS = (("removed", "removed"), ("precision", "precision"), ("recall", "recall"),
              ("noise_left", "noise left"), ("heldout_accuracy", "held-out acc"),
              ("val_accuracy", "verification acc"))


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per loss x condition x rule: n runs, the runs that learned, and mean / lo / hi over
    seeds of every :data:`MD_METRICS` column (rules in the loop's order, references first)."""
    from noisyfr.analysis.seeds import metric_interval

    order = list(dict.fromkeys([NOISY, ORACLE, *table["rule"]]))
    out = []
    for (loss, cond), cell in table.groupby(["loss", "condition"], sort=False):
        for rule in [r for r in order if r in set(cell["rule"])]:
            g = cell[cell["rule"] == rule]
            rec: dict[str, Any] = {"loss": loss, "condition": cond, "rule": rule, "runs": len(g),
                                   "failed": int(g["status"].astype(str).str.startswith("clean failed").sum()),
                                   "learned": int(g["learned"].fillna(False).astype(bool).sum())
                                   if "learned" in g else 0}
            for metric, _ in MD_METRICS:
                iv = metric_interval(metric, pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=float))
                rec.update({f"{metric}_mean": iv["mean"], f"{metric}_lo": iv["lo"],
                            f"{metric}_hi": iv["hi"], f"{metric}_n": iv["n"]})
            out.append(rec)
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame, plan: Plan | None = None, wall: float | None = None,
             trained: int | None = None) -> str:
    """``loop.md``: the summary table per loss x condition x rule, and how to read it."""
    from noisyfr.analysis.seeds import format_interval

    s = summary(table)
    heads = [h for _, h in MD_METRICS]
    lines = ["# The cleaning loop", ""]
    if plan is not None:
        lines += [f"{len(plan.losses)} loss(es) x {len(plan.conditions)} condition(s) x {len(plan.seeds)} "
                  f"seed(s) x ({len(plan.rules)} rule(s) + the oracle), each against the run on the noisy "
                  f"labels; scores read at the {plan.epoch} epoch of the noisy run; accuracies at the "
                  "last epoch of each run.", ""]
    if wall is not None:
        lines += [f"This invocation: {trained} training run(s), {wall:.0f} s wall.", ""]
    lines += ["Mean [95 % interval over seeds] (n); for a quantity in [0, 1] the t-interval on the "
              "logit scale. *removed*: samples removed from the noisy run's "
              "training samples; *precision*, *recall*: of the removal against the manifest's truth; "
              "*noise left*: noisy share of the kept training samples. How much of the oracle's "
              "gain each rule recovers is the next table, paired by seed.", ""]
    lines.append("| loss | condition | rule | runs (learned) | " + " | ".join(heads) + " |")
    lines.append("|" + "---|" * (4 + len(heads)))
    for _, r in s.iterrows():
        cells = []
        for metric, _ in MD_METRICS:
            n = int(r[f"{metric}_n"])
            digits = 0 if metric == "removed" else 3
            cells.append("-" if n == 0 else format_interval(r[f"{metric}_mean"], r[f"{metric}_lo"],
                                                              r[f"{metric}_hi"], n, digits))
        runs = f"{int(r['runs'])} ({int(r['learned'])})" + (f", {int(r['failed'])} failed" if r["failed"] else "")
        lines.append(f"| {r['loss']} | {r['condition']} | {r['rule']} | {runs} | " + " | ".join(cells) + " |")
    failed = table[table["status"].astype(str).str.startswith("clean failed")]
    if len(failed):
        lines += ["", "Rules that could not clean a run (no retraining):", ""]
        lines += [f"- {r['loss']} | {r['condition']} | seed {r['seed']} | {r['rule']}: {r['status']}"
                  for _, r in failed.iterrows()]
    same = table[table["status"].astype(str).str.startswith("nothing removed")]
    if len(same):
        lines += ["", f"{len(same)} rule run(s) removed nothing: their row is the noisy run's "
                  "(a gain of 0 pp by definition)."]
    lines += ["", *markdown_lines(table)]
    return "\n".join(lines).rstrip("\n") + "\n"
