"""``noisyfr clean RUN_DIR --out CLEAN.parquet --score NAME (--max-deg DEG | --fraction F |
--estimate)``: score every sample of a trained run from its angle logs, flag the suspicious ones
by one rule and write a manifest of the kept samples that ``noisyfr train`` reads through
``data.manifest`` (see :mod:`noisyfr.cleaning.scores`, docs/cleaning.md).

Beside it: ``CLEAN.scores.parquet`` (every scored sample, its scores and whether it was removed
or relabelled: the proposed list) and, with ``--sheet``, an HTML contact sheet. Where the run's
manifest records injected noise, the flags are scored against it (precision, recall, F1 per
noise type, the noise left, the clean samples lost), printed and kept in the sidecar. The run
and its manifest are never modified.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from noisyfr.errors import NoisyFRError
from noisyfr.numeric import int_arg, real_arg

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Command lines shown by ``--help``.
EXAMPLES = [
    "noisyfr clean runs/demo/trials/RUN --out clean.parquet --score subcentre --max-deg 75",
    "noisyfr clean RUN --out clean.parquet --score aum --fraction 0.2 --epoch heldout",
    "noisyfr clean RUN --out clean.parquet --score margin --estimate --relabel",
]
#: Default of ``--relabel-margin``: degrees by which the nearest class must win.
DEFAULT_RELABEL_MARGIN = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``clean`` options."""
    from noisyfr.cleaning.names import EPOCH_RULES, SCORES

    parser.add_argument("input", metavar="RUN_DIR", help="a trained run directory (config.yaml + angles/)")
    parser.add_argument("--out", required=True, metavar="CLEAN.parquet",
                        help="the manifest of the kept samples (+ .json sidecar, + .scores.parquet)")
    parser.add_argument("--score", required=True, metavar="NAME",
                        help=f"the noise score: {', '.join(SCORES)}")
    parser.add_argument("--max-deg", type=real_arg(lo=-180.0, hi=180.0, lo_open=True, hi_open=True),
                        metavar="DEG", help="remove samples whose angle score exceeds DEG")
    parser.add_argument("--fraction", type=real_arg(lo=0.0, hi=1.0, lo_open=True, hi_open=True),
                        metavar="F", help="remove the highest-scored fraction F of the samples")
    parser.add_argument("--estimate", action="store_true",
                        help="remove the fraction a two-component mixture of the scores estimates")
    parser.add_argument("--epoch", default="last", metavar="RULE",
                        help=f"the epoch the scores are read at: {' or '.join(EPOCH_RULES)} (best "
                             "held-out accuracy; never chosen with the noise labels; default last)")
    parser.add_argument("--relabel", action="store_true",
                        help="give a flagged sample its nearest class instead of removing it when that "
                             "class is nearer by --relabel-margin degrees")
    parser.add_argument("--relabel-margin", type=real_arg(lo=0.0, hi=180.0, hi_open=True),
                        default=DEFAULT_RELABEL_MARGIN, metavar="DEG",
                        help="degrees by which the nearest class must win to relabel (default %(default)s)")
    parser.add_argument("--seed", type=int_arg(lo=0, hi=2**32 - 1), default=0,
                        help="seed of the random control score and the mixture (default %(default)s)")
    parser.add_argument("--sheet", metavar="SHEET.html",
                        help="also write a contact sheet of the most suspicious images per identity")


def _source_manifest(run) -> tuple[pd.DataFrame, dict, bool]:
    """``(manifest, sidecar, truth known)``: the run's manifest, or for a run trained without
    one a clean manifest of its dataset (whose noise, unknown, is not scored)."""
    from noisyfr.noise.manifest import read_manifest

    if run.manifest_path is not None:
        df, meta = read_manifest(run.manifest_path)
        return df, dict(meta), True
    from noisyfr.data import open_index
    from noisyfr.dotted import get_dotted
    from noisyfr.noise.inject import inject
    from noisyfr.noise.spec import NoiseSpec

    train = get_dotted(run.config, "data.train")
    if not train:
        raise NoisyFRError(f"{run.path / 'config.yaml'}: names no data.manifest and no data.train to clean")
    manifest = inject(open_index(str(train)), NoiseSpec(), command="noisyfr clean (no injected noise)")
    return manifest.frame.copy(), dict(manifest.meta), False


def cleaned_manifest(manifest: pd.DataFrame, meta: dict, scores: pd.DataFrame, removed: np.ndarray,
                     new_labels: np.ndarray, provenance: dict,
                     heldout: np.ndarray | None = None) -> tuple[pd.DataFrame, dict]:
    """The manifest of the kept rows (``index`` renumbered, ``source_index`` pointing at the
    dataset's samples, ``relabelled_from`` the label before a relabelling or -1, the noise type
    of a relabelled row recomputed from its new label, and with ``heldout`` (a boolean per row of
    ``manifest``: the rows the cleaned run held out) the column
    :data:`noisyfr.train.data.HELDOUT_COLUMN`, so a run trained on it holds out the same images)
    and its sidecar (counts and rates of the kept rows, ``cleaned`` = ``provenance``)."""
    import numpy as np

    from noisyfr.noise.spec import NOISE_TYPES
    from noisyfr.train.data import HELDOUT_COLUMN

    rows = manifest.copy()
    if "source_index" not in rows.columns:
        rows["source"] = "index"
        rows["source_index"] = rows["index"].to_numpy(dtype=np.int64)
    if heldout is not None:
        rows[HELDOUT_COLUMN] = np.asarray(heldout, dtype=bool)
    drop = np.zeros(len(rows), bool)
    idx = scores["sample_index"].to_numpy(dtype=np.int64)
    drop[idx[removed]] = True
    label = rows["label"].to_numpy(dtype=np.int64).copy()
    before = np.full(len(rows), -1, dtype=np.int64)
    changed = scores["label"].to_numpy() != new_labels
    before[idx[changed]] = label[idx[changed]]
    label[idx[changed]] = new_labels[changed]
    noise = rows["noise"].to_numpy(dtype=object).copy()
    orig = rows["orig_label"].to_numpy(dtype=np.int64)
    fixed = before >= 0
    noise[fixed] = np.where(label[fixed] == orig[fixed], "clean", np.where(orig[fixed] < 0, "open", "closed"))
    rows = rows.assign(label=label, noise=noise, relabelled_from=before)[~drop].reset_index(drop=True)
    rows["index"] = np.arange(len(rows), dtype=np.int64)
    m = len(rows)
    counts = {k: int((rows["noise"] == k).sum()) for k in NOISE_TYPES}
    out = dict(meta)
    out.update({"samples": m, "counts": counts, "rates": {k: v / m if m else 0.0 for k, v in counts.items()},
                "cleaned": provenance, "command": provenance["command"]})
    return rows, out


def heldout_rows(run, manifest: pd.DataFrame) -> np.ndarray | None:
    """A boolean per row of ``manifest`` (the run's manifest): the images ``run`` held out, by
    the trainer's own rule (:func:`noisyfr.train.data.split_rows` with the run's ``data.holdout``,
    ``data.max_per_id`` and ``seed``); None when it held none out."""
    import numpy as np

    from noisyfr.dotted import get_dotted
    from noisyfr.train.data import split_rows

    holdout = float(get_dotted(run.config, "data.holdout") or 0.0)
    if holdout <= 0:
        return None
    max_per_id = get_dotted(run.config, "data.max_per_id")
    _, held = split_rows(manifest, manifest["orig_label"].to_numpy(dtype=np.int64),
                         None if max_per_id is None else int(max_per_id), holdout,
                         int(run.config.get("seed", 0)))
    out = np.zeros(len(manifest), bool)
    out[held] = True
    return out


def clean(run_dir, out, score: str, *, max_deg: float | None = None, fraction: float | None = None,
          estimate: bool = False, epoch: str = "last", relabel: bool = False,
          relabel_margin: float = DEFAULT_RELABEL_MARGIN, seed: int = 0, sheet=None,
          command: str | None = None, verbose: bool = True) -> dict:
    """What ``noisyfr clean`` does, as a library call: score the run's samples, flag them by one
    rule, write the cleaned manifest (+ sidecar), ``OUT.scores.parquet`` and optionally the contact
    sheet; return the provenance written to the sidecar's ``cleaned`` key (its ``truth``: the
    truth table's rows, None when the run's noise is unknown). ``command`` is recorded as the
    command line (default: this process's ``noisyfr clean`` arguments). ``verbose`` prints what
    the command prints."""
    import numpy as np

    from noisyfr.analysis import load
    from noisyfr.cleaning import scores
    from noisyfr.io import atomic_path
    from noisyfr.noise.manifest import sidecar_path, write_manifest
    from noisyfr.outputs import all_or_nothing, check_output

    score = scores.check_score(score)
    out = Path(out)
    if out.suffix != ".parquet":
        raise NoisyFRError(f"--out {out}: name a .parquet manifest")
    run_ = load.scan_run(run_dir)
    inputs = [run_.path] + ([run_.manifest_path, sidecar_path(run_.manifest_path)] if run_.manifest_path else [])
    scores_path = out.with_name(out.stem + ".scores.parquet")
    check_output(out, inputs, kind="file")
    check_output(scores_path, inputs, kind="file", what="--out (scores)")
    if sheet:
        check_output(sheet, inputs, kind="file", what="--sheet")
        own = [out, sidecar_path(out), scores_path]  # nor may the sheet replace another output
        hit = [p for p in own if Path(p).resolve() == Path(sheet).resolve()]
        if hit:
            raise NoisyFRError(f"--sheet {sheet}: is {hit[0]}, another output of this command; "
                               "choose another path")
    chosen, selected_by = scores.choose_epoch(run_, epoch)
    seed = int(seed)
    table = scores.run_scores(run_, chosen, seed=seed)
    if score == "cleanlab":
        table = scores.cleanlab_scores(run_, table, chosen, seed=seed)
    removed, rule = scores.flag(table, score, max_deg=max_deg, fraction=fraction,
                                estimate=estimate, seed=seed)
    labels = table["label"].to_numpy(dtype=np.int64)
    new_labels = labels.copy()
    relabelled = np.zeros(len(table), bool)
    if relabel:
        near = table["nearest_label"].to_numpy(dtype=np.int64)
        relabelled = removed & (table["margin"].to_numpy(dtype=float) >= relabel_margin) & (near >= 0)
        new_labels[relabelled] = near[relabelled]
        removed = removed & ~relabelled
    manifest, meta, truth_known = _source_manifest(run_)
    _check_indices(manifest, table, run_)
    held = heldout_rows(run_, manifest)
    _check_identities(manifest, table, removed, new_labels, run_, held)
    truth = scores.truth_table(table, removed, relabelled, new_labels) if truth_known else None
    if command is None:
        command = (shlex.join(["noisyfr", "clean", *sys.argv[2:]]) if sys.argv[1:2] == ["clean"]
                   else "noisyfr.cleaning.cli")
    rule_json = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in rule.items()}
    provenance = {"run": str(run_.path.resolve()), "score": score, **rule_json, "epoch": int(chosen),
                  "selected_by": selected_by, "relabel": bool(relabel),
                  "relabel_margin_deg": float(relabel_margin) if relabel else None,
                  "seed": seed, "scored": int(len(table)), "removed": int(removed.sum()),
                  "relabelled": int(relabelled.sum()),
                  "heldout": int(held.sum()) if held is not None else 0,
                  "source_manifest": str(run_.manifest_path) if run_.manifest_path else None,
                  "truth": _records(truth) if truth is not None else None,
                  "command": command}
    # a fraction that flags nothing (inf) or cleanlab's own verdict (NaN) has no threshold: null
    rows, side = cleaned_manifest(manifest, meta, table, removed, new_labels, provenance, held)
    sheet_text = None
    if sheet:
        from noisyfr.cleaning.sheet import contact_sheet

        sheet_text = contact_sheet(run_, table.assign(removed=removed, relabelled=relabelled), score, manifest)
    written = [out, sidecar_path(out), scores_path] + ([Path(sheet)] if sheet_text is not None else [])
    with all_or_nothing(written):  # a failed third write takes the first two back
        write_manifest(rows, side, out)
        with atomic_path(scores_path) as tmp:
            table.assign(removed=removed, relabelled=relabelled, new_label=new_labels).to_parquet(tmp, index=False)
        if sheet_text is not None:
            with atomic_path(sheet) as tmp:
                Path(tmp).write_text(sheet_text, encoding="utf-8")
    if verbose:
        thr = provenance["threshold"]
        print(f"{out}: kept {len(rows)} of {len(manifest)} samples ({int(removed.sum())} removed, "
              f"{int(relabelled.sum())} relabelled; score {score} at epoch {chosen} ({selected_by}), "
              f"rule {rule['rule']}{'' if thr is None else f' {thr:.4g}'})")
        if truth is not None:
            print(truth.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        else:
            print("no injected noise recorded: the flags are a proposal to review (scores in "
                  f"{scores_path}{', contact sheet ' + str(sheet) if sheet else ''})")
    return provenance


def run(args: argparse.Namespace) -> int:
    """Score, flag, write the cleaned manifest, its scores and (optionally) the contact sheet."""
    clean(args.input, args.out, args.score, max_deg=args.max_deg, fraction=args.fraction,
          estimate=args.estimate, epoch=args.epoch, relabel=args.relabel,
          relabel_margin=args.relabel_margin, seed=int(args.seed), sheet=args.sheet)
    return 0


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-safe dicts (NaN -> None)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
            for row in df.to_dict(orient="records")]


def _check_indices(manifest: pd.DataFrame, table: pd.DataFrame, run) -> None:
    """Every scored sample is a row of the manifest it is cleaned from, else one line naming it."""
    import numpy as np

    idx = table["sample_index"].to_numpy(dtype=np.int64)
    bad = idx[(idx < 0) | (idx >= len(manifest))]
    if len(bad):
        where = run.manifest_path or f"the dataset {run.config.get('data', {}).get('train')}"
        raise NoisyFRError(f"{run.path / 'angles'}: sample_index {int(bad[0])} is not in manifest {where} "
                           f"({len(manifest)} rows)")


def _check_identities(manifest: pd.DataFrame, table: pd.DataFrame, removed: np.ndarray,
                      new_labels: np.ndarray, run, held: np.ndarray | None = None) -> None:
    """Every label the run trained on keeps a training sample (held-out rows do not count: a
    run on the cleaned manifest would have none to learn it from, :func:`noisyfr.train.data.
    check_trained_identities`), else a one-line error naming the identity."""
    import numpy as np

    label = manifest["label"].to_numpy(dtype=np.int64).copy()
    idx = table["sample_index"].to_numpy(dtype=np.int64)
    label[idx] = new_labels
    keep = np.ones(len(manifest), bool) if held is None else ~np.asarray(held, bool)
    keep[idx[removed]] = False
    trained = np.unique(table["label"].to_numpy(dtype=np.int64))
    left = np.bincount(label[keep], minlength=int(label.max()) + 1 if len(label) else 0)
    empty = [int(c) for c in trained if c >= len(left) or left[c] == 0]
    if empty:
        from noisyfr.cleaning.sheet import class_names

        names = class_names(manifest)
        who = ", ".join(str(names.get(c, c)) for c in empty[:3])
        raise NoisyFRError(f"the threshold keeps no sample of {len(empty)} identit"
                           f"{'y' if len(empty) == 1 else 'ies'} ({who}{', ...' if len(empty) > 3 else ''}); "
                           "raise the threshold or lower the fraction")
