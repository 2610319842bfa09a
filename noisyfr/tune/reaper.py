"""End the Ray processes a sweep started, however its driver ends (Linux).

``ray.init`` starts the GCS server, the raylet, the dashboard and the log monitor as children of
the driver that die with it (``PR_SET_PDEATHSIG``); the raylet in turn starts the dashboard and
runtime-env agents and the workers. When the driver is SIGKILLed (an OOM killer, a lost
allocation, ``kill -9``) nothing of it runs again: the raylet dies, but the agents live on (and
ignore SIGTERM), and so would workers of a raylet that dies.

So :func:`local_ray`, which :func:`noisyfr.tune.run_sweep` uses to start a local Ray, first
starts this file as a small watchdog process in a session of its own (out of reach of signals
sent to the driver's process group), and starts Ray with a tag in the environment every Ray
process inherits (``NOISYFR_SWEEP_TAG=<driver pid>-<random>``, one per sweep). The agents
overwrite their environment when they rename themselves (``ray::DashboardAgent``), so the tag
alone does not find them: every half second the watchdog notes the tagged processes *and their
descendants* (pid and start time), while the agents are still children of the raylet. When the
driver is gone (its end of the watchdog's stdin pipe closes, or the watchdog is handed to
another parent) or says it is done (it closes the pipe after ``ray.shutdown()``), the watchdog
SIGKILLs every tagged process, every descendant of one, and every noted process that is still
the same process (same start time), until none is left (10 s at most), and exits.

Only processes of this sweep carry its tag or descend from one: another sweep, a process that
merely reads the Ray session's files, or a Ray cluster joined with ``--address`` (where the sweep
starts nothing and the watchdog does not run) is never touched. The watchdog uses the standard
library only and runs with ``python -I``.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

#: The environment variable that marks the processes of one sweep's Ray.
TAG_VAR = "NOISYFR_SWEEP_TAG"
POLL_S = 0.5        # how often the watchdog notes the sweep's processes
REAP_S = 10.0       # how long it keeps killing after the driver ended


# --------------------------------------------------------------------------- /proc

def parse_stat(stat: str) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state letter) from the text of ``/proc/PID/stat``
    (None when it is cut short). The command name, in parentheses, may hold spaces and
    parentheses itself: the fields are read after its last ``)``."""
    fields = stat[stat.rfind(")") + 2:].split()   # "pid (comm) state ppid ... starttime ..."
    if len(fields) < 20:
        return None
    return int(fields[1]), int(fields[19]), fields[0]


def proc_table() -> dict[int, tuple[int, int, str]]:
    """Every process: pid -> (parent pid, start time in clock ticks, state letter)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                row = parse_stat(fh.read().decode("ascii", "replace"))
        except OSError:
            continue
        if row is not None:
            table[int(entry)] = row
    return table


def _read(pid: int, what: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as fh:
            return fh.read().split(b"\0")
    except OSError:           # gone, or not ours to read
        return []


def is_tagged(environ: list[bytes], tag: str) -> bool:
    """``environ`` (NUL-split ``/proc/PID/environ``) carries this sweep's tag."""
    return f"{TAG_VAR}={tag}".encode() in environ


def sweep_processes(tag: str, exclude: set[int], table: dict[int, tuple[int, int, str]] | None = None,
                    environ: Callable[[int], list[bytes]] | None = None) -> dict[int, int]:
    """The live processes of the sweep: those tagged and their descendants; pid -> start time.
    Zombies and ``exclude`` (and what descends only through them) are left out. ``table`` and
    ``environ`` (pid -> its NUL-split environment) default to reading ``/proc``."""
    table = proc_table() if table is None else table
    environ = environ or (lambda pid: _read(pid, "environ"))
    roots = [pid for pid, (_, _, state) in table.items() if pid not in exclude and state != "Z"
             and is_tagged(environ(pid), tag)]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found or pid in exclude:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return {pid: table[pid][1] for pid in found if table[pid][2] != "Z"}


def reap(tag: str, known: dict[int, int], exclude: set[int], limit_s: float = REAP_S) -> set[int]:
    """SIGKILL the sweep's processes (those found now and those in ``known`` that are still the
    same process) until none is left or ``limit_s`` has passed; return the pids killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + limit_s
    while True:
        table = proc_table()
        targets = sweep_processes(tag, exclude, table)
        targets.update({pid: start for pid, start in known.items() if pid not in exclude
                        and pid in table and table[pid][1] == start and table[pid][2] != "Z"})
        if not targets or time.monotonic() > deadline:
            return killed
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.1)


# --------------------------------------------------------------------------- the watchdog process

def watch(driver: int, tag: str) -> None:
    """Note the sweep's processes while ``driver`` runs; reap them when it is gone or done.

    The driver writes nothing to stdin: its end (EOF) means the driver is done or dead."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    exclude = {os.getpid(), driver}
    known: dict[int, int] = {}
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 4096):
            break                       # EOF: the driver closed the pipe or died
        if os.getppid() != driver:      # the driver died and this process was handed on
            break
        table = proc_table()
        known = {pid: start for pid, start in known.items() if pid in table and table[pid][1] == start}
        known.update(sweep_processes(tag, exclude, table))
    reap(tag, known, exclude)


# --------------------------------------------------------------------------- the driver's side

class Watchdog:
    """The driver's handle on its watchdog process."""

    def __init__(self, proc: subprocess.Popen, tag: str):
        self.proc, self.tag = proc, tag

    @classmethod
    def start(cls) -> Watchdog | None:
        """Start the watchdog of this driver (None where there is no ``/proc``)."""
        if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
            return None
        tag = f"{os.getpid()}-{uuid.uuid4().hex}"
        proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), tag],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        return cls(proc, tag)

    def close(self, timeout_s: float = REAP_S + 5) -> None:
        """The driver is done with Ray: let the watchdog reap what is left, and wait for it."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)


@contextlib.contextmanager
def local_ray(init: Callable[[], None], address: str | None) -> Iterator[bool]:
    """Run ``init`` (a ``ray.init`` call) unless Ray is already initialised; yield whether it was
    run. On leaving: ``ray.shutdown()``, then, for a local Ray this driver started, the watchdog
    reaps whatever of it is left. With an ``address`` (or ``RAY_ADDRESS``) the driver joins a
    cluster it did not start: no watchdog, nothing reaped."""
    import ray

    if ray.is_initialized():
        yield False
        return
    watchdog = Watchdog.start() if address is None and not os.environ.get("RAY_ADDRESS") else None
    try:
        old = os.environ.get(TAG_VAR)
        if watchdog is not None:
            os.environ[TAG_VAR] = watchdog.tag
        try:
            init()
        finally:
            if old is None:
                os.environ.pop(TAG_VAR, None)
            else:
                os.environ[TAG_VAR] = old
        yield True
    finally:
        try:
            if ray.is_initialized():
                ray.shutdown()
        finally:
            if watchdog is not None:
                watchdog.close()


if __name__ == "__main__":  # the watchdog: python -I reaper.py DRIVER_PID TAG
    watch(int(sys.argv[1]), sys.argv[2])
