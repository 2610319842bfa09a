"""Start-up cost of the command line: ``--help`` of every command, ``analyze`` and ``query`` on one
small fabricated run, each in a fresh interpreter.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 3] [--run-args 40,25,5] [--baseline CHECKOUT]
        [--json PATH]

Every row runs ``python -c WRAPPER`` in a fresh subprocess, where WRAPPER calls
``noisyfr.cli.main`` with the row's arguments (the cost of ``python -m noisyfr``, the repository
first on ``PYTHONPATH``) and records at exit whether ``torch`` and ``sklearn`` were imported.
Measured per row, the median over ``--repeat`` runs:

- wall time (``time.perf_counter``, from the start of the subprocess to its exit: interpreter
  start and imports included);
- peak RSS: ``ru_maxrss`` of that one subprocess (``os.wait4``, the kernel's high-water mark;
  this process imports nothing of noisyfr, so the pages a child starts with at the fork are few).

The demo run (``--run-args IDS,PER_ID,EPOCHS``) is written once, not timed, in a subprocess by the test
fabricator ``make_synthetic_run`` (tests/fabricate.py; ``noisyfr.analysis.synthetic`` on
checkouts older than the move), closed-set noise at 0.5. ``analyze`` runs with
``--no-figures`` into a fresh folder each time. The 1-minute load average before and after is
printed: on a shared machine the wall times mean little without it. With ``--baseline
CHECKOUT`` every row also runs on another checkout (its ``noisyfr``, the same demo run),
alternating run by run, so the ratios are measured under the same load. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRAPPER = """
import atexit, json, sys
def _seen(path={seen!r}):
    with open(path, "w") as fh:
        json.dump({{"torch": "torch" in sys.modules, "sklearn": "sklearn" in sys.modules}}, fh)
atexit.register(_seen)
sys.argv = ["noisyfr", *{argv!r}]
from noisyfr.cli import main
sys.exit(main())
"""


FABRICATE = """
import sys
sys.path.insert(0, {repo!r})
try:
    from tests.fabricate import make_synthetic_run
except ImportError:  # a checkout from before the fabricators left the library
    from noisyfr.analysis.synthetic import make_synthetic_run
from noisyfr.cli import SUBCOMMANDS
make_synthetic_run({out!r}, num_ids={ids}, per_id={per_id}, epochs={epochs}, rates={{"closed": 0.5}})
print(" ".join(SUBCOMMANDS))
"""


def _fabricate(out: Path, ids: int, per_id: int, epochs: int) -> list[str]:
    """Write the demo run in a subprocess (this process stays small: a child's ``ru_maxrss``
    starts from its parent's resident pages at the fork); return the command names."""
    code = FABRICATE.format(repo=str(REPO), out=str(out), ids=ids, per_id=per_id, epochs=epochs)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def _once(argv: list[str], scratch: Path, repo: Path = REPO) -> dict:
    """One ``noisyfr ARGV`` in a fresh interpreter with ``repo`` first on the path."""
    seen = scratch / "seen.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER.format(seen=str(seen), argv=argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=scratch)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"noisyfr {' '.join(argv)}: exit {proc.returncode}\n{err[-2000:]}")
    imported = json.loads(seen.read_text())
    return {"wall_s": wall, "maxrss_mb": usage.ru_maxrss / 1024, **imported}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the median is kept (default %(default)s)")
    ap.add_argument("--run-args", default="40,25,5", metavar="IDS,PER_ID,EPOCHS",
                    help="size of the fabricated demo run (default %(default)s)")
    ap.add_argument("--baseline", metavar="CHECKOUT",
                    help="another checkout of noisyfr (e.g. main, extracted with git archive): each row also "
                         "runs there, alternating with this one, and the table gains its columns and "
                         "the ratios (this / baseline), measured under the same load")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    ids, per_id, epochs = (int(v) for v in args.run_args.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        scratch = Path(tmp)
        run = scratch / "run"
        commands = _fabricate(run, ids, per_id, epochs)
        rows: list[tuple[str, list[str]]] = [("noisyfr --help", ["--help"]), ("noisyfr --version", ["--version"])]
        rows += [(f"{name} --help", [name, "--help"]) for name in commands]
        rows += [("query (demo run)", ["query", str(run), "SELECT noise, count(*) AS n FROM angles GROUP BY ALL"]),
                 ("analyze --no-figures (demo run)", ["analyze", str(run), "--no-figures", "--out", "REPORT"])]
        trees = {"now": REPO} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
        load_before = os.getloadavg()[0]
        results = []
        for label, argv in rows:
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for k in range(args.repeat):
                for name, repo in trees.items():  # alternating: both see the same load
                    argv_k = [str(scratch / f"report_{name}{k}") if a == "REPORT" else a for a in argv]
                    runs[name].append(_once(argv_k, scratch, repo))
            row = {"command": label}
            for name, got in runs.items():
                row[name] = {"wall_s": statistics.median(r["wall_s"] for r in got),
                             "maxrss_mb": statistics.median(r["maxrss_mb"] for r in got),
                             "torch": got[0]["torch"], "sklearn": got[0]["sklearn"]}
            results.append(row)
        load_after = os.getloadavg()[0]
    rows_n = ids * per_id * epochs
    print(f"bench_cli: median of {args.repeat}; demo run {ids} ids x {per_id} images x {epochs} epochs "
          f"({rows_n} angle rows); load average (1 min) {load_before:.2f} before, {load_after:.2f} after; "
          f"{os.cpu_count()} cores")

    def cells(m: dict) -> str:
        return (f"{m['wall_s']:.2f} | {m['maxrss_mb']:.0f} | {'yes' if m['torch'] else 'no'} | "
                f"{'yes' if m['sklearn'] else 'no'}")

    if args.baseline:
        print("| command | baseline wall s | baseline peak RSS MB | baseline torch | baseline sklearn "
              "| wall s | peak RSS MB | torch | sklearn | wall ratio | RSS ratio |")
        print("|---|---:|---:|---|---|---:|---:|---|---|---:|---:|")
        for r in results:
            b, n = r["baseline"], r["now"]
            print(f"| {r['command']} | {cells(b)} | {cells(n)} | {n['wall_s'] / b['wall_s']:.2f} | "
                  f"{n['maxrss_mb'] / b['maxrss_mb']:.2f} |")
    else:
        print("| command | wall s | peak RSS MB | torch | sklearn |")
        print("|---|---:|---:|---|---|")
        for r in results:
            print(f"| {r['command']} | {cells(r['now'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": results, "load": [load_before, load_after],
                                               "repeat": args.repeat, "angle_rows": rows_n}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
