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
import copy
import io
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from noisyfr import numeric
from noisyfr.analysis.recovery import markdown_lines, paired_gains
from noisyfr.errors import NoisyFRError
from noisyfr.names import label_value, slug
from noisyfr.outputs import csv_safe

#: Keys of a loop config that are not training config keys.
LOOP_KEY = "loop"
#: Keys of the ``loop`` section.
SECTION_KEYS = ("losses", "conditions", "seeds", "rules", "epoch", "threads")
#: Keys of one rule.
RULE_KEYS = ("score", "max_deg", "fraction", "estimate", "label")
#: The two references every loss x condition x seed has.
NOISY, ORACLE = "noisy", "oracle"
#: The resolved plan in the loop directory (what ``--resume`` checks against).
PLAN_FILE = "loop.yaml"
#: Columns of ``loop.csv``.
COLUMNS = ("loss", "condition", "seed", "rule", "status", "fraction", "removed", "trained", "precision", "recall",
           "f1", "noise_left", "clean_lost", "heldout_accuracy", "val_accuracy", "learned",
           "gain_heldout_pp", "gain_val_pp", "to_oracle_heldout_pp", "to_oracle_val_pp", "run")
#: ``fraction: heldout`` in a rule: remove the noisy run's held-out estimate of its noise rate.
HELDOUT = "heldout"
#: The accuracies compared with the references.
ACCURACIES = ("heldout_accuracy", "val_accuracy")


def _err(key: str, msg: str) -> NoisyFRError:
    return NoisyFRError(f"loop key '{key}': {msg}")


@dataclass(frozen=True)
class Rule:
    """One cleaning rule: ``noisyfr clean --score SCORE`` with one threshold."""
    label: str
    score: str
    max_deg: float | None = None
    fraction: float | None = None
    estimate: bool = False
    fraction_from: str | None = None    # "heldout": the noisy run's held-out noise-rate estimate

    def flags(self) -> list[str]:
        """The threshold as ``noisyfr clean`` flags."""
        if self.max_deg is not None:
            return ["--max-deg", f"{self.max_deg:g}"]
        if self.fraction is not None:
            return ["--fraction", f"{self.fraction:g}"]
        return ["--estimate"]


@dataclass
class Plan:
    """A validated loop: the base training config and the grid."""
    base: dict                                  # raw training config (no loop section)
    losses: list[dict]
    conditions: dict[str, dict]
    seeds: list[int]
    rules: list[Rule]
    epoch: str = "last"
    threads: int = 1
    raw: dict = field(default_factory=dict)     # the config as given (written to loop.yaml)

    def cells(self):
        """``(loss section, condition label, noise mapping, seed)`` in the order they run."""
        for loss in self.losses:
            for cond, noise in self.conditions.items():
                for seed in self.seeds:
                    yield loss, cond, noise, seed


def _rule(i: int, item: Any) -> Rule:
    from noisyfr.cleaning.scores import DEG_RANGE, SCORES

    key = f"loop.rules[{i}]"
    if not isinstance(item, Mapping):
        raise _err(key, "must be a mapping like {score: aum, estimate: true}")
    unknown = sorted(set(item) - set(RULE_KEYS))
    if unknown:
        raise _err(f"{key}.{unknown[0]}", f"unknown key; a rule takes {', '.join(RULE_KEYS)}")
    score = item.get("score")
    if score not in SCORES:
        raise _err(f"{key}.score", f"{score!r}: choose from {', '.join(SCORES)}")
    given = [k for k in ("max_deg", "fraction") if item.get(k) is not None]
    estimate = item.get("estimate", False)
    if not isinstance(estimate, bool):
        raise _err(f"{key}.estimate", "must be true or false")
    if estimate:
        given.append("estimate")
    if len(given) != 1:
        raise _err(key, "give exactly one threshold: max_deg, fraction or estimate: true"
                   + (f" (got {', '.join(given)})" if given else ""))
    max_deg = fraction = fraction_from = None
    if "max_deg" in given:
        if score not in DEG_RANGE:
            raise _err(f"{key}.max_deg", f"applies to the angle scores ({', '.join(DEG_RANGE)}), not {score}")
        lo, hi = DEG_RANGE[score]
        max_deg = numeric.real(item["max_deg"], f"loop key '{key}.max_deg'", lo=lo, hi=hi, lo_open=True, hi_open=True)
    if "fraction" in given and item["fraction"] == HELDOUT:
        fraction_from = HELDOUT
    elif "fraction" in given:
        fraction = numeric.real(item["fraction"], f"loop key '{key}.fraction'", lo=0.0, hi=1.0,
                                lo_open=True, hi_open=True)
    label = item.get("label")
    if label is None:
        label = (f"{score} max_deg={max_deg:g}" if max_deg is not None else
                 f"{score} fraction={fraction:g}" if fraction is not None else
                 f"{score} fraction={HELDOUT}" if fraction_from else f"{score} estimate")
    if not isinstance(label, str) or not label.strip():
        raise _err(f"{key}.label", "must be a non-empty string")
    return Rule(label=label, score=score, max_deg=max_deg, fraction=fraction, estimate=estimate,
                fraction_from=fraction_from)


def load_plan(config: str | Path | Mapping, overrides=()) -> Plan:
    """Read and validate a loop config (a YAML path or a mapping; ``overrides``: dotted
    ``KEY=VALUE`` strings or pairs, as for ``noisyfr train``). Every training config of the
    loop (each loss x condition x seed) is validated here; nothing is written. One-line
    NoisyFRError naming the key otherwise."""
    from noisyfr.cleaning.scores import EPOCH_RULES
    from noisyfr.io import read_yaml
    from noisyfr.noise.spec import NoiseSpec
    from noisyfr.train.config import apply_overrides, load_config

    if isinstance(config, Mapping):
        raw = copy.deepcopy(dict(config))
    else:
        raw = read_yaml(config, "loop config")
        if not isinstance(raw, dict):
            raise NoisyFRError(f"{config}: a loop config must be a mapping (a training config plus 'loop')")
    raw = apply_overrides(raw, overrides)
    section = raw.get(LOOP_KEY)
    if not isinstance(section, Mapping):
        raise _err(LOOP_KEY, "missing: a loop config is a training config plus a 'loop' section "
                   "(losses, conditions, seeds, rules; docs/cleaning.md)")
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise _err(f"loop.{unknown[0]}", f"unknown key; the section takes {', '.join(SECTION_KEYS)}")
    base = {k: v for k, v in raw.items() if k != LOOP_KEY}
    for k in ("grid", "resources", "max_failures", "workers_per_trial", "max_concurrent_trials", "trainer"):
        if k in base:
            raise _err(k, "a sweep key; a loop config takes its grid in the 'loop' section")
    losses = section.get("losses")
    if not isinstance(losses, list) or not losses or not all(isinstance(x, Mapping) for x in losses):
        raise _err("loop.losses", "must be a non-empty list of loss sections ({name: arcface, s: 32, ...})")
    conditions = section.get("conditions")
    if not isinstance(conditions, Mapping) or not conditions:
        raise _err("loop.conditions", "must be a non-empty mapping label -> data.noise ({closed: 0.2})")
    conds: dict[str, dict] = {}
    for label, noise in conditions.items():
        if not isinstance(noise, Mapping):
            raise _err(f"loop.conditions.{label}", "must be a data.noise mapping ({closed: 0.2, ...})")
        spec = NoiseSpec.from_mapping(dict(noise), name=lambda k, c=label: f"loop key 'loop.conditions.{c}.{k}'")
        if spec.seed is not None:
            raise _err(f"loop.conditions.{label}.seed", "the noise is drawn from each loop seed; leave it out")
        if not (spec.closed or spec.open or spec.split or spec.merge):
            raise _err(f"loop.conditions.{label}", "injects no noise: the oracle would equal the noisy run")
        conds[str(label)] = dict(noise)
    seeds = section.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise _err("loop.seeds", "must be a non-empty list of integers")
    seeds = [numeric.integer(s, f"loop key 'loop.seeds[{i}]'", lo=0, hi=2**32 - 1) for i, s in enumerate(seeds)]
    if len(set(seeds)) != len(seeds):
        raise _err("loop.seeds", "lists a seed twice")
    rules_raw = section.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise _err("loop.rules", "must be a non-empty list of rules ({score: aum, estimate: true})")
    rules = [_rule(i, r) for i, r in enumerate(rules_raw)]
    check_names([r.label for r in rules], "loop.rules", "label", RESERVED)
    epoch = section.get("epoch", "last")
    if epoch not in EPOCH_RULES:
        raise _err("loop.epoch", f"{epoch!r}: choose from {', '.join(EPOCH_RULES)}")
    threads = numeric.integer(section.get("threads", 1), "loop key 'loop.threads'", lo=1, hi=1024)
    plan = Plan(base=base, losses=[dict(x) for x in losses], conditions=conds, seeds=seeds, rules=rules,
                epoch=epoch, threads=threads, raw=raw)
    loss_slugs = [_loss_slug(x) for x in plan.losses]
    if len(set(loss_slugs)) != len(loss_slugs):
        raise _err("loop.losses", "lists one loss setting twice")
    check_names(list(conds), "loop.conditions", "", ())
    for loss, _cond, noise, seed in plan.cells():  # every training config, validated before any work
        load_config(_noisy_config(plan, loss, noise, seed, Path("loop")))
        load_config(_retrain_config(plan, loss, seed, Path("loop"), Path("clean.parquet")))
    return plan


#: File names a rule's label may not slug to (case-insensitively): the reference runs' and the
#: cleaned manifests' folder in each cell.
RESERVED = (NOISY, ORACLE, "clean")


def check_names(labels: list[str], key: str, field: str, reserved) -> None:
    """Labels that become file names (:func:`noisyfr.names.slug`) are checked after slugging,
    case-insensitively (a macOS filesystem does not tell ``Oracle`` from ``oracle``): none may
    be ``reserved``, start with a dot (``..`` would leave the loop's folder) or end in
    ``.scores`` (a cleaning's scores file), and no two may meet. One-line error naming the key."""
    seen: dict[str, str] = {}
    for i, label in enumerate(labels):
        name = slug(label)
        folded = name.casefold()
        where = f"{key}[{i}].{field}" if field else f"{key}.{label}"
        if folded in {r.casefold() for r in reserved}:
            raise _err(where, f"{label!r} gives the file name {name!r}, reserved for the reference runs "
                       f"({', '.join(reserved)}); choose another")
        if name.startswith(".") or folded.endswith(".scores"):
            raise _err(where, f"{label!r} gives the file name {name!r}, which cannot be one (a leading dot "
                       "or a trailing .scores); choose another")
        if folded in seen:
            raise _err(key, f"{seen[folded]!r} and {label!r} give the same file name {name!r} (compared "
                       "case-insensitively); give one another label")
        seen[folded] = label


def _loss_slug(loss: Mapping) -> str:
    from noisyfr.losses import loss_label

    try:
        return slug(loss_label(loss).replace(" ", "_"))
    except (NoisyFRError, ValueError, TypeError, KeyError):
        return slug(label_value(dict(loss)))


def _common(plan: Plan, loss: Mapping, seed: int, out: Path) -> dict:
    cfg = copy.deepcopy(plan.base)
    cfg["loss"] = copy.deepcopy(dict(loss))
    cfg["seed"] = int(seed)
    cfg["output_dir"] = str(out)
    cfg.pop("name", None)
    cfg.setdefault("data", {})
    cfg["data"].pop("manifest", None)
    return cfg


def _noisy_config(plan: Plan, loss: Mapping, noise: Mapping, seed: int, out: Path) -> dict:
    cfg = _common(plan, loss, seed, out)
    cfg["data"]["noise"] = dict(noise)
    return cfg


def _retrain_config(plan: Plan, loss: Mapping, seed: int, out: Path, manifest: Path) -> dict:
    cfg = _common(plan, loss, seed, out)
    cfg["data"]["noise"] = None
    cfg["data"]["manifest"] = str(manifest)
    return cfg


# --------------------------------------------------------------------------- stages

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

        epochs = int(load_config(_common(plan, plan.losses[0], plan.seeds[0], out))["optim"]["epochs"])
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
                    cell = out / "runs" / _loss_slug(loss) / slug(cond) / f"seed_{seed}"
                    where = f"{name} | {cond} | seed {seed}"
                    noisy_dir = cell / NOISY
                    bar.start(f"train {where} | {NOISY}")
                    t0 = time.perf_counter()
                    skipped = finished(noisy_dir, epochs)
                    if not skipped:
                        _train(_noisy_config(plan, loss, noise, seed, noisy_dir), resume, log)
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
                            _train(_retrain_config(plan, loss, seed, retrain, manifest.resolve()), resume, log)
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
