"""``noisyfr query RUN_OR_SWEEP_DIR "SELECT ..." [--out FILE.csv|FILE.parquet]``: one read-only
SQL statement on a run or sweep directory's views (``angles``, ``runs``, ``epochs``,
``results``; see :mod:`noisyfr.analysis.views`). Prints the result as a table, or writes it."""
from __future__ import annotations

import argparse
from pathlib import Path

from noisyfr.errors import NoisyFRError
from noisyfr.numeric import int_arg

#: Command lines shown by ``--help``.
EXAMPLES = [
    'noisyfr query runs/demo "SELECT run, epoch, noise, avg(degrees(theta_y)) AS theta FROM angles '
    'GROUP BY ALL ORDER BY ALL"',
    'noisyfr query runs/demo "SELECT * FROM runs" --out runs.csv',
]
#: Rows printed before the table is cut (``--max-rows``).
DEFAULT_MAX_ROWS = 50
_SUFFIXES = (".csv", ".parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``query`` options."""
    parser.add_argument("input", metavar="RUN_OR_SWEEP_DIR", help="a training run directory or a sweep directory")
    parser.add_argument("sql", metavar="SQL", help="one SELECT over the views angles, runs, epochs, results")
    parser.add_argument("--out", metavar="FILE",
                        help="write the result to FILE.csv or FILE.parquet instead of printing it")
    parser.add_argument("--max-rows", type=int_arg(lo=1), default=DEFAULT_MAX_ROWS, metavar="N",
                        help="rows printed at most (default %(default)s; the count of all is printed)")


def run(args: argparse.Namespace) -> int:
    """Run the query; print or write its result."""
    from noisyfr.analysis.views import open as open_views
    from noisyfr.analysis.views import run_query
    from noisyfr.io import atomic_path
    from noisyfr.outputs import check_output

    src = Path(args.input)
    if args.out is not None:
        if Path(args.out).suffix not in _SUFFIXES:
            raise NoisyFRError(f"--out {args.out}: name a .csv or .parquet file")
        check_output(args.out, [src], kind="file")
    con = open_views(src)
    try:
        df = run_query(con, args.sql)
    finally:
        con.close()
    if args.out is None:
        import pandas as pd

        with pd.option_context("display.max_columns", None, "display.width", 200):
            print(df.head(args.max_rows).to_string(index=False))
        if len(df) > args.max_rows:
            print(f"... {len(df)} rows in all (--max-rows, or --out FILE to keep them)")
        return 0
    with atomic_path(args.out) as tmp:
        if args.out.endswith(".parquet"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    print(f"{args.out}: {len(df)} rows")
    return 0
