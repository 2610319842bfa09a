"""Short names built from values: file-name slugs and compact labels of config values.

One owner for both, used by sweeps (trial names, manifest names) and reports (figure files).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def slug(text: str) -> str:
    """``text`` made safe as a file name: runs of characters other than letters, digits and
    ``. _ = + -`` become one ``-``; leading/trailing ``-`` dropped; ``x`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(text)).strip("-") or "x"


def is_number(v: Any) -> bool:
    """True for int and float values, not bools."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def label_value(v: Any) -> str:
    """A compact label of a config value: ``0.4``, ``arcface-s32-m0.5-detached`` for a mapping
    (numbers carry their key, words stand alone), ``a+b`` for a list."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, Mapping):
        return "-".join(f"{k}{label_value(x)}" if is_number(x) else label_value(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "+".join(label_value(x) for x in v)
    return str(v)
