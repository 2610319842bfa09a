"""Opening files in a directory the command does not own: no link followed, no blocking.

A run, sweep or dataset directory may be shared: anyone who can write there can plant a symbolic
link or a named pipe (FIFO) where a command expects its own file. The one way to open such a
file is :func:`open_regular`: ``O_NOFOLLOW`` (a link at the path is refused, dangling or not, so
nothing it names is created, truncated or read) and ``O_NONBLOCK`` (opening a FIFO or a device
does not wait for a writer), then ``fstat``: anything but a regular file is refused. Readers that
take a path (pyarrow, DuckDB) ask :func:`check_regular` first. Every refusal is one line naming
the path (:class:`~noisyfr.errors.NoisyFRError`).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from noisyfr.errors import NoisyFRError


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def refusal(path: str | os.PathLike, mode: int, what: str = "") -> NoisyFRError:
    """The one-line error for ``path`` being something other than a regular file."""
    name = f"{what} {path}" if what else str(path)
    return NoisyFRError(f"{name}: is {_kind(mode)}, expected a regular file (refusing to follow or open it)")


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o666,
                 what: str = "") -> int:
    """A file descriptor of the regular file ``path`` opened with ``flags`` (``O_CREAT`` allowed),
    never following a link at ``path`` and never blocking on a FIFO or device; NoisyFRError
    naming ``what`` and the path when it is anything but a regular file. The descriptor is
    close-on-exec and blocking again once checked. Other OSErrors (missing file, permission)
    propagate as they are."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refusal(path, stat.S_IFLNK, what) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO opened for writing, a folder
            raise refusal(path, os.lstat(path).st_mode, what) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refusal(path, st.st_mode, what)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` when it is a regular file and not a link (``lstat``); NoisyFRError naming it
    otherwise (FileNotFoundError when it is missing). For readers that open by path."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise refusal(path, st.st_mode, what)
    return Path(path)


def check_folder(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` when it is a real folder, not a link to one; NoisyFRError naming it otherwise."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        name = f"{what} {path}" if what else str(path)
        raise NoisyFRError(f"{name}: is {_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'}, "
                           "expected a folder (refusing to follow it)")
    return Path(path)


def check_no_links(folder: str | os.PathLike, names, what: str = "") -> None:
    """None of ``folder``'s entries ``names`` (what a command writes there) is a symbolic link:
    writing through a planted ``checkpoints -> /elsewhere`` would replace and prune files there.
    NoisyFRError naming the first link found."""
    for name in names:
        p = Path(folder) / name
        if p.is_symlink():
            raise refusal(p, stat.S_IFLNK, what)
