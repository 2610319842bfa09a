"""Dotted keys (``"optim.lr"``) into nested config dicts, shared by configs, sweeps and checkpoints."""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from noisyfr.errors import NoisyFRError


def get_dotted(cfg: Mapping, key: str, default: Any = None) -> Any:
    """``cfg[a][b]`` for ``"a.b"``; ``default`` when a part is missing."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _key_error(key: str, msg: str) -> NoisyFRError:
    return NoisyFRError(f"key '{key}': {msg}")


def set_dotted(cfg: dict, key: str, value: Any,
               err: Callable[[str, str], Exception] = _key_error) -> None:
    """Set ``cfg[a][b][c] = value`` for ``key = "a.b.c"``, creating missing sections; a path
    through a non-mapping raises ``err(prefix, message)``."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise err(prefix, f"cannot set '{key}': '{prefix}' is not a mapping")
        node = child
    node[parts[-1]] = copy.deepcopy(value)
