"""Every table of the report, pinned on two fixture inputs (a synthetic sweep, and one run with
closed-set, open-set and split noise) as the in-memory engine wrote them before the switch to
the streaming one (tests/data/pinned_report/, written by ``write_report(..., figures=False)``).

The tables must keep every pinned row, column and value. Tolerances: the CSVs hold 6 significant
digits, so exact statistics agree to a relative 2e-5; medians are within one fine histogram bin
(``engine.FINE_DEG`` degrees); an AUC within its ``auc_bound``; quantile-region statistics
within the samples of the bin that holds the threshold; the Gaussian-mixture reference within
0.02 (it is fitted to the histogram's quantile points rather than to every angle).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noisyfr.analysis.report import write_report
from noisyfr.analysis.synthetic import make_synthetic_run, make_synthetic_sweep

PINNED = Path(__file__).parent / "data" / "pinned_report"
#: columns that name files on the machine that wrote them
_PATHS = {"path"}
#: identifying columns: compared exactly, used to align rows
_KEYS = ["run", "loss", "condition", "seed", "epoch", "noise", "group", "bin_left_deg", "method",
         "region", "epoch_rule", "metric", "loss_name", "grad_mode", "loss_a", "loss_b"]


def _fixture(kind: str, tmp: Path) -> Path:
    if kind == "sweep":
        return make_synthetic_sweep(tmp / "sweep")
    return make_synthetic_run(tmp / "mixed", num_ids=12, per_id=25, epochs=4,
                              rates={"closed": 0.2, "open": 0.1, "split": 0.1}, seed=3)


def _fine_deg() -> float:
    try:
        from noisyfr.analysis.engine import FINE_DEG
    except ImportError:  # the in-memory engine: exact medians
        return 0.0
    return FINE_DEG


def _tolerance(table: str, col: str, old: pd.DataFrame, new: pd.DataFrame) -> np.ndarray:
    """Absolute tolerance per row for ``col`` of ``table``."""
    ref = np.abs(pd.to_numeric(old[col], errors="coerce").to_numpy(dtype=float))
    tol = 2e-5 * np.nan_to_num(ref) + 1e-6
    fine = _fine_deg()
    if "median" in col:
        tol = tol + (fine if col.endswith("_deg") else math.radians(fine))
    if col.startswith("auc") or col in ("oracle_best_auc",) or col.startswith("best_auc"):
        bound = pd.to_numeric(new.get("auc_bound", pd.Series(0.0, index=new.index)), errors="coerce")
        tol = tol + (np.nan_to_num(bound.to_numpy(dtype=float)) if col == "auc" else 0.01 * bool(fine))
    if col.startswith(("gmm_", "mode_")):
        tol = tol + (0.02 if col == "gmm_rate" else 1.0) * bool(fine)
    return tol


@pytest.mark.parametrize("kind", ["sweep", "mixed"])
def test_every_report_table_keeps_its_pinned_values(tmp_path, kind):
    src = _fixture(kind, tmp_path)
    write_report(src, tmp_path / "report", figures=False)
    pinned = sorted((PINNED / kind).glob("*.csv"))
    assert len(pinned) >= 15
    for f in pinned:
        got_path = tmp_path / "report" / "tables" / f.name
        assert got_path.is_file(), f"{f.name}: table no longer written"
        if not f.read_text().strip():  # an empty table (e.g. grad_mode without two modes)
            assert not got_path.read_text().strip(), f"{f.name}: pinned empty, now has rows"
            continue
        old = pd.read_csv(f)
        new = pd.read_csv(got_path)
        assert len(new) == len(old), f"{f.name}: {len(new)} rows, pinned {len(old)}"
        missing = set(old.columns) - set(new.columns)
        assert not missing, f"{f.name}: columns {sorted(missing)} lost"
        keys = [k for k in _KEYS if k in old.columns]
        if keys:
            old = old.sort_values(keys, kind="stable").reset_index(drop=True)
            new = new.sort_values(keys, kind="stable").reset_index(drop=True)
        region_rows = (old["method"] == "quantile").to_numpy() if "method" in old.columns else None
        for col in old.columns:
            if col in _PATHS:
                continue
            a, b = old[col], new[col]
            if not pd.api.types.is_numeric_dtype(a) or pd.api.types.is_bool_dtype(a):
                assert a.astype(str).tolist() == b.astype(str).tolist(), f"{f.name}: column {col} differs"
                continue
            x = a.to_numpy(dtype=float)
            y = pd.to_numeric(b, errors="coerce").to_numpy(dtype=float)
            assert (np.isnan(x) == np.isnan(y)).all(), f"{f.name}: NaNs of {col} differ"
            ok = ~np.isnan(x)
            tol = _tolerance(f.name, col, old, new)
            if region_rows is not None and _fine_deg() and col not in ("threshold_deg",):
                # a quantile region's members: exact but for the threshold's own bin
                slack = np.where(region_rows, 0.02 * np.maximum(np.abs(x), 1.0) + 2.0 * (col == "n"), 0.0)
                tol = tol + slack
            if region_rows is not None and col == "threshold_deg":
                tol = tol + np.where(region_rows, _fine_deg(), 0.0)
            err = np.abs(x - y)[ok]
            worst = int(np.argmax(err - tol[ok])) if err.size else 0
            assert (err <= tol[ok]).all(), (f"{f.name}: column {col} row {np.flatnonzero(ok)[worst]}: "
                                            f"{y[ok][worst]!r} against pinned {x[ok][worst]!r}")
