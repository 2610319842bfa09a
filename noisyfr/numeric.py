"""Numbers from users, parsed once: finite reals, bounded integers, and the size limits.

Every number a user gives (a config value, a ``KEY=VALUE`` override, a noise spec, a
``synthetic:`` spec, a command-line flag) goes through :func:`real` or :func:`integer`, so every
spelling of NaN and infinity is refused the same way: ``nan``, ``NaN``, ``-inf``, ``Infinity``,
YAML's ``.nan`` / ``.inf``, ``1e999`` (overflows to infinity), an int too large for a float,
numpy's ``float32('nan')``. Numeric strings are accepted (YAML 1.1 reads ``5e-4`` as a string; a
flag is always one), booleans never. Integers are integers: ``3.0``, ``1e3`` and ``'1.5'`` are
refused for an integer key or flag.

Errors are :class:`NoisyFRError` ``"<name>: <problem>"`` (``name`` is the key or flag as the user
wrote it). :func:`real_arg` and :func:`int_arg` are the same parsers as argparse ``type=``
functions: argparse reports ``argument --flag: <problem>`` on one line and exits 2 before the
command runs.

The ``MAX_*`` constants bound the inputs whose size allocates memory (or processes) in
proportion; they live here so that a flag and the config key doing the same job share one bound.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

from noisyfr.errors import NoisyFRError

#: Largest seed anywhere (numpy, torch and the synthetic renderer all take it).
MAX_SEED = 2**63 - 1
#: Images per forward pass when embedding or evaluating (``--batch-size``, ``eval.batch_size``).
MAX_EVAL_BATCH = 4096
#: Images per training step, over every device (``optim.batch_size``).
MAX_TRAIN_BATCH = 65536
#: DataLoader worker processes (``--num-workers``, ``data.num_workers``).
MAX_WORKERS = 128
#: Side of a training or evaluation image in pixels (``data.image_size``; synthetic images too).
MAX_IMAGE_SIZE = 1024
#: Embedding size of a backbone (``--embedding-dim``, ``model.embedding_dim``).
MAX_EMBEDDING_DIM = 65536
#: Identities of a dataset (a RecordIO label or ``property`` count beyond it is corruption, not
#: a 16M-way classifier: WebFace42M has 2M identities).
MAX_IDENTITIES = 2**24
#: Bounds of the loss curves' reference setting (:mod:`noisyfr.losses.curves`, ``noisyfr curves``):
#: theta values, classes, and their product (each mode holds a float64 cosine matrix of points x
#: classes and its gradient: 10M cells = 160 MB).
MAX_CURVE_POINTS = 100_000
MAX_CURVE_CLASSES = 1_000_000
MAX_CURVE_CELLS = 10_000_000
#: Losses drawn by ``noisyfr curves`` by default, and the target-logit difference (before s) that
#: counts as differing in a margin match (:mod:`noisyfr.losses.matching`). Here, beside the limits,
#: so that the command's ``--help`` needs no torch.
DEFAULT_CURVE_LOSSES = ("arcface", "cosface", "sphereface", "expface")
DEFAULT_MATCH_TOL = 0.01

_INT_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _shown(value: Any) -> str:
    """How a bad value is quoted in a message: ``'nan'``, ``1.5``, ``bool True``, at most 40 chars."""
    if isinstance(value, Real) and not isinstance(value, bool) and hasattr(value, "item"):
        value = value.item()  # a numpy scalar: show its Python value
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return _short(repr(value))
    return _short(f"{type(value).__name__} {value!r}")


def _fail(name: str | None, problem: str) -> NoisyFRError:
    return NoisyFRError(f"{name}: {problem}" if name else problem)


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else _short(str(v))


def _check_range(v, value, name, lo, hi, lo_open, hi_open):
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if not (below or above):
        return v
    if lo is not None and hi is not None:
        rng = f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f"{'>' if lo_open else '>='} {_fmt(lo)}"
    else:
        rng = f"{'<' if hi_open else '<='} {_fmt(hi)}"
    raise _fail(name, f"must be {rng}, got {_short(value.strip()) if isinstance(value, str) else _fmt(v)}")


def real(value: Any, name: str | None = None, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (``lo_open``/``hi_open``: strict).

    Takes ints, floats, numpy scalars and numeric strings; refuses booleans, NaN and infinity in
    every spelling, and numbers too large for a float. NoisyFRError ``"<name>: ..."`` otherwise.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            v = float(text)
        except ValueError:
            raise _fail(name, f"expected a number, got {_shown(value)}") from None
    elif isinstance(value, Real) and not isinstance(value, bool):
        try:
            v = float(value)
        except OverflowError:
            raise _fail(name, f"expected a finite number, got {_shown(value)} (too large)") from None
    else:
        raise _fail(name, f"expected a number, got {_shown(value)}")
    if not math.isfinite(v):
        raise _fail(name, f"expected a finite number, got {_shown(value)}")
    return _check_range(v, value, name, lo, hi, lo_open, hi_open)


def integer(value: Any, name: str | None = None, *, lo: int | None = None,
            hi: int | None = None) -> int:
    """``value`` as an int within ``[lo, hi]``.

    Takes ints, numpy integers and decimal digit strings (``"12"``, ``"-3"``); refuses booleans,
    floats (``3.0`` too), ``"1e3"``, ``"1.5"``, NaN and infinity. NoisyFRError ``"<name>: ..."``.
    """
    if isinstance(value, str):
        text = value.strip()
        if not _INT_TEXT.fullmatch(text) or len(text) > 40:
            raise _fail(name, f"expected an integer, got {_shown(value)}")
        v = int(text)
    elif isinstance(value, Integral) and not isinstance(value, bool):
        v = int(value)
    else:
        raise _fail(name, f"expected an integer, got {_shown(value)}")
    return _check_range(v, value, name, lo, hi, False, False)


def is_int_text(text: str) -> bool:
    """``text`` spells a decimal integer (``"12"``, ``"-3"``), as :func:`integer` accepts it."""
    return bool(_INT_TEXT.fullmatch(text.strip()))


def _as_arg(parse: Callable[[str], Any], kind: str) -> Callable[[str], Any]:
    def parse_arg(text: str):
        try:
            return parse(text)
        except NoisyFRError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse_arg.__name__ = kind
    return parse_arg


def real_arg(*, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` for a flag taking a finite number within the bounds."""
    return _as_arg(lambda t: real(t, None, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open), "number")


def int_arg(*, lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for a flag taking an integer within ``[lo, hi]``."""
    return _as_arg(lambda t: integer(t, None, lo=lo, hi=hi), "integer")
