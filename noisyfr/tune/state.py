"""A sweep directory's record of its sweep (``sweep.json``): written when the sweep starts, read
back on ``--resume`` to refuse a different config, and the rule that one directory holds one
sweep."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from noisyfr.errors import NoisyFRError
from noisyfr.tune.spec import STATE_FILE, SweepSpec


def state_json(spec: SweepSpec) -> dict:
    """``spec.state()`` as it reads back from ``sweep.json`` (JSON types, the config's key order)."""
    return json.loads(json.dumps(spec.state(), default=str))


def write_state(spec: SweepSpec, state: dict | None = None) -> Path:
    """Write ``SWEEP_DIR/sweep.json``: the expanded sweep (``state``, to recognise it on ``--resume``)
    and its source (the raw config and the directory relative paths were resolved against), from
    which ``--resume --out SWEEP_DIR`` rebuilds it without the config file.

    Keys keep the config's order: a mapping-valued axis (``loss: [{name: arcface, s: 32, m: 0.5}]``)
    names its trials in that order (``loss=arcface-s32-m0.5``), and sorted keys would rename them."""
    from noisyfr.io import atomic_write

    path = spec.sweep_dir / STATE_FILE
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump({"state": state_json(spec) if state is None else state,
                   "source": {"raw": spec.raw, "base_dir": spec.base_dir}}, fh, indent=1, default=str)
    return path


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _difference(stored: Any, state: dict) -> str:
    """Where the stored sweep and this one first differ, in a few words."""
    old = stored.get("trials") if isinstance(stored, dict) else None
    if not isinstance(old, list):
        return "no trials stored"
    names = [t.get("name") if isinstance(t, dict) else None for t in old]
    new = [t["name"] for t in state["trials"]]
    if len(names) != len(new):
        return f"{len(names)} trials stored, {len(new)} now"
    for a, b in zip(names, new):
        if a != b:
            return f"trial {a} stored, {b} now"
    for a, b in zip(old, state["trials"]):
        if _canonical(a) != _canonical(b):
            return f"trial {b['name']} differs"
    keys = [k for k in state if k != "trials" and _canonical(stored.get(k)) != _canonical(state[k])]
    return f"{', '.join(keys) or 'settings'} differ"


def check_state(spec: SweepSpec, state: dict, resume: bool, overwrite: bool = False) -> None:
    """A sweep directory holds one sweep: refuse another (unless ``overwrite`` replaces it), or a
    resume of a different config. The comparison ignores key order (a mapping is the same
    whatever order its keys are in)."""
    sdir, state_path = spec.sweep_dir, spec.sweep_dir / STATE_FILE
    if state_path.exists():
        if overwrite:
            return
        if not resume:
            raise NoisyFRError(f"sweep dir {sdir}: already holds a sweep; use --resume to finish it, "
                               "--overwrite to replace it, or choose another output directory")
        try:
            stored = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NoisyFRError(f"sweep dir {sdir}: unreadable {STATE_FILE} ({exc})") from None
        stored = stored.get("state") if isinstance(stored, dict) else None
        if _canonical(stored) != _canonical(state):
            raise NoisyFRError(f"sweep dir {sdir}: the config differs from the sweep stored there "
                               f"({_difference(stored, state)}); resume with the same config or "
                               "choose another output directory")
    elif resume and (sdir / "tune").exists():
        raise NoisyFRError(f"sweep dir {sdir}: no {STATE_FILE}, cannot resume")
