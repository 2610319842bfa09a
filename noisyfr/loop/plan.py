"""The loop's plan: a loop config (a training config plus its ``loop`` section, see
:mod:`noisyfr.loop.run`) read and checked before any work (:func:`load_plan`), its rules, and
the training config of each stage (the noisy run, a retrained run)."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisyfr import numeric
from noisyfr.errors import NoisyFRError
from noisyfr.names import label_value, slug

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
    loss_slugs = [loss_slug(x) for x in plan.losses]
    if len(set(loss_slugs)) != len(loss_slugs):
        raise _err("loop.losses", "lists one loss setting twice")
    check_names(list(conds), "loop.conditions", "", ())
    for loss, _cond, noise, seed in plan.cells():  # every training config, validated before any work
        load_config(noisy_config(plan, loss, noise, seed, Path("loop")))
        load_config(retrain_config(plan, loss, seed, Path("loop"), Path("clean.parquet")))
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


def loss_slug(loss: Mapping) -> str:
    from noisyfr.losses import loss_label

    try:
        return slug(loss_label(loss).replace(" ", "_"))
    except (NoisyFRError, ValueError, TypeError, KeyError):
        return slug(label_value(dict(loss)))


def common(plan: Plan, loss: Mapping, seed: int, out: Path) -> dict:
    cfg = copy.deepcopy(plan.base)
    cfg["loss"] = copy.deepcopy(dict(loss))
    cfg["seed"] = int(seed)
    cfg["output_dir"] = str(out)
    cfg.pop("name", None)
    cfg.setdefault("data", {})
    cfg["data"].pop("manifest", None)
    return cfg


def noisy_config(plan: Plan, loss: Mapping, noise: Mapping, seed: int, out: Path) -> dict:
    cfg = common(plan, loss, seed, out)
    cfg["data"]["noise"] = dict(noise)
    return cfg


def retrain_config(plan: Plan, loss: Mapping, seed: int, out: Path, manifest: Path) -> dict:
    cfg = common(plan, loss, seed, out)
    cfg["data"]["noise"] = None
    cfg["data"]["manifest"] = str(manifest)
    return cfg


# --------------------------------------------------------------------------- stages
