"""Every table of the report, pinned on two fixture inputs (a synthetic sweep, and one run with
closed-set, open-set and split noise) as the in-memory engine wrote them before the switch to
the streaming one (tests/data/pinned_report/, written by ``write_report(..., figures=False)``).

The tables must keep every pinned row, column and value. Tolerances: the CSVs hold 6 significant
digits, so values agree to a relative 2e-5, but for one kind: an AUC from the engine's fine
histogram counts two samples of one bin as a tie, so it may move by its ``auc_bound``; a mean,
interval end or paired difference of AUCs by the bound times the interval's t factor.
Measured on these fixtures: AUC 2e-4, everything else (medians, quantile regions, the mixture
reference) within the CSVs' rounding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fabricate import make_synthetic_run, make_synthetic_sweep

from noisyfr.analysis.report import write_report

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


def _is_auc(name: str) -> bool:
    return name.startswith("auc") or name.endswith("_auc") or name.startswith("best_auc")


def _tolerance(col: str, old: pd.DataFrame, auc_bound: float) -> np.ndarray:
    """Absolute tolerance per row for ``col``. ``auc_bound``: the largest ``auc_bound`` of the
    fixture's epochs; an interval over two seeds stretches it by t(0.975, 1) = 12.7."""
    ref = np.abs(pd.to_numeric(old[col], errors="coerce").to_numpy(dtype=float))
    tol = 2e-5 * np.nan_to_num(ref) + 1e-6
    auc_rows = np.full(len(old), _is_auc(col))
    if "metric" in old.columns and col not in ("n", "n_runs", "n_learned"):
        auc_rows |= old["metric"].astype(str).map(_is_auc).to_numpy()
    return tol + np.where(auc_rows, 13.0 * auc_bound, 0.0)


@pytest.mark.parametrize("kind", ["sweep", "mixed"])
def test_every_report_table_keeps_its_pinned_values(tmp_path, kind):
    src = _fixture(kind, tmp_path)
    write_report(src, tmp_path / "report", figures=False)
    pinned = sorted((PINNED / kind).glob("*.csv"))
    assert len(pinned) >= 15
    epochs = pd.read_csv(tmp_path / "report" / "tables" / "epoch_stats.csv")
    auc_bound = float(epochs["auc_bound"].max()) if "auc_bound" in epochs.columns else 0.0
    assert auc_bound < 0.01  # the histogram's ties are few: the AUC is nearly exact
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
            tol = _tolerance(col, old, auc_bound)
            err = np.abs(x - y)[ok]
            worst = int(np.argmax(err - tol[ok])) if err.size else 0
            assert (err <= tol[ok]).all(), (f"{f.name}: column {col} row {np.flatnonzero(ok)[worst]}: "
                                            f"{y[ok][worst]!r} against pinned {x[ok][worst]!r}")
