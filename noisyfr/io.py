"""File input and output shared by every command.

Output is atomic: write to a temporary file beside the target, then rename, so a failed or
interrupted write never leaves a partial output file behind. Input: YAML (aliases refused) and
JSON readers whose errors are one line naming the file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    Use it for writers that want a path (``DataFrame.to_parquet``, ``Figure.savefig``). The
    temporary name keeps the target's suffix so that format detection by extension still works.
    The target must not be a registered input (:func:`noisyfr.outputs.guard`); the file gets the
    mode the umask allows; a failed write (full disk, permission, ...) removes the temporary file
    and the folders created for it, and becomes a one-line NoisyFRError naming the target.
    """
    from noisyfr import outputs

    target = Path(path)
    outputs.guard(target)
    created = outputs.make_dirs(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}",
                                   dir=target.parent)
    except OSError as exc:
        outputs.remove_dirs(created)
        raise outputs.write_error(exc, target) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, outputs.file_mode())
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        outputs.remove_dirs(created)
        other = getattr(exc, "filename", None)  # an input that failed to read is not a write error
        if outputs.is_write_error(exc) and (not other or Path(other) in (tmp_path, target)):
            raise outputs.write_error(exc, target) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs):
    """Open a temporary file for writing; rename it to ``path`` when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh


def _safe_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses anchors and aliases: a config never needs them, and an alias
        bomb (nested aliases expanding to billions of nodes) would exhaust memory."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases (*name) are not allowed", event.start_mark)
            return super().compose_node(parent, index)

    return Loader


def parse_yaml(text: str, what: str):
    """YAML ``text`` parsed safely with anchors/aliases refused (no alias bomb can expand) and
    nesting bounded by Python's recursion limit; NoisyFRError naming ``what`` otherwise."""
    import yaml

    from noisyfr.errors import NoisyFRError

    try:
        return yaml.load(text, Loader=_safe_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise NoisyFRError(f"{what}: invalid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:  # PyYAML recurses per level: [[[[...]]]] thousands deep
        raise NoisyFRError(f"{what}: invalid YAML (nested too deeply)") from None


def read_yaml(path: str | os.PathLike, what: str = "config"):
    """Read a YAML file with :func:`parse_yaml`; a missing file, non-UTF-8 text or invalid YAML
    raises NoisyFRError naming ``what`` and the path."""
    from noisyfr.errors import NoisyFRError

    p = Path(path)
    if not p.is_file():
        raise NoisyFRError(f"{what} {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NoisyFRError(f"{what} {p}: not a UTF-8 text file") from None
    except OSError as exc:
        raise NoisyFRError(f"{what} {p}: cannot read ({exc.strerror or exc})") from None
    return parse_yaml(text, f"{what} {p}")


def read_json(path: str | os.PathLike, what: str = "file"):
    """Read a JSON file; a missing, unreadable or invalid file raises NoisyFRError naming
    ``what`` and the path."""
    import json

    from noisyfr.errors import NoisyFRError

    p = Path(path)
    if not p.is_file():
        raise NoisyFRError(f"{what} {p}: no such file")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NoisyFRError(f"{what} {p}: not valid JSON ({str(exc).splitlines()[0]})") from None


def first_sentence(text: str, limit: int = 300) -> str:
    """The first sentence of a library's error message, on one line (torch's run on for
    paragraphs): up to the first ``. `` / ``! `` / ``? `` (or a line break after a full stop),
    without a trailing colon; a first sentence longer than ``limit`` characters ends at the last
    whole word before it, marked with an ellipsis. Never cut mid-word."""
    import re

    flat = " ".join(str(text).split())
    match = re.search(r"[.!?](?=\s|$)", flat)
    first = flat[:match.end()] if match else flat
    first = first.rstrip(" :;,")
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0].rstrip(" :;,.") + " ..."
    return first


def load_checkpoint(path: str | os.PathLike, map_location="cpu", required: tuple[str, ...] = ()) -> dict:
    """Load a torch checkpoint with ``torch.load(weights_only=True)`` (no arbitrary objects are
    unpickled); NoisyFRError naming the file when it is missing, unreadable, not a dict, or lacks
    one of the ``required`` keys. The one guarded loader of training resume, evaluation and export."""
    import torch

    from noisyfr.errors import NoisyFRError

    path = Path(path)
    if not path.is_file():
        raise NoisyFRError(f"checkpoint {path}: no such file")
    import warnings

    try:
        # torch warns about what it is about to refuse (a pickle protocol, ...): the refusal is
        # the one line; a checkpoint that loads gets its warnings back
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = torch.load(path, map_location=map_location, weights_only=True)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except Exception as exc:  # corrupt file, non-weights pickle, ...
        msg = first_sentence(str(exc)) or type(exc).__name__
        raise NoisyFRError(f"checkpoint {path}: not a readable checkpoint "
                           f"({type(exc).__name__}: {msg})") from None
    if not isinstance(state, dict):
        raise NoisyFRError(f"checkpoint {path}: not a noisyfr checkpoint (got {type(state).__name__})")
    missing = [k for k in required if k not in state]
    if missing:
        raise NoisyFRError(f"checkpoint {path}: not a noisyfr checkpoint (missing {', '.join(missing)})")
    return state
