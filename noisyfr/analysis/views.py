"""SQL over a run or sweep directory: :func:`open` gives a DuckDB connection with four views.

- ``angles``: one row per sample and logged epoch of every run: ``run`` and the trainer's angle
  columns (:data:`noisyfr.train.angles.COLUMNS`, older logs filled in) with ``noise`` (the
  manifest's noise type), ``orig_label`` (the true label; -1 for open-set samples) and
  ``is_noisy``. Read from the Parquet logs as the query runs: nothing is loaded first.
- ``runs``: one row per run: ``run``, ``path``, ``loss`` (the label: name, s, margins,
  grad_mode), ``loss_name``, every loss setting as ``loss_<key>`` (``loss_s``, ``loss_m``,
  ``loss_grad_mode``, ...), ``condition``, ``noise_rate`` (the true noisy fraction),
  ``rate_<type>`` (the requested rate of each noise type), ``seed``, ``manifest``,
  ``num_classes``, ``epochs`` (logged), ``learned`` and ``learned_on`` (from metrics.csv: the
  last epoch's held-out accuracy, else its train-pass clean accuracy).
- ``epochs``: every run's metrics.csv rows (per-epoch health, held-out and verification
  accuracy, loss, timing) with ``run``.
- ``results``: the sweep's results table (one row per trial), where the directory has one.

``noisyfr query DIR "SELECT ..."`` runs one read-only statement on them
(:func:`run_query`). docs/analysis.md shows examples.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from noisyfr.analysis import engine, load
from noisyfr.errors import NoisyFRError
from noisyfr.noise.spec import NOISE_TYPES

#: The views :func:`open` defines, in the order docs list them.
VIEWS = ("angles", "runs", "epochs", "results")


def _learned(run) -> tuple[object, str | None]:
    """``(learned, evidence)`` from metrics.csv alone (None when it has neither accuracy)."""
    from noisyfr.angle_log import learned_from

    m = run.metrics
    if m.empty:
        return None, None
    last = {}
    for col in ("heldout_accuracy", "clean_true_accuracy"):
        if col in m.columns:
            last[col] = float(pd.to_numeric(m[col], errors="coerce").iloc[-1])
    if not last:
        return None, None
    health = run.config.get("health") if isinstance(run.config.get("health"), dict) else {}
    return learned_from(last, {"learned_accuracy": float(health.get("learned_accuracy", 0.8)),
                               "learned_heldout_accuracy": float(health.get("learned_heldout_accuracy", 0.5))})


def runs_frame(runs) -> pd.DataFrame:
    """The ``runs`` view's rows."""
    rows = []
    for r in runs:
        learned, evidence = _learned(r)
        row = {"run": r.name, "path": str(Path(r.path).resolve()), "loss": r.loss, "loss_name": r.loss_name}
        row.update({f"loss_{k}": (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                    for k, v in sorted(r.loss_settings.items())})
        row.update({"condition": r.condition, "noise_rate": r.noise_rate})
        row.update({f"rate_{t}": float(r.rates.get(t, 0.0)) for t in NOISE_TYPES if t != "clean"})
        row.update({"seed": r.seed, "manifest": str(r.manifest_path) if r.manifest_path else None,
                    "num_classes": r.manifest_meta.get("num_classes") if isinstance(r.manifest_meta, dict) else None,
                    "epochs": len(r.files), "learned": learned, "learned_on": evidence})
        rows.append(row)
    return pd.DataFrame(rows)


def _angle_selects(con, runs) -> list[str]:
    """SQL of the ``angles`` view, one SELECT per batch of runs (:func:`noisyfr.analysis.scan.batches`:
    one scan over all their logs, :func:`~noisyfr.analysis.scan.batch_source`), in the runs' order."""
    from noisyfr.analysis import scan

    manifests = scan.BatchManifests(con, "view_manifests")
    selects = []
    for k, batch in enumerate(scan.batches(runs)):
        names = f"view_runs_{k}"
        con.register(names, pd.DataFrame({"run_id": range(len(batch)), "run": [r.name for r in batch]}))
        src = scan.batch_source(con, batch, [list(r.files.values()) for r in batch], manifests,
                                name=f"view_files_{k}")
        selects.append(f"SELECT n.run, s.* EXCLUDE (run_id, manifest_index, manifest_label, noise_code) "
                       f"FROM ({src}) s JOIN {names} n ON s.run_id = n.run_id")
    return selects


def open(run_or_sweep_dir: str | Path, memory_limit: str | None = None,  # noqa: A001 (the documented name)
         inputs: list | None = None):
    """A DuckDB connection on a run or sweep directory with the views :data:`VIEWS` (module
    docstring). Every run's files are checked first (:func:`noisyfr.analysis.load.scan_run`).
    The connection can read only the directory and the runs' manifests: any other path in a
    query is refused. ``inputs``, when given, is extended with every path the views read (the
    directory, the runs, their manifests, the results table): what an output must not replace."""
    root = Path(run_or_sweep_dir)
    runs = load.scan_runs(root)
    con = engine.connect(memory_limit=memory_limit)
    allowed = {str(root.resolve())}
    allowed |= {str(Path(p).resolve()) for r in runs for p in (r.path, r.manifest_path) if p is not None}
    con.execute("CREATE VIEW angles AS " + " UNION ALL BY NAME ".join(_angle_selects(con, runs)))
    con.register("runs_frame", runs_frame(runs))
    con.execute("CREATE VIEW runs AS SELECT * FROM runs_frame")
    metrics = [r.metrics.assign(run=r.name) for r in runs if not r.metrics.empty]
    epochs = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame({"run": pd.Series(dtype=str)})
    con.register("epochs_frame", epochs[["run", *[c for c in epochs.columns if c != "run"]]])
    con.execute("CREATE VIEW epochs AS SELECT * FROM epochs_frame")
    found = load.find_results(root)
    if found is not None:
        con.register("results_frame", load.load_results(found))
        con.execute("CREATE VIEW results AS SELECT * FROM results_frame")
    dirs = sorted(p for p in allowed if Path(p).is_dir())
    files = sorted(p for p in allowed if Path(p).is_file())
    con.execute("SET allowed_directories = [" + ", ".join(engine.quote(d + "/") for d in dirs) + "]")
    if files:
        con.execute("SET allowed_paths = [" + ", ".join(engine.quote(f) for f in files) + "]")
    if inputs is not None:
        inputs.extend([root, *load.run_inputs(runs), *([found] if found is not None else [])])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def list_views(con) -> list[str]:
    """The views of an :func:`open` connection."""
    names = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    return [v for v in VIEWS if v in names]


def _statement(con, sql: str) -> tuple[str, str]:
    """``(text, name)`` of one read-only statement (a SELECT, WITH ... SELECT included), checked:
    anything else (writes, ATTACH, COPY, SET, several statements) is a one-line NoisyFRError."""
    import duckdb

    text = sql.strip().rstrip(";")
    short = text if len(text) <= 60 else text[:57] + "..."
    name = f"query {short!r}"
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        raise NoisyFRError(f"{name}: not SQL ({engine.first_sentence(exc)})") from None
    if len(statements) != 1:
        raise NoisyFRError(f"{name}: give exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise NoisyFRError(f"{name}: only a SELECT is allowed (read-only), got {kind.name}")
    return text, name


def query_error(con, name: str, exc: BaseException) -> NoisyFRError:
    """The one line for a DuckDB error of a query named ``name``: a missing table or view, a
    missing function, a path outside the sandbox, or DuckDB's own first sentence."""
    import re

    import duckdb

    if isinstance(exc, duckdb.CatalogException):
        m = re.search(r"(Table|View|Function|Macro)[\w ]* with name (\S+) does not exist", str(exc))
        if m and m.group(1) in ("Table", "View"):
            return NoisyFRError(f"{name}: names no view {m.group(2)} (the views are "
                                f"{', '.join(list_views(con))})")
        if m:
            return NoisyFRError(f"{name}: calls no known function {m.group(2)} "
                                f"({engine.first_sentence(exc)})")
        return NoisyFRError(f"{name}: {engine.first_sentence(exc)}")
    if isinstance(exc, duckdb.PermissionException):
        return NoisyFRError(f"{name}: reads a path outside the run or sweep directory and its manifests "
                            "(refused: queries read only those)")
    return NoisyFRError(f"{name}: {engine.first_sentence(exc)}")


#: Rows per Arrow batch of :func:`stream_query`.
BATCH_ROWS = 65536


def stream_query(con, sql: str, batch_rows: int = BATCH_ROWS):
    """``(name, reader)``: one read-only statement on ``con`` (checked as :func:`run_query`
    does) as a pyarrow ``RecordBatchReader`` that DuckDB fills as it is read: nothing is
    materialised, so the caller bounds the memory by what it keeps. Errors raised while reading
    are turned into one line by :func:`query_error`."""
    import duckdb

    text, name = _statement(con, sql)
    try:
        rel = con.sql(text)
        reader = (rel.to_arrow_reader(batch_rows) if hasattr(rel, "to_arrow_reader")
                  else rel.fetch_record_batch(batch_rows))
    except duckdb.Error as exc:
        raise query_error(con, name, exc) from None
    return name, reader


def run_query(con, sql: str) -> pd.DataFrame:
    """The result of one read-only statement (a SELECT, WITH ... SELECT included) on ``con``;
    anything else (writes, ATTACH, COPY, SET, several statements) is refused, as is a name
    that is no view. One-line NoisyFRError naming the problem. Materialises the whole result:
    ``noisyfr query`` streams it instead (:func:`stream_query`)."""
    import duckdb

    text, name = _statement(con, sql)
    try:
        return con.sql(text).df()
    except duckdb.Error as exc:
        raise query_error(con, name, exc) from None
