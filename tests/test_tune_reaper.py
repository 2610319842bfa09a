"""No Ray process a sweep started outlives its driver, however the driver ends (noisyfr.tune.reaper).

The pure parts (``/proc/PID/stat`` parsing, the tag, which processes belong to a sweep) are tested
on synthetic input; the watchdog on a small tree of sleeping processes; and the whole on real
one-trial sweeps run as ``noisyfr sweep`` subprocesses: the driver alone SIGKILLed mid-trial (Ray's
dashboard and runtime-env agents then outlive it unless reaped: they are in the driver's process
group, so killing the whole group, as test_tune_resume does, ends them anyway), and a sweep run to
its end. Linux only (``/proc``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from noisyfr.tune import reaper
from noisyfr.tune.reaper import TAG_VAR, is_tagged, parse_stat, proc_table, reap, sweep_processes

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# --------------------------------------------------------------------------- helpers
def _alive(pid: int, start: int) -> bool:
    """``pid`` is still the process that started at ``start`` and is not a zombie."""
    row = proc_table().get(pid)
    return row is not None and row[1] == start and row[2] != "Z"


def _gone(pid: int) -> bool:
    """``pid`` has exited (it may linger as a zombie of a parent that has not reaped it)."""
    row = proc_table().get(pid)
    return row is None or row[2] == "Z"


def _tagged(tag: str) -> dict[int, str]:
    """Live processes whose environment carries ``tag``: pid -> command line."""
    return {pid: _cmdline(pid) for pid, (_, _, state) in proc_table().items()
            if state != "Z" and is_tagged(reaper._read(pid, "environ"), tag)}


def _cmdline(pid: int) -> str:
    return b" ".join(reaper._read(pid, "cmdline")).decode(errors="replace").strip()


def _wait_until(cond, timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return cond()


def _spawn(code: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, **kw)


# --------------------------------------------------------------------------- pure parts
def test_parse_stat_reads_the_fields_after_the_last_parenthesis():
    # a command name may hold spaces and parentheses ("x) S 1 (y" is a valid comm)
    tail = " ".join(["S", "4242"] + ["0"] * 17 + ["987654", "0", "0"])
    assert parse_stat(f"77 (x) S 1 (y) {tail}") == (4242, 987654, "S")
    assert parse_stat(f"77 (python3) {tail.replace('S', 'Z', 1)}") == (4242, 987654, "Z")
    assert parse_stat("77 (cut short) S 1 2") is None


def test_proc_table_sees_this_process_and_a_child_with_an_odd_name():
    child = _spawn("""
        import sys, time
        with open('/proc/self/comm', 'w') as fh:
            fh.write('a) R 1 (b')
        print('named', flush=True)
        time.sleep(30)
    """)
    try:
        assert child.stdout.readline().strip() == b"named"
        table = proc_table()
        assert table[os.getpid()][0] == os.getppid()
        ppid, start, state = table[child.pid]
        assert ppid == os.getpid() and state in "RS"
        assert start >= table[os.getpid()][1]          # started after this process
    finally:
        child.kill()
        child.wait()


def test_is_tagged_matches_the_whole_variable_only():
    env = [b"PATH=/bin", f"{TAG_VAR}=123-abc".encode(), b""]
    assert is_tagged(env, "123-abc")
    assert not is_tagged(env, "123-ab")                 # a prefix of another sweep's tag
    assert not is_tagged(env, "123-abcd")
    assert not is_tagged([b"OTHER_" + f"{TAG_VAR}=123-abc".encode()], "123-abc")
    assert not is_tagged([], "123-abc")                 # unreadable environment


def test_sweep_processes_are_the_tagged_ones_and_their_descendants():
    #   1 init
    #   100 driver (excluded) -> 200 gcs (tag) ; 300 raylet (tag) -> 301 agent (env rewritten),
    #        302 worker (tag) -> 303 its child (no tag); 304 zombie worker (tag)
    #   400 unrelated; 500 another sweep's raylet (tag B) -> 501
    #   600 the watchdog (excluded, tag) -> 601 (reached only through it)
    #   700 agent already handed to init (no tag): not found by the tag (the watchdog notes it earlier)
    table = {1: (0, 1, "S"), 100: (1, 10, "S"), 200: (100, 20, "S"), 300: (100, 30, "S"),
             301: (300, 31, "S"), 302: (300, 32, "R"), 303: (302, 33, "S"), 304: (300, 34, "Z"),
             400: (1, 40, "S"), 500: (1, 50, "S"), 501: (500, 51, "S"), 600: (1, 60, "S"),
             601: (600, 61, "S"), 700: (1, 70, "S")}
    tags = {200: "A", 300: "A", 302: "A", 304: "A", 500: "B", 600: "A"}
    environ = {pid: ([f"{TAG_VAR}={tag}".encode()] if tag else []) for pid, tag in tags.items()}
    found = sweep_processes("A", exclude={100, 600}, table=table,
                            environ=lambda pid: environ.get(pid, [b"HOME=/root"]))
    assert found == {200: 20, 300: 30, 301: 31, 302: 32, 303: 33}
    assert set(sweep_processes("B", exclude=set(), table=table,
                               environ=lambda pid: environ.get(pid, []))) == {500, 501}
    assert sweep_processes("C", exclude=set(), table=table, environ=lambda pid: environ.get(pid, [])) == {}


# --------------------------------------------------------------------------- reap and the watchdog
#: A stand-in raylet: ignores SIGTERM, and starts an "agent" without the tag in a session of its
#: own (out of reach of a signal to the driver's group), as Ray's agents are.
TREE = f"""
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, '-c', 'import signal, time; '
                              'signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'],
                             env={{k: v for k, v in os.environ.items() if k != '{TAG_VAR}'}},
                             start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_reap_kills_the_tagged_tree_and_the_noted_processes_only(tmp_path):
    tag = f"test-{os.getpid()}-reap"
    tagged = _spawn(TREE, env=dict(os.environ, **{TAG_VAR: tag}))
    untagged_child = int(tagged.stdout.readline())          # no tag, but a descendant
    noted = _spawn("import time; time.sleep(60)")            # no tag; noted with its start time
    bystander = _spawn("import time; time.sleep(60)")        # no tag, not noted
    stale = _spawn("import time; time.sleep(60)")            # noted under another start time
    try:
        table = proc_table()
        start = {p: table[p][1] for p in (tagged.pid, untagged_child, noted.pid, bystander.pid, stale.pid)}
        killed = reap(tag, known={noted.pid: start[noted.pid], stale.pid: start[stale.pid] + 1},
                      exclude={os.getpid()}, limit_s=5)
        assert killed >= {tagged.pid, untagged_child, noted.pid}
        assert not killed & {bystander.pid, stale.pid}
        assert tagged.wait(5) == -signal.SIGKILL and noted.wait(5) == -signal.SIGKILL
        assert _wait_until(lambda: not _alive(untagged_child, start[untagged_child]), 5)
        assert bystander.poll() is None and stale.poll() is None
    finally:
        for p in (tagged, noted, bystander, stale):
            p.kill()
            p.wait()


#: A stand-in driver (argv: killed|done, the raylet's code): starts its watchdog, then a tagged
#: raylet in its own process group (so a SIGKILL of the group ends it, as PR_SET_PDEATHSIG ends
#: Ray's, and leaves its agent untagged and orphaned); "done" closes the watchdog after 1.5 s.
DRIVER = """
    import os, subprocess, sys, time
    from noisyfr.tune.reaper import TAG_VAR, Watchdog
    dog = Watchdog.start()
    os.environ[TAG_VAR] = dog.tag
    raylet = subprocess.Popen([sys.executable, '-c', sys.argv[2]], stdout=subprocess.DEVNULL)
    os.environ.pop(TAG_VAR)
    print(dog.proc.pid, dog.tag, raylet.pid, flush=True)
    if sys.argv[1] == 'done':
        time.sleep(1.5)                 # the watchdog notes the tree
        dog.close()
        print('closed', flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("end", ["killed", "done"])
def test_watchdog_reaps_when_the_driver_dies_or_is_done(tmp_path, end):
    """A SIGKILLed driver (its process group too) or one that closes its watchdog: its tagged
    process, and the untagged child noted while its tagged parent lived (after a kill, only the
    noting finds it), are killed; an untagged process outside the sweep is not."""
    bystander = _spawn("import time; time.sleep(60)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), end, textwrap.dedent(TREE)],
                              env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, start_new_session=True)
    strays: list[int] = []                                    # killed here should the test fail
    try:
        dog_pid, tag, raylet_pid = driver.stdout.readline().split()
        dog_pid, raylet_pid = int(dog_pid), int(raylet_pid)
        tag = tag.decode()
        assert _wait_until(lambda: any(ppid == raylet_pid for ppid, _, _ in proc_table().values()), 10)
        table = proc_table()
        agent = next(pid for pid, (ppid, _, _) in table.items() if ppid == raylet_pid)
        strays += [raylet_pid, agent]
        tree = {pid: table[pid][1] for pid in (raylet_pid, agent)}
        assert set(_tagged(tag)) == {raylet_pid} and table[dog_pid][0] == driver.pid
        if end == "killed":
            time.sleep(1.5)                                   # the watchdog notes the tree
            os.killpg(driver.pid, signal.SIGKILL)             # the watchdog has a session of its own
        else:
            assert driver.stdout.readline().strip() == b"closed"   # close() waited for the reaping
        assert _wait_until(lambda: not any(_alive(p, s) for p, s in tree.items()), 5), \
            {p: _cmdline(p) for p, s in tree.items() if _alive(p, s)}
        assert _wait_until(lambda: _gone(dog_pid), 5)
        assert bystander.poll() is None
        if end == "done":
            assert driver.poll() is None                      # the driver lives on
    finally:
        for p in (driver, bystander):
            p.kill()
            p.wait()
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- real sweeps
def _sweep(tmp_path: Path, epochs: int, sleep: float) -> tuple[subprocess.Popen, Path]:
    """``noisyfr sweep`` of one stand-in trial (test_tune_sweep.fake_train), in its own process group."""
    pytest.importorskip("ray")
    log = tmp_path / "events.jsonl"
    cfg = {"name": "reap", "trainer": "test_tune_sweep:fake_train", "loss": {"name": "arcface"},
           "optim": {"epochs": epochs}, "fake": {"log": str(log), "sleep": sleep},
           "grid": {"loss.name": ["arcface"]}, "resources": {"cpu": 1}, "max_failures": 0}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "noisyfr", "sweep", str(tmp_path / "sweep.yaml"),
                             "--out", str(tmp_path / "sw")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sweep.err", "w"),
                            start_new_session=True)
    return proc, log


def _running_trial(proc: subprocess.Popen, log: Path, tmp_path: Path) -> tuple[str, dict[int, int], int]:
    """Wait for the trial's first epoch; the sweep's tag, its processes then (pid -> start) and
    the pid of its watchdog."""
    def epoch_done():
        assert proc.poll() is None, (tmp_path / "sweep.err").read_text()[-2000:]
        return log.exists() and any(json.loads(x)["event"] == "epoch" for x in log.read_text().splitlines())

    assert _wait_until(epoch_done, 120, 0.2), "the trial did not start in 120 s"
    prefix = f"{TAG_VAR}={proc.pid}-".encode()
    tags = {v.decode().split("=", 1)[1] for pid in proc_table() for v in reaper._read(pid, "environ")
            if v.startswith(prefix)}
    assert len(tags) == 1, tags
    tag = tags.pop()
    dogs = [pid for pid, (ppid, _, _) in proc_table().items()
            if ppid == proc.pid and "reaper.py" in _cmdline(pid) and tag in _cmdline(pid)]
    assert len(dogs) == 1, dogs
    return tag, sweep_processes(tag, exclude={proc.pid}), dogs[0]


def _assert_all_gone(tag: str, ray_procs: dict[int, int], timeout_s: float) -> None:
    """Within ``timeout_s``, none of ``ray_procs`` lives and no process carries ``tag``."""
    left = lambda: {p: _cmdline(p) for p, s in ray_procs.items() if _alive(p, s)} | _tagged(tag)  # noqa: E731
    assert _wait_until(lambda: not left(), timeout_s, 0.2), left()


@pytest.mark.slow
def test_sigkilled_sweep_driver_leaves_no_ray_process(tmp_path):
    """``kill -9`` of the driver alone, mid-trial: within seconds no process of its Ray is left,
    the agents that ignore SIGTERM included, and the trial trains no further."""
    proc, log = _sweep(tmp_path, epochs=60, sleep=0.5)
    try:
        tag, ray_procs, dog = _running_trial(proc, log, tmp_path)
        names = " ".join(_cmdline(p) for p in ray_procs)
        for name in ("ImplicitFunc", "raylet", "gcs_server", "DashboardAgent", "RuntimeEnvAgent"):
            assert name in names, names
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        _assert_all_gone(tag, ray_procs, 15)
        n_events = len(log.read_text().splitlines())
        time.sleep(1.0)
        assert len(log.read_text().splitlines()) == n_events
        assert _wait_until(lambda: _gone(dog), 15)                  # the watchdog is done too
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_finished_sweep_leaves_no_ray_process(tmp_path):
    """A sweep that ends normally: when the driver has exited, its watchdog has too, and no
    process of its Ray is left (``ray.shutdown`` ends most; the watchdog what it leaves)."""
    proc, log = _sweep(tmp_path, epochs=2, sleep=0.5)
    try:
        tag, ray_procs, dog = _running_trial(proc, log, tmp_path)
        assert proc.wait(120) == 0, (tmp_path / "sweep.err").read_text()[-2000:]
        assert (tmp_path / "sw" / "results.csv").exists()
        assert _gone(dog)                                           # the driver waited for it
        _assert_all_gone(tag, ray_procs, 0.5)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
