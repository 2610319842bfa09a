"""The engine's input checks and one-line errors: an angle relation's theta_y range, its samples
against the manifest, and the file a failed scan could not read. Split out of
:mod:`noisyfr.analysis.engine`, which re-exports these names.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from noisyfr.errors import NoisyFRError

if TYPE_CHECKING:
    from noisyfr.analysis.engine import Parts


def quote(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def first_sentence(exc: BaseException) -> str:
    """The first line of an exception's message, cut at its first sentence."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.match(r"^(.*?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).rstrip(".")


def check_theta(cells: pd.DataFrame, where: str) -> None:
    """theta_y finite and inside [0, pi] (from the cells' range), else NoisyFRError naming ``where``."""
    if cells.empty:
        return
    if "n_null_theta" in cells.columns and cells["n_null_theta"].fillna(0).sum() > 0:
        raise NoisyFRError(f"{where}: column theta_y has missing (null) values")
    # numpy, not pandas: a pandas max skips the NaN it must find
    both = np.concatenate([cells["min_theta"].to_numpy(dtype=float), cells["max_theta"].to_numpy(dtype=float)])
    lo, hi = both.min(), both.max()
    if not np.isfinite(both).all():
        raise NoisyFRError(f"{where}: column theta_y has NaN or infinite values")
    if lo < -1e-6 or hi > math.pi + 1e-6:
        raise NoisyFRError(f"{where}: theta_y outside [0, pi] (angles must be in radians)")


def check_parts(parts: Parts, where: str, manifest: Path | None = None) -> None:
    """Raise the first input problem the pass found, naming ``where`` (a run's angles folder)."""
    # theta_y's range was checked by the pass itself (aggregate -> check_theta)
    _check_join(where, parts.first_unknown, parts.first_mislabelled, manifest)


def _check_join(where: str, unknown, mislabelled, manifest: Path | None) -> None:
    if unknown is not None and pd.notna(unknown):
        raise NoisyFRError(f"{where}: sample_index {int(unknown)} is not in manifest {manifest}")
    if mislabelled is not None and pd.notna(mislabelled):
        raise NoisyFRError(f"{where}: label of sample_index {int(mislabelled)} differs "
                           f"from manifest {manifest} (wrong manifest?)")


def check_source(con, source: str, files: list[Path], where: str, manifest: Path | None = None) -> None:
    """The checks :func:`aggregate` makes of an angle relation (:func:`run_source` of ``files``),
    as one narrow pass for a command that reads the logs another way (``noisyfr clean``):
    theta_y finite and in [0, pi] (:func:`check_theta`), every sample in the manifest and labelled
    as it says; a file DuckDB cannot read is named (:func:`locate_scan_error`). One line naming
    ``where`` otherwise: the same input gets the same answer from every command."""
    import duckdb

    try:
        got = con.sql(f"SELECT min(theta_y) AS min_theta, max(theta_y) AS max_theta, "
                      "sum((theta_y IS NULL)::INTEGER) AS n_null_theta, "
                      "min(sample_index) FILTER (WHERE manifest_index IS NULL) AS unknown, "
                      "min(sample_index) FILTER (WHERE manifest_label <> label) AS mislabelled "
                      f"FROM ({source})").df()
    except duckdb.Error as exc:
        raise locate_scan_error(con, files, exc) from None
    check_theta(got, where)
    row = got.iloc[0]
    _check_join(where, row["unknown"], row["mislabelled"], manifest)


def locate_scan_error(con, files: list[Path], exc: BaseException) -> NoisyFRError:
    """The one-line error for a scan that failed: the first of ``files`` that cannot be read on
    its own, named, else the scan's own first sentence."""
    import duckdb

    for f in files:
        try:
            con.sql(f"SELECT * FROM read_parquet({quote(f)})").fetchall()
        except duckdb.Error as one:
            return NoisyFRError(f"{f}: cannot read angle log ({first_sentence(one)})")
    return NoisyFRError(f"{files[0].parent}: cannot read angle logs ({first_sentence(exc)})")


