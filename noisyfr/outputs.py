"""Where a command may write, and what a failed write leaves behind: one place for every writer.

- :func:`check_output` runs before any work: the output must not be, or lie inside, an input of
  the command (nor, for a folder, may a file the command writes in it be an input); its folder must
  exist or be creatable, and be writable; a file path must not be a folder and vice versa.
- :func:`protect` registers a command's inputs for the process: :func:`noisyfr.io.atomic_path`
  refuses to replace one of them, whatever path reaches it.
- :func:`write_error` turns a failed write (full disk, quota, file-size limit, permission,
  read-only filesystem) into a one-line :class:`NoisyFRError` naming the file.
- :func:`output_folder` removes what a failed command added to a folder (the folder itself when
  the command created it).
- Files and folders get the modes the umask allows (0644 / 0755 under the usual umask 022).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from noisyfr.errors import NoisyFRError

#: errno values that mean "this location cannot take the write"
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM,
                          errno.EROFS})
#: how libraries that do not raise OSError word the same failures (torch.save, pyarrow, PIL)
_WRITE_TEXTS = ("no space left", "disk quota", "file too large", "permission denied",
                "read-only file system", "file write failed", "error writing")

_protected: list[Path] = []


# --------------------------------------------------------------------------- modes
def umask() -> int:
    """The process umask (read from /proc on Linux, so no thread sees it changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a new output file: 0o666 less the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new output folder: 0o777 less the umask."""
    return 0o777 & ~umask()


# --------------------------------------------------------------------------- inputs
def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def input_paths(*items) -> list[Path]:
    """Resolved paths of a command's inputs. ``items`` are paths, None, ``synthetic:`` specs (no
    file: skipped), ``features:PATH`` specs (the feature file PATH) or lists of those. A ``.rec``
    brings its ``.idx`` and the ``property`` beside it, an ``.idx`` its ``.rec``, and any file its
    ``<file>.json`` sidecar when that exists."""
    out: list[Path] = []
    stack = list(items)
    while stack:
        item = stack.pop(0)
        if item is None:
            continue
        if isinstance(item, (list, tuple, set)):
            stack[:0] = list(item)
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"input_paths: expected a path, got {type(item).__name__}")
        text = os.fspath(item)
        if text.startswith("features:"):  # a dataset of features: its file (and sidecar) are the input
            text = text[len("features:"):]
        if not text or text.startswith("synthetic"):
            continue
        p = _resolve(text)
        out.append(p)
        if p.name == "pairs.txt":
            out.append(p.parent / "images")
        if p.suffix == ".rec":
            out += [p.with_suffix(".idx"), p.parent / "property"]
        elif p.suffix == ".idx":
            out.append(p.with_suffix(".rec"))
        side = p.with_name(p.name + ".json")
        if side.exists():
            out.append(side)
    return out


def protect(*items) -> list[Path]:
    """Register inputs that no atomic write of this process may replace; returns them resolved."""
    paths = input_paths(*items)
    _protected.extend(p for p in paths if p not in _protected)
    return paths


def clear_protection() -> None:
    """Forget the registered inputs (a new command starts)."""
    _protected.clear()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def protected_input(path: str | os.PathLike) -> Path | None:
    """The registered input that ``path`` is or lies inside, or None."""
    target = _resolve(path)
    for inp in _protected:
        if _inside(target, inp):
            return inp
    return None


def guard(path: str | os.PathLike, what: str | None = None) -> None:
    """NoisyFRError when writing ``path`` would replace a registered input (or write inside one)."""
    inp = protected_input(path)
    if inp is not None:
        name = what or str(path)
        raise NoisyFRError(f"{name}: refusing to write over the input {inp}" if _resolve(path) == inp
                           else f"{name}: lies inside the input {inp}; refusing to write there")


# --------------------------------------------------------------------------- the check
def check_output(out: str | os.PathLike, inputs: Iterable = (), *, what: str = "--out",
                 kind: str = "file", writes: Iterable[str] = ()) -> Path:
    """Check, before any work, that ``out`` can be written; return it resolved.

    ``kind`` is ``"file"`` (a file path, or a prefix of files for ``pack``) or ``"dir"``.
    ``writes``: names of the entries the command writes inside a ``"dir"`` output; none of them
    may be or lie inside an input. The inputs are also registered with :func:`protect`.
    One-line NoisyFRError naming ``what`` and the path when the output is an input or inside one,
    is a folder where a file is expected (or the reverse), or its folder cannot be written."""
    target = _resolve(out)
    ins = protect(*inputs)
    for inp in ins + [p for p in _protected if p not in ins]:
        if target == inp:
            raise NoisyFRError(f"{what} {out}: is an input of this command ({inp}); choose another path")
        if _inside(target, inp):
            raise NoisyFRError(f"{what} {out}: lies inside the input {inp}; choose a path outside it")
        if kind == "dir":
            for name in writes:
                if _inside(inp, target / name):
                    raise NoisyFRError(f"{what} {out}: the command writes {target / name}, which would "
                                       f"replace the input {inp}; choose another folder")
    if target.exists() or target.is_symlink():
        if kind == "file" and target.is_dir():
            raise NoisyFRError(f"{what} {out}: is a folder, expected a file path")
        if kind == "dir" and not target.is_dir():
            raise NoisyFRError(f"{what} {out}: is a file, expected a folder")
    folder = target if kind == "dir" else target.parent
    probe = folder
    while not probe.exists():
        if probe.is_symlink():
            raise NoisyFRError(f"{what} {out}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise NoisyFRError(f"{what} {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "read-only filesystem" if _read_only(probe) else "permission denied"
        raise NoisyFRError(f"{what} {out}: cannot write in {probe} ({why})")
    return target


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# --------------------------------------------------------------------------- failures
class WriteError(NoisyFRError):
    """A write that failed for lack of space or permission (already one line, naming the path)."""


def is_write_error(exc: BaseException) -> bool:
    """True when ``exc`` says the location could not take a write (see :data:`WRITE_ERRNOS`);
    False for a :class:`WriteError`, which is already reported."""
    if isinstance(exc, NoisyFRError):
        return False
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return True
    text = str(exc).lower()
    return isinstance(exc, (OSError, RuntimeError)) and any(t in text for t in _WRITE_TEXTS)


def _reason(exc: BaseException, path: Path) -> str:
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return os.strerror(exc.errno)
    text = str(exc).lower()
    for errno_value in sorted(WRITE_ERRNOS):
        if os.strerror(errno_value).lower() in text:
            return os.strerror(errno_value)
    with contextlib.suppress(OSError):
        st = os.statvfs(path if path.is_dir() else path.parent)
        if st.f_bavail == 0:
            return os.strerror(errno.ENOSPC)
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def write_error(exc: BaseException, path: str | os.PathLike) -> WriteError:
    """One-line :class:`WriteError` for a failed write of ``path``."""
    return WriteError(f"{path}: cannot write ({_reason(exc, Path(path))})")


def make_dirs(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first (to undo with
    :func:`remove_dirs`). A failure is a :func:`write_error` naming the folder."""
    folder = Path(folder)
    missing: list[Path] = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir(mode=dir_mode())
            created.append(d)
    except FileExistsError:
        remove_dirs(created)
        raise NoisyFRError(f"{folder}: {d} is a file, not a folder") from None
    except OSError as exc:
        remove_dirs(created)
        raise write_error(exc, d) from None
    return created


def remove_dirs(created: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` created (innermost first), when they are empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


def folder_entries(folder: str | os.PathLike) -> set[str]:
    """Relative paths of everything under ``folder`` (empty when it does not exist)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def undo_folder(folder: Path, created: bool, before: set[str]) -> None:
    """Remove what a failed command added to ``folder``: all of it when ``created``, else the
    entries not in ``before`` (files replaced in place stay: they were written atomically)."""
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for rel in sorted(folder_entries(folder) - before, key=lambda r: -r.count(os.sep)):
        p = folder / rel
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` (and its parents) when missing and yield it; when the block raises,
    remove what it added (:func:`undo_folder`, and the parents created here) and turn a failed
    write into :func:`write_error`."""
    folder = Path(folder)
    before = folder_entries(folder)
    created = make_dirs(folder)
    try:
        yield folder
    except BaseException as exc:
        undo_folder(folder, bool(created), before)
        remove_dirs(created[:-1])
        if is_write_error(exc):
            path = getattr(exc, "filename", None) or folder
            raise write_error(exc, path) from None
        raise


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, what: str = "--out") -> Iterator[Path]:
    """Build a new folder ``out`` in a temporary sibling (yielded) and rename it into place when
    the block succeeds; ``out`` must not exist or be an empty folder (NoisyFRError naming
    ``what`` otherwise). On failure the temporary folder and the parents created for it are
    removed, and a failed write becomes :func:`write_error`. Folders get :func:`dir_mode`."""
    import tempfile

    out = Path(out)

    def check() -> None:
        if out.exists() and not out.is_dir():
            raise NoisyFRError(f"{what} {out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            raise NoisyFRError(f"{what} {out}: directory exists and is not empty; "
                               f"refusing to overwrite (remove it or choose another)")

    check()
    created = make_dirs(out.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        remove_dirs(created)
        raise write_error(exc, out) from None
    try:
        yield tmp
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            os.chmod(d, dir_mode())  # mkdtemp makes it private; the result is an ordinary folder
        check()                      # someone may have filled it meanwhile
        if out.is_dir():
            out.rmdir()              # empty: replace it
        os.rename(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_dirs(created)
        if is_write_error(exc):
            raise write_error(exc, out) from None
        raise


# --------------------------------------------------------------------------- CSV text cells
#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value):
    """A text cell as a spreadsheet shows it without running it: a string starting with one of
    :data:`FORMULA_STARTS` gets a leading single quote (OWASP's advice for CSV injection);
    anything else, numbers included, is returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_safe(df):
    """``df`` (a pandas DataFrame) with :func:`escape_cell` applied to its text columns (object,
    string and categorical columns of strings); numeric and boolean columns are left as they
    are. The one step every CSV writer takes before ``to_csv``; Parquet outputs keep the raw text."""
    import pandas as pd

    out = None
    for col in df.columns:
        s = df[col]
        if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)
                or isinstance(s.dtype, pd.CategoricalDtype)):
            continue
        values = s.astype(object) if isinstance(s.dtype, pd.CategoricalDtype) else s
        risky = values.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_STARTS))
        if bool(risky.any()):
            out = df.copy() if out is None else out
            out[col] = values.map(escape_cell)
    out = df if out is None else out
    cols = [escape_cell(c) for c in out.columns]
    return out.set_axis(cols, axis=1) if cols != list(out.columns) else out


# --------------------------------------------------------------------------- several outputs
@contextlib.contextmanager
def all_or_nothing(paths: Iterable) -> Iterator[None]:
    """Several output files written (each atomically) inside the block are kept all or not at
    all: when the block raises, the files it created are removed and those it replaced get their
    earlier content back (kept meanwhile as a hard link beside them, no copy). A command with
    several outputs (a manifest, its sidecar, its scores, a sheet) never leaves the first ones
    of a failed call."""
    import secrets

    paths = [Path(p) for p in paths]
    existed = {p: os.path.lexists(p) for p in paths}
    kept: dict[Path, Path] = {}
    for p in paths:
        if existed[p] and p.is_file() and not p.is_symlink():
            backup = p.with_name(f".{p.name}.{secrets.token_hex(4)}.keep")
            with contextlib.suppress(OSError):
                os.link(p, backup)
                kept[p] = backup
    try:
        yield
    except BaseException:
        for p in paths:
            with contextlib.suppress(OSError):
                if p in kept:
                    os.replace(kept.pop(p), p)
                elif not existed[p]:
                    p.unlink()
        raise
    finally:
        for backup in kept.values():
            with contextlib.suppress(OSError):
                backup.unlink()
