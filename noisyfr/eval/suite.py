"""The verification suite: the sets of ``noisyfr eval --val`` and of the trainer's periodic evaluation.

Both open their sets with :func:`open_sets` / :func:`noisyfr.data.load_pairs` and evaluate them
with :func:`evaluate_sets`, by default under insightface's protocol: flip-sum embeddings, 10
folds, the threshold of insightface's grid (:func:`noisyfr.eval.verification.verify` with
``thresholds="insightface"``). ``--val lfw,cfp_fp,agedb_30,calfw,cplfw --data-dir DIR`` names
the standard insightface ``.bin`` files: a bare name is ``DIR/<name>.bin``, evaluated when present
and skipped (and reported) when absent.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from noisyfr.data.pairs import STANDARD_SETS, is_set_name, set_file  # noqa: F401 (STANDARD_SETS re-exported)
from noisyfr.errors import NoisyFRError

#: result columns of a suite table, in order
TABLE_COLUMNS = ("name", "accuracy", "accuracy_std", "threshold", "tar_at_far_1e-3",
                 "tar_at_far_1e-4", "auc", "num_pairs")


def split_val(values: Iterable[str]) -> list[str]:
    """``--val`` values as a flat list: each is a comma-separated list, except a
    ``synthetic-pairs:`` spec, which is taken whole (its parameters are comma-separated)."""
    out: list[str] = []
    for value in values:
        value = str(value)
        parts = [value] if value.startswith("synthetic-pairs") else value.split(",")
        out += [p.strip() for p in parts if p.strip()]
    if not out:
        raise NoisyFRError("--val: no verification set named")
    return out


def resolve_sets(items: Iterable[str], data_dir: str | os.PathLike | None = None
                 ) -> tuple[list[str], list[str]]:
    """``(sources, skipped)``: what to open for each item, and the bare names skipped.

    With ``data_dir`` a bare name (letters, digits, ``_``, ``-``) is ``data_dir/<name>.bin``, or
    skipped when that file is absent (without ``data_dir`` it must be an existing path); any other
    item is a path (pairs.txt, .bin, folder) or a ``synthetic-pairs:`` spec, opened as given.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise NoisyFRError(f"--data-dir {data_dir}: not a directory")
    sources, skipped = [], []
    for item in items:
        bare = is_set_name(item)
        if bare and data_dir is not None:
            path = set_file(item, data_dir)
            if path is not None:
                sources.append(str(path))
            else:
                skipped.append(item)
        elif bare and not Path(item).exists():
            raise NoisyFRError(f"{item}: no such verification file (a bare set name needs "
                               f"--data-dir DIR holding {item}.bin)")
        else:
            sources.append(item)
    return sources, skipped


def open_sets(values: Iterable[str], data_dir: str | os.PathLike | None = None
              ) -> tuple[list[Any], list[str]]:
    """Open every set of ``--val`` (:func:`split_val`, :func:`resolve_sets`); returns
    ``(verification sets, skipped names)``. NoisyFRError naming the file when one cannot be read,
    or when nothing is left to evaluate."""
    from noisyfr.data import load_pairs

    sources, skipped = resolve_sets(split_val(values), data_dir)
    if not sources:
        raise NoisyFRError(f"--data-dir {data_dir}: holds none of {', '.join(f'{s}.bin' for s in skipped)}")
    return [load_pairs(s) for s in sources], skipped


def evaluate_sets(model: torch.nn.Module, vsets: Iterable[Any], *, image_size: int = 112,
                  center_crop: float = 1.0, batch_size: int = 64,
                  device: str | torch.device = "cpu", num_workers: int = 0, folds: int = 10,
                  thresholds: str = "insightface", flip: bool = True) -> list[dict[str, Any]]:
    """:func:`noisyfr.eval.verification.evaluate` of each set, in order: one result dict per set
    (``name``, ``accuracy``, ``accuracy_std``, ``threshold``, TAR at FAR 1e-3 / 1e-4, ``auc``,
    ``num_pairs``)."""
    from noisyfr.eval.verification import check_thresholds, evaluate

    check_thresholds(thresholds)
    return [evaluate(model, vset, folds=folds, thresholds=thresholds, image_size=image_size,
                     center_crop=center_crop, batch_size=batch_size, device=device,
                     num_workers=num_workers, flip=flip) for vset in vsets]


def format_table(results: list[dict[str, Any]]) -> str:
    """One line per verification set: accuracy +- std (%), TAR at FAR 1e-3 / 1e-4 (%), AUC, pairs."""
    width = max([len("set")] + [len(r["name"]) for r in results])
    lines = [f"{'set':<{width}}  {'accuracy %':>15}  {'TAR@FAR=1e-3 %':>14}  {'TAR@FAR=1e-4 %':>14}  "
             f"{'AUC':>6}  {'pairs':>6}"]
    for r in results:
        acc = f"{100 * r['accuracy']:.2f} +- {100 * r['accuracy_std']:.2f}"
        lines.append(f"{r['name']:<{width}}  {acc:>15}  {100 * r['tar_at_far_1e-3']:>14.2f}  "
                     f"{100 * r['tar_at_far_1e-4']:>14.2f}  {r['auc']:>6.4f}  {r['num_pairs']:>6d}")
    return "\n".join(lines)


def results_frame(results: list[dict[str, Any]]):
    """The suite results as a pandas DataFrame with :data:`TABLE_COLUMNS`."""
    import pandas as pd

    return pd.DataFrame([{c: r[c] for c in TABLE_COLUMNS} for r in results], columns=list(TABLE_COLUMNS))
