"""One writer per directory: an exclusive ``flock`` on ``DIR/.lock`` for as long as the writer lives.

A run directory (``noisyfr train``) and a sweep directory (``noisyfr sweep``) are written by one
process at a time. The writer holds ``fcntl.flock(LOCK_EX)`` on the lock file inside the
directory; the file says who holds it (JSON: ``pid``, ``host``, ``started``). The kernel releases
the lock when the holder dies, however it dies (``kill -9`` included), so a lock never goes stale
and nothing ever needs deleting by hand; the file left behind by a killed holder is taken over by
the next writer. A clean release removes the file.

The lock file is opened with :func:`noisyfr.safefs.open_regular`: a symbolic link or a named
pipe planted at ``DIR/.lock`` is refused with one line (nothing it names is created, truncated or
written, and nothing blocks). Readers (``analyze``, ``eval``) take no lock. :func:`check_free`
asks without writing anything (a
command refuses early, before any work); :func:`acquire` takes the lock when the command starts
to write; :func:`is_held` says whether a writer holds it (the sweep driver asks it of its trials'
run directories when it stops them). Asking takes the lock for a moment, so both retry a
``LOCK_NB`` refusal for :data:`PROBE_RETRY_S` before they call the directory busy: a probe is
never taken for another writer.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from noisyfr.errors import NoisyFRError
from noisyfr.safefs import open_regular

#: the lock file's name inside the directory it guards (not a run or sweep file)
LOCK_NAME = ".lock"
#: how long a refused ``flock(LOCK_NB)`` is retried (another process probing the lock holds it
#: for microseconds)
PROBE_RETRY_S = 0.05


class DirectoryInUse(NoisyFRError):
    """Another live process holds the directory's lock."""


def _holder_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "another process (it has not said which yet)"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"


def _busy(folder: Path, what: str, fd: int) -> DirectoryInUse:
    return DirectoryInUse(f"{what} {folder}: in use by another writer ({_holder_text(fd)}); "
                          "wait for it to end or choose another directory")


def _flock_nb(fd: int) -> None:
    """``flock(LOCK_EX | LOCK_NB)``, retried for :data:`PROBE_RETRY_S` while refused; raises
    BlockingIOError when a holder keeps it."""
    deadline = time.monotonic() + PROBE_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def is_held(folder: str | os.PathLike) -> bool:
    """Whether a live process holds ``folder``'s lock (False without a lock file, or with one
    left by a killed holder). Creates, opens for writing and changes nothing."""
    try:
        fd = open_regular(Path(folder) / LOCK_NAME, os.O_RDONLY)
    except (OSError, NoisyFRError):
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no retry: held is the answer
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def check_free(folder: str | os.PathLike, what: str) -> None:
    """:class:`DirectoryInUse` naming ``folder`` and the holder when a live process holds its
    lock, NoisyFRError when ``DIR/.lock`` is a link, a FIFO or anything but a regular file.
    Creates, opens for writing and changes nothing."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = open_regular(path, os.O_RDONLY, what="lock file")
    except OSError:
        return  # no lock file (or an unreadable one: acquire will say)
    try:
        try:
            _flock_nb(fd)
        except BlockingIOError:
            raise _busy(Path(folder), what, fd) from None
        except OSError:
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class DirLock:
    """A held directory lock; :meth:`release` (or the end of the process) lets it go."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Remove the lock file (still holding the lock, so no other writer sees it vanish under
        it) and let the lock go. Idempotent."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(folder: str | os.PathLike, what: str) -> DirLock:
    """Take the exclusive lock of the existing folder ``folder`` and write who holds it;
    :class:`DirectoryInUse` (one line naming the folder and the holder) when a live process holds
    it. A failed write is an OSError like any other."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    from noisyfr.outputs import file_mode

    for _ in range(10):
        fd = open_regular(path, os.O_RDWR | os.O_CREAT, file_mode(), what="lock file")
        try:
            _flock_nb(fd)
        except BlockingIOError:
            err = _busy(folder, what, fd)
            os.close(fd)
            raise err from None
        except BaseException:
            os.close(fd)
            raise
        # A holder releasing at this moment unlinks the file it locked: then this descriptor is
        # an orphan and the lock must be taken on the file now at the path.
        try:
            same = os.lstat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except BaseException:
            lock = DirLock(path, fd)
            lock.release()
            raise
        return DirLock(path, fd)
    raise DirectoryInUse(f"{what} {folder}: cannot take its lock file {path} (it keeps being replaced)")
