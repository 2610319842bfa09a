"""A run directory's own rules: what it holds, the one rule for a used directory, the newest
readable checkpoint to resume from, dropping what lies after it (docs/training.md, "Used
directories"), and the stop request (``RUN/.stop``, docs/training.md, "Stopping a run")."""
from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from noisyfr.errors import NoisyFRError
from noisyfr.io import atomic_write, load_checkpoint, read_yaml
from noisyfr.train.checkpoint import INTERRUPTED, REQUIRED_KEYS, epoch_files, resume_candidates

#: The stop request's name in a run directory: while it exists the run stops at the end of its
#: current optimiser step as on SIGTERM (the sweep driver writes it into its trials' directories).
STOP_NAME = ".stop"


def request_stop(out_dir: str | Path, by: str = "") -> Path:
    """Ask the run writing ``out_dir`` to stop at the end of its current step (as SIGTERM does):
    write ``out_dir/.stop`` (one line saying who asked). Returns its path."""
    path = Path(out_dir) / STOP_NAME
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write((by or "stop requested") + "\n")
    return path


def clear_stop(out_dir: str | Path) -> None:
    """Remove a stop request left in ``out_dir`` (a run that starts or resumes ignores an earlier
    request)."""
    (Path(out_dir) / STOP_NAME).unlink(missing_ok=True)


def newest_readable_checkpoint(out_dir: Path) -> tuple[Path, dict, str | None] | None:
    """``(path, state, note)``: the newest readable checkpoint of the run directory
    (``interrupted.pt``, ``last.pt``, then ``epoch_<E>.pt`` newest first), and the one line saying
    which unreadable files were skipped (None when none was); None when there is no checkpoint.
    When none is readable, one error line names them all."""
    candidates = resume_candidates(out_dir)
    if not candidates:
        return None
    newest_epoch = max(epoch_files(out_dir / "checkpoints", "epoch_*.pt"), default=0)
    skipped: list[str] = []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location="cpu", required=REQUIRED_KEYS)
        except NoisyFRError as exc:
            reason = str(exc).split(": ", 1)[-1]
            skipped.append(f"{path.name} ({reason})")
            continue
        if path.name == INTERRUPTED and (not isinstance(state.get("partial"), dict)
                                         or int(state["epoch"]) < newest_epoch):
            continue  # left by a kill right after its epoch's own checkpoint was written
        note = (f"resume: skipped {'; '.join(skipped)}; resuming {out_dir} from {path.name} "
                f"(epoch {int(state['epoch'])})") if skipped else None
        return path, state, note
    names = ", ".join(str(p) for p in candidates)
    raise NoisyFRError(f"resume: no readable checkpoint in {out_dir / 'checkpoints'} "
                       f"({'; '.join(skipped)}); tried {names}")


def run_summary(out_dir: Path) -> str | None:
    """What a run directory holds, in a few words (``6 epochs done, loss arcface``), or None when it
    holds no run file (a checkpoint, an angle log or ``metrics.csv``)."""
    ckpts = sorted((out_dir / "checkpoints").glob("*.pt")) if (out_dir / "checkpoints").is_dir() else []
    logs = epoch_files(out_dir / "angles", "epoch_*.parquet") if (out_dir / "angles").is_dir() else {}
    metrics = out_dir / "metrics.csv"
    if not ckpts and not logs and not metrics.is_file():
        return None
    epochs = max([*epoch_files(out_dir / "checkpoints", "epoch_*.pt"), *logs], default=0)
    try:
        with open(metrics, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if str(r.get("epoch", "")).isdigit()]
        epochs = max([epochs, *(int(r["epoch"]) for r in rows)])
    except (OSError, ValueError, csv.Error):
        pass
    loss = "?"
    try:
        loss = str(read_yaml(out_dir / "config.yaml")["loss"]["name"])
    except (NoisyFRError, KeyError, TypeError):
        pass
    return f"{epochs} epoch{'s' if epochs != 1 else ''} done, loss {loss}"


def check_existing_run(out_dir: Path, cfg: Mapping[str, Any]) -> None:
    """The one rule of a used run directory: a run that starts afresh (no ``resume``, or nothing to
    resume) in a directory holding a run is refused unless ``overwrite`` says to replace it."""
    if cfg["overwrite"] or (cfg["resume"] and resume_candidates(out_dir)):
        return
    held = run_summary(out_dir)
    if held is not None:
        raise NoisyFRError(f"output_dir {out_dir}: already holds a run ({held}); continue it with --resume, "
                           "replace it with --overwrite, or choose another directory")


def truncate_after(out_dir: Path, history: list[dict], epoch: int) -> None:
    """A resumed run drops what lies after its checkpoint's ``epoch`` (left by a damaged newer
    checkpoint): later angle logs and epoch checkpoints, and the later rows of ``metrics.csv``
    (rewritten from ``history``, the checkpoint's metrics)."""
    for e, path in [*epoch_files(out_dir / "angles", "epoch_*.parquet").items(),
                    *epoch_files(out_dir / "checkpoints", "epoch_*.pt").items()]:
        if e > epoch:
            path.unlink(missing_ok=True)
    metrics = out_dir / "metrics.csv"
    if metrics.is_file():
        try:
            old = pd.read_csv(metrics)
        except (OSError, ValueError):
            old = None
        if old is None or "epoch" not in old or (old["epoch"] > epoch).any():
            rows = [h for h in history if int(h["epoch"]) <= epoch]
            if not rows:
                metrics.unlink()
                return
            with atomic_write(metrics, "w", newline="") as fh:
                pd.DataFrame(rows).to_csv(fh, index=False)
