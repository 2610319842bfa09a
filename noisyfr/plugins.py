"""User extensions: the config key ``plugins: [module_or_file, ...]`` imports user modules before
anything is built, so a loss registered with ``noisyfr.losses.register_loss`` or a backbone
registered with ``noisyfr.models.register_backbone`` in them can be named by ``noisyfr train``
and ``noisyfr sweep`` (in every Ray worker too: each trial's config loads them again)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from noisyfr.errors import NoisyFRError


def is_plugin_file(entry: str) -> bool:
    """True when a ``plugins`` entry names a Python file (``losses.py``, ``dir/x.py``) rather
    than an importable module (``mypkg.losses``)."""
    return entry.endswith(".py")


def load_plugin(entry: str, key: str = "plugins") -> None:
    """Import one plugin: a module name (``mypkg.losses``) or a Python file. Importing twice is a
    no-op. NoisyFRError naming ``key`` when it cannot be imported."""
    if not is_plugin_file(entry):
        try:
            importlib.import_module(entry)
        except ImportError as exc:
            raise NoisyFRError(f"config key '{key}': cannot import {entry!r} ({exc})") from None
        return
    path = Path(entry).expanduser().resolve()
    if not path.is_file():
        raise NoisyFRError(f"config key '{key}': plugin file {entry} does not exist")
    name = f"noisyfr_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed while importing
        del sys.modules[name]
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NoisyFRError(f"config key '{key}': plugin {entry} failed to import "
                           f"({type(exc).__name__}: {msg})") from None


def load_plugins(entries: list[str]) -> None:
    """Import every ``plugins`` entry in order."""
    for i, entry in enumerate(entries):
        load_plugin(entry, f"plugins[{i}]")
