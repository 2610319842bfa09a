"""The ``key=value,key=value`` body of a dataset spec (``synthetic:``, ``synthetic-features:``)."""
from __future__ import annotations

from collections.abc import Iterable

from noisyfr.errors import NoisyFRError


def spec_items(body: str, keys: Iterable[str], where: str, hint: str = "...") -> dict[str, str]:
    """``"ids=10,per-id=5"`` -> ``{"ids": "10", "per_id": "5"}`` (``-`` may replace ``_``).

    An unknown, repeated or valueless key is a one-line NoisyFRError naming ``where``; ``hint``
    stands for the value in the message (``key=N``). Values are returned as text: the caller
    checks them."""
    keys = list(keys)
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in keys:
            raise NoisyFRError(f"{where}: unknown key {key!r} (expected {', '.join(keys)})")
        if not eq or not value.strip():
            raise NoisyFRError(f"{where}: key {key!r} needs a value ({key}={hint})")
        if key in out:
            raise NoisyFRError(f"{where}: key {key!r} given twice")
        out[key] = value
    return out
