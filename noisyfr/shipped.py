"""The experiment configs and notebooks that ship with noisyfr, found by name.

One source of truth: the repository's ``experiments/configs/`` and ``experiments/notebooks/``.
A wheel carries the same files as package data under ``noisyfr/_experiments/`` (copied there at
build time by ``setup.py``, never committed); a checkout (an editable install, or the repository
on ``PYTHONPATH``) reads ``experiments/`` beside the package. So ``noisyfr sweep demo`` works from
any directory of either, and a path works as before.
"""
from __future__ import annotations

import os
from pathlib import Path

from noisyfr.errors import NoisyFRError

#: the folder inside the installed package that a wheel's build fills from ``experiments/``
PACKAGED = Path(__file__).resolve().parent / "_experiments"
#: ``experiments/`` of the checkout the package was imported from (absent in a wheel)
CHECKOUT = Path(__file__).resolve().parents[1] / "experiments"
#: what is shipped: sub-folder -> file suffix
SHIPPED = {"configs": ".yaml", "notebooks": ".ipynb"}


def experiments_root() -> Path:
    """``noisyfr/_experiments`` in an installed wheel, else the checkout's ``experiments``."""
    for root in (PACKAGED, CHECKOUT):
        if (root / "configs").is_dir():
            return root
    raise NoisyFRError(f"no shipped configs: neither {PACKAGED} nor {CHECKOUT} holds configs/ "
                       "(a broken install: reinstall noisyfr)")


def shipped(kind: str = "configs") -> dict[str, Path]:
    """Shipped files of one kind (``configs`` or ``notebooks``): name (the file stem) -> path."""
    suffix = SHIPPED[kind]
    folder = experiments_root() / kind
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix == suffix and p.is_file()}


def find(name: str) -> tuple[str, Path]:
    """The kind and path of a shipped config or notebook, by name (``demo``, ``demo.yaml``,
    ``01_noise_injection``); NoisyFRError listing the names when there is none."""
    stem = Path(name).stem if Path(name).suffix in SHIPPED.values() else name
    for kind in SHIPPED:
        files = shipped(kind)
        if stem in files and (Path(name).suffix in ("", files[stem].suffix)):
            return kind, files[stem]
    names = ", ".join(list(shipped("configs")) + list(shipped("notebooks")))
    raise NoisyFRError(f"{name}: no such file, nor a shipped config or notebook (shipped: {names})")


def config_path(arg: str | os.PathLike, what: str = "config") -> Path:
    """A config given on the command line: an existing path as given, else a shipped config by
    name (``demo`` or ``demo.yaml``). A missing path that names no shipped config is an error
    naming ``what``."""
    p = Path(arg)
    if p.exists():
        return p
    files = shipped("configs")
    stem = p.stem if p.suffix == ".yaml" else p.name
    if p.parent == Path(".") and p.suffix in ("", ".yaml") and stem in files:
        return files[stem]
    raise NoisyFRError(f"{what} {arg}: no such file, nor a shipped config "
                       f"(`noisyfr configs` lists them: {', '.join(files)})")


# --------------------------------------------------------------------------- noisyfr configs
#: Command lines shown by ``--help``.
EXAMPLES = ["noisyfr configs demo --out my_demo.yaml", "noisyfr configs 02_angle_analysis --out angles.ipynb"]


def describe(kind: str, path: Path) -> str:
    """One line about a shipped file: a config's kind (sweep, loop or train) and the first
    sentence of its opening comment; a notebook's title."""
    if kind == "notebooks":
        import json

        cells = json.loads(path.read_text(encoding="utf-8")).get("cells") or [{}]
        title = "".join(cells[0].get("source") or []).splitlines()[:1]
        return "notebook  " + (title[0].lstrip("# ").strip() if title else "")
    from noisyfr.io import read_yaml

    raw = read_yaml(path, "shipped config") or {}
    role = "sweep" if "grid" in raw else "loop" if "loop" in raw else "train"
    lines = path.read_text(encoding="utf-8").splitlines()
    text = " ".join(x.lstrip("#").strip() for x in lines[:3] if x.startswith("#"))
    first = text.split(". ")[0].split(" (")[0].rstrip(".:")
    return f"{role:<8}  " + (first if len(first) <= 100 else first[:97] + "...")


def add_arguments(parser) -> None:
    """Arguments of ``noisyfr configs``."""
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="a shipped config or notebook: print it, or copy it to --out "
                             "(without NAME: list them, one line each)")
    parser.add_argument("--out", metavar="FILE", help="copy NAME to FILE (a new file) to edit it")


def run(args) -> int:
    """List the shipped configs and notebooks, print one, or copy one out."""
    from noisyfr import __version__
    from noisyfr.io import atomic_write
    from noisyfr.outputs import check_output

    if args.name is None:
        if args.out:
            raise NoisyFRError("--out: name the config or notebook to copy (noisyfr configs NAME --out FILE)")
        print(f"# noisyfr {__version__}: shipped configs and notebooks in {experiments_root()}")
        for kind in SHIPPED:
            for name, path in shipped(kind).items():
                print(f"{name:<22}  {describe(kind, path)}")
        return 0
    _, src = find(args.name)
    if args.out is None:
        print(src.read_text(encoding="utf-8"), end="")
        return 0
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise NoisyFRError(f"--out {args.out}: exists; choose a new file (a copy never replaces a file)")
    check_output(out, [src], kind="file")
    data = src.read_bytes()
    with atomic_write(out) as fh:
        fh.write(data)
    print(f"{args.out}: a copy of the shipped {src.name}")
    return 0
