"""Wall time and peak memory of ``noisyfr analyze`` on fabricated sweeps of two sizes.

    .venv/bin/python benchmarks/bench_analysis.py [--small 3,5,100000] [--large 6,10,500000]
        [--many 200,10,3000,100 | --many none] [--classes 1000] [--figures | --no-figures]
        [--dir DIR] [--json PATH]

For each size (``TRIALS,EPOCHS,SAMPLES[,CLASSES]``) a sweep is fabricated with
``fabricate_sweep`` of tests/fabricate.py (trials cycling over arcface, cosface and
expface and over seeds, closed-set noise ``--noise``; not timed), then
``python -m noisyfr analyze SWEEP --out REPORT [--no-figures] [--analyze-args ...]`` runs in a
fresh subprocess (this interpreter, the repository first on ``PYTHONPATH``). The benchmark
drives the CLI only, so it measures whatever engine ``noisyfr analyze`` runs.

Measured per size, from the start of the subprocess to its exit:

- wall time (``time.perf_counter``), which includes the interpreter start and imports;
- CPU time (user + system, ``os.wait4``) of the subprocess and its waited-for descendants: the
  fairer figure on a shared machine, where wall time also counts other processes' turns;
- peak RSS of the process tree: psutil polls the subprocess and all its descendants every
  1/``--poll-hz`` s (default 50 Hz) and keeps the largest *sum* of their RSS (a peak shorter than
  a poll interval can be missed);
- ``maxrss``: ``ru_maxrss`` of the subprocess from ``os.wait4`` (the kernel's exact high-water
  mark of the largest single process of the tree, not a sum) as a cross-check.

Angle rows = trials x epochs x samples (every sample logged every epoch); rows/s = angle rows /
wall time. Then large/small ratios of wall time, rows/s and peak RSS (with a streaming engine
the memory ratio stays near 1 while the row ratio is large), and the marginal rate: the extra
rows of the large size over its extra wall time, in which the fixed costs (interpreter start,
imports, figures, whose number depends on losses and conditions, not on rows) cancel.
The 1-minute load average before and after each size is recorded too; the polling costs a few
per cent of one core. Nothing is asserted: the numbers are printed (and written with ``--json``).

The many-small-runs shape (``--many``, default 200 runs x 10 epochs x 3,000 samples in 100
classes: the feature and cluster regimes' grids) is measured against one run of one epoch of the
same samples (``one``): the cost per (run, epoch) is the extra wall (and CPU) time of ``many``
over ``one`` divided by its extra (run, epoch) pairs, so start-up and imports cancel. ``--many
none`` leaves both out.

``--pieces SWEEP`` instead times, in this process, each piece of ``noisyfr analyze`` on an existing
sweep (CPU and wall time, total and per (run, epoch)): finding and checking the runs, the DuckDB
passes (:func:`noisyfr.analysis.report._passes`, with the order bins), the per-run tables, the
mixture reference (:func:`noisyfr.analysis.stats.noise_rate_estimates`) and the counterfactual
weights, at the report's default options without figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GB = 1e9
STAMP = "fabricated.json"  # what fabricate_sweep was called with, to reuse a sweep under --dir


def size_arg(text: str) -> tuple[int, ...]:
    """``TRIALS,EPOCHS,SAMPLES[,CLASSES]`` as a tuple of positive ints."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) not in (3, 4) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected TRIALS,EPOCHS,SAMPLES[,CLASSES] (positive "
                                         f"integers), got {text!r}")
    return parts


def many_arg(text: str) -> tuple[int, ...] | None:
    """:func:`size_arg`, or None for ``none``."""
    return None if text.strip().lower() == "none" else size_arg(text)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=size_arg, default=(3, 5, 100_000), metavar="T,E,N[,C]",
                    help="trials,epochs,samples[,classes] of the small sweep (default 3,5,100000)")
    ap.add_argument("--large", type=size_arg, default=(6, 10, 500_000), metavar="T,E,N[,C]",
                    help="trials,epochs,samples[,classes] of the large sweep (default 6,10,500000)")
    ap.add_argument("--many", type=many_arg, default=(200, 10, 3000, 100), metavar="T,E,N[,C]",
                    help="trials,epochs,samples[,classes] of the many-small-runs sweep, measured against "
                         "1,1,N[,C]; 'none' to leave it out (default 200,10,3000,100)")
    ap.add_argument("--pieces", type=Path, default=None, metavar="SWEEP",
                    help="time each piece of the analysis of SWEEP in this process, then exit")
    ap.add_argument("--classes", type=int, default=1000,
                    help="classes of a size given without its 4th field (default %(default)s)")
    ap.add_argument("--noise", type=float, default=0.2, help="closed-set noise rate (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="fabrication seed (default %(default)s)")
    ap.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                    help="draw the report's figures (default: yes; --no-figures passes --no-figures)")
    ap.add_argument("--analyze-args", default="", metavar="ARGS",
                    help="more arguments for noisyfr analyze, one shell-quoted string (e.g. an engine flag)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="keep the sweeps, reports and analyze logs in DIR/TxExN_cC, DIR/TxExN_cC_report "
                         "and DIR/TxExN_cC_analyze.log (a sweep fabricated there earlier with the same "
                         "arguments is reused); default: a temporary folder, removed at the end")
    ap.add_argument("--poll-hz", type=float, default=50.0, help="RSS polls per second (default %(default)s)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers as JSON")
    args = ap.parse_args(argv)
    if args.poll_hz < 20:
        ap.error("--poll-hz must be at least 20")
    return args


def fabricate(path: Path, trials: int, epochs: int, samples: int, classes: int, noise: float,
              seed: int) -> tuple[float, bool]:
    """Fabricate the sweep at ``path`` (or reuse the one there made with the same arguments):
    ``(seconds, reused)``."""
    from tests.fabricate import fabricate_sweep

    stamp = {"trials": trials, "epochs": epochs, "samples": samples, "classes": classes,
             "noise": noise, "seed": seed}
    if (path / STAMP).is_file():
        if json.loads((path / STAMP).read_text()) == stamp:
            return 0.0, True
        raise SystemExit(f"{path}: holds a sweep fabricated with other arguments; remove it or "
                         "choose another --dir")
    if path.exists():
        raise SystemExit(f"{path}: exists and is not a fabricated sweep; choose another --dir")
    t0 = time.perf_counter()
    fabricate_sweep(path, trials, epochs, samples, classes, noise=noise, seed=seed)
    (path / STAMP).write_text(json.dumps(stamp, sort_keys=True) + "\n")
    return time.perf_counter() - t0, False


def measure(cmd: list[str], env: dict, log: Path, poll_hz: float) -> dict:
    """Run ``cmd``; its wall time, the peak RSS sum of its process tree (polled) and its
    ``ru_maxrss`` (``os.wait4``). Output goes to ``log``."""
    import psutil

    peak = [0]
    done = threading.Event()

    def poll(pid: int) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    pass
            peak[0] = max(peak[0], total)
            done.wait(1.0 / poll_hz)

    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        poller = threading.Thread(target=poll, args=(proc.pid,), daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    return {"returncode": proc.returncode, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": peak[0],
            "maxrss_bytes": usage.ru_maxrss * 1024}  # Linux: KiB


def run_size(name: str, size: tuple[int, ...], args, root: Path) -> dict:
    trials, epochs, samples = size[:3]
    classes = size[3] if len(size) == 4 else args.classes
    tag = f"{trials}x{epochs}x{samples}_c{classes}"
    sweep, report = root / tag, root / f"{tag}_report"
    fab_s, reused = fabricate(sweep, trials, epochs, samples, classes, args.noise, args.seed)
    if report.exists():
        import shutil

        shutil.rmtree(report)
    cmd = [sys.executable, "-m", "noisyfr", "analyze", str(sweep), "--out", str(report)]
    cmd += [] if args.figures else ["--no-figures"]
    cmd += shlex.split(args.analyze_args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    log = root / f"{tag}_analyze.log"
    load_before = os.getloadavg()[0]
    m = measure(cmd, env, log, args.poll_hz)
    m["load_1min"] = [load_before, os.getloadavg()[0]]
    if m["returncode"] != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{name}: noisyfr analyze exited {m['returncode']}:\n{tail}")
    rows = trials * epochs * samples
    return {"size": name, "trials": trials, "epochs": epochs, "samples": samples, "classes": classes,
            "angle_rows": rows, "fabricate_s": fab_s, "reused": reused, "command": shlex.join(cmd),
            **m, "rows_per_s": rows / m["wall_s"]}


def table(results: list[dict]) -> list[str]:
    lines = [f"{'size':6s} {'trials x epochs x samples':>26s} {'angle rows':>11s} {'wall s':>8s} "
             f"{'cpu s':>7s} {'rows/s':>10s} {'peak RSS GB':>11s} {'maxrss GB':>9s} {'load':>9s}"]
    for r in results:
        shape = f"{r['trials']} x {r['epochs']} x {r['samples']:,}"
        load = "{:.1f}-{:.1f}".format(*r["load_1min"])
        lines.append(f"{r['size']:6s} {shape:>26s} {r['angle_rows']:>11,} {r['wall_s']:8.1f} "
                     f"{r['cpu_s']:7.1f} {r['rows_per_s']:10,.0f} {r['peak_rss_bytes'] / GB:11.2f} "
                     f"{r['maxrss_bytes'] / GB:9.2f} {load:>9s}")
    return lines


def ratios(small: dict, large: dict) -> dict:
    return {"angle_rows": large["angle_rows"] / small["angle_rows"],
            "wall": large["wall_s"] / small["wall_s"],
            "cpu": large["cpu_s"] / max(small["cpu_s"], 1e-9),
            "rows_per_s": large["rows_per_s"] / small["rows_per_s"],
            "peak_rss": large["peak_rss_bytes"] / max(small["peak_rss_bytes"], 1),
            # the rate of the work that grows with the rows: start-up, imports and figures cancel
            "marginal_rows_per_s": (large["angle_rows"] - small["angle_rows"])
            / max(large["wall_s"] - small["wall_s"], 1e-9)}


def per_run_epoch(one: dict, many: dict) -> dict:
    """The cost of one more (run, epoch): ``many``'s extra wall and CPU time over ``one`` (a single
    run of one epoch) per extra (run, epoch) pair, and the rows/s of that extra work."""
    pairs = many["trials"] * many["epochs"] - one["trials"] * one["epochs"]
    extra_rows = many["angle_rows"] - one["angle_rows"]
    wall = many["wall_s"] - one["wall_s"]
    return {"pairs": pairs, "wall_ms": 1e3 * wall / max(pairs, 1),
            "cpu_ms": 1e3 * (many["cpu_s"] - one["cpu_s"]) / max(pairs, 1),
            "marginal_rows_per_s": extra_rows / max(wall, 1e-9)}


def pieces(sweep: Path) -> list[dict]:
    """CPU and wall seconds of each piece of the analysis of ``sweep`` (module docstring)."""
    from noisyfr.analysis import counterfactual, engine, load, report, stats

    out, clock = [], [time.process_time(), time.perf_counter()]

    def lap(name: str) -> None:
        now = [time.process_time(), time.perf_counter()]
        out.append({"piece": name, "cpu_s": now[0] - clock[0], "wall_s": now[1] - clock[1]})
        clock[:] = [time.process_time(), time.perf_counter()]

    runs = load.scan_runs(sweep)
    lap("find and check runs")
    o = report._Options(weight="grad_norm", quantile=0.9, region_deg=60.0, bins=36, seed=0, metric=None,
                        learned_threshold=0.5)
    con = engine.connect()
    try:
        chunks = [item[2] for item in report._passes(con, runs, o, set()) if item[0] == "chunk"]
    finally:
        con.close()
    lap("DuckDB passes")
    for c in chunks:
        stats.epoch_stats(c, o.weight)
        stats.noise_type_stats(c, o.weight)
        for m in stats.REGION_METHODS:
            stats.region_stats(c, o.quantile, m, o.region_deg, o.weight)
        stats.binned_weight(c, bins=o.bins, weight=o.weight)
    lap("per-run tables")
    for c in chunks:
        stats.noise_rate_estimates(c, seed=o.seed)
    lap("mixture reference")
    counterfactual.table(runs)
    lap("counterfactual weights")
    pairs = sum(len(r.files) for r in runs)
    for row in out:
        row.update(pairs=pairs, cpu_ms_per_pair=1e3 * row["cpu_s"] / pairs,
                   wall_ms_per_pair=1e3 * row["wall_s"] / pairs)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pieces is not None:
        rows = pieces(args.pieces)
        print(f"{args.pieces}: {rows[0]['pairs']} (run, epoch); load {os.getloadavg()[0]:.1f}")
        print(f"{'piece':24s} {'cpu s':>7s} {'wall s':>7s} {'cpu ms/pair':>11s} {'wall ms/pair':>12s}")
        for r in rows + [{"piece": "total", **{k: sum(x[k] for x in rows) for k in
                                                ("cpu_s", "wall_s", "cpu_ms_per_pair", "wall_ms_per_pair")}}]:
            print(f"{r['piece']:24s} {r['cpu_s']:7.2f} {r['wall_s']:7.2f} {r['cpu_ms_per_pair']:11.1f} "
                  f"{r['wall_ms_per_pair']:12.1f}")
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_analysis_")
        root = Path(tmp.name)
    else:
        root = args.dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for name, size in (("small", args.small), ("large", args.large)):
            r = run_size(name, size, args, root)
            how = "reused" if r["reused"] else f"fabricated in {r['fabricate_s']:.1f} s"
            print(f"{name}: {r['angle_rows']:,} angle rows ({how}); {r['command']}", flush=True)
            results.append(r)
        rat = ratios(*results)
        print(f"noisyfr analyze, {'with' if args.figures else 'without'} figures; peak RSS = psutil "
              f"sum over the process tree at {args.poll_hz:g} Hz, maxrss = wait4 ru_maxrss, "
              "load = 1-min load average before-after")
        for line in table(results):
            print(line)
        print(f"ratio large/small: angle rows {rat['angle_rows']:.2f}, wall {rat['wall']:.2f}, "
              f"cpu {rat['cpu']:.2f}, rows/s {rat['rows_per_s']:.2f}, peak RSS {rat['peak_rss']:.2f}")
        print(f"marginal rows/s (extra rows / extra wall time, large minus small): "
              f"{rat['marginal_rows_per_s']:,.0f}")
        per = None
        if args.many is not None:
            one_size = (1, 1, *args.many[2:])
            many = []
            for name, size in (("one", one_size), ("many", args.many)):
                r = run_size(name, size, args, root)
                how = "reused" if r["reused"] else f"fabricated in {r['fabricate_s']:.1f} s"
                print(f"{name}: {r['angle_rows']:,} angle rows ({how}); {r['command']}", flush=True)
                many.append(r)
            per = per_run_epoch(*many)
            for line in table(many):
                print(line)
            print(f"per (run, epoch), many minus one: wall {per['wall_ms']:.1f} ms, cpu {per['cpu_ms']:.1f} ms "
                  f"over {per['pairs']} extra (run, epoch); marginal rows/s {per['marginal_rows_per_s']:,.0f}")
            results += many
        if args.json is not None:
            payload = {"figures": args.figures, "poll_hz": args.poll_hz, "noise": args.noise,
                       "seed": args.seed, "analyze_args": args.analyze_args,
                       "python": sys.executable, "sizes": results, "ratio_large_small": rat,
                       "per_run_epoch": per}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
