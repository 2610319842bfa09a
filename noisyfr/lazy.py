"""Lazily resolved package names: ``import noisyfr.data`` stays cheap, ``noisyfr.data.open_index``
imports its submodule on first use."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, table: Mapping[str, str],
                 submodules: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: a name of ``table`` (name -> module) is imported
    from its module, and a name of ``submodules`` is the submodule ``package.name``, when first
    asked for; any other name raises AttributeError."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
