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
#: Bytes ``--out`` may hold at most (``--max-bytes``): past it the command stops and writes nothing.
DEFAULT_MAX_BYTES = 1 << 30
_SUFFIXES = (".csv", ".parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``query`` options."""
    parser.add_argument("input", metavar="RUN_OR_SWEEP_DIR", help="a training run directory or a sweep directory")
    parser.add_argument("sql", metavar="SQL", help="one SELECT over the views angles, runs, epochs, results")
    parser.add_argument("--out", metavar="FILE",
                        help="write the result to FILE.csv or FILE.parquet instead of printing it")
    parser.add_argument("--max-rows", type=int_arg(lo=1), default=DEFAULT_MAX_ROWS, metavar="N",
                        help="rows printed at most (default %(default)s); the query stops reading there")
    parser.add_argument("--max-bytes", type=int_arg(lo=1), default=DEFAULT_MAX_BYTES, metavar="B",
                        help="bytes --out may take at most (default %(default)s): a larger result is "
                             "refused and nothing is written")


def _first_rows(reader, n: int):
    """``(table of at most n rows, more)``: the first rows of a record-batch stream, reading no
    more batches than they need (``more``: whether a row lies beyond them)."""
    import pyarrow as pa

    batches, got = [], 0
    for batch in reader:
        if got + batch.num_rows > n:
            batches.append(batch.slice(0, n - got))
            return pa.Table.from_batches(batches, schema=reader.schema), True
        batches.append(batch)
        got += batch.num_rows
    return pa.Table.from_batches(batches, schema=reader.schema), False


def _write(reader, tmp: Path, parquet: bool, max_bytes: int, out: str) -> int:
    """Stream the batches into ``tmp``; the number of rows. NoisyFRError naming ``out`` as soon
    as the file passes ``max_bytes`` (the caller's atomic write then removes it)."""
    import os

    from noisyfr.outputs import csv_safe

    rows = 0

    def check() -> None:
        if os.path.getsize(tmp) > max_bytes:
            raise NoisyFRError(f"--out {out}: the result passes --max-bytes {max_bytes} after {rows} rows; "
                               "nothing written (narrow the query or raise --max-bytes)")

    if parquet:
        import pyarrow.parquet as pq

        with pq.ParquetWriter(tmp, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
                check()
        check()
        return rows
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        for i, batch in enumerate(reader):
            csv_safe(batch.to_pandas()).to_csv(fh, index=False, header=i == 0)
            rows += batch.num_rows
            fh.flush()
            check()
        if rows == 0:
            fh.write(",".join(csv_safe(reader.schema.empty_table().to_pandas()).columns) + "\n")
    return rows


def run(args: argparse.Namespace) -> int:
    """Run the query; print its first rows or write its result, streamed (bounded memory)."""
    import duckdb
    import pyarrow as pa

    from noisyfr.analysis.views import open as open_views
    from noisyfr.analysis.views import query_error, stream_query
    from noisyfr.io import atomic_path
    from noisyfr.outputs import check_output

    src = Path(args.input)
    if args.out is not None:
        if Path(args.out).suffix not in _SUFFIXES:
            raise NoisyFRError(f"--out {args.out}: name a .csv or .parquet file")
        check_output(args.out, [src], kind="file")
    inputs: list = []
    con = open_views(src, inputs=inputs)
    try:
        if args.out is not None:  # the manifests outside the directory, the results table, ...
            check_output(args.out, inputs, kind="file")
        name, reader = stream_query(con, args.sql)
        try:
            if args.out is None:
                table, more = _first_rows(reader, args.max_rows)
            else:
                with atomic_path(args.out) as tmp:
                    rows = _write(reader, Path(tmp), args.out.endswith(".parquet"), args.max_bytes, args.out)
        except (duckdb.Error, pa.ArrowException) as exc:
            raise query_error(con, name, exc) from None
        finally:
            reader.close()
    finally:
        con.close()
    if args.out is not None:
        print(f"{args.out}: {rows} rows")
        return 0
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(table.to_pandas().to_string(index=False))
    if more:
        print(f"... more than {args.max_rows} rows: printing stops there (--max-rows N, or --out FILE "
              "to keep them all)")
    return 0
