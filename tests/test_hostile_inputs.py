"""Hostile inputs against every subcommand: each is refused with exit 2 and one line on stderr
that names the offending input, the inputs' bytes stay as they were, and nothing new is left.

The cases are grouped by the class of the problem (the root causes of the hostile-input review):
an output that is or lies inside an input, an unwritable output folder, a full disk, validation
that comes late, non-finite numbers, resource bombs, a file where a folder is expected, and an
analysis metric that does not exist. Read-only and full filesystems are simulated:

* read-only: the output folder is ``chmod 0555``; running as root (who may write anyway), the
  kernel's answer for an ordinary user is simulated by :func:`os.access` saying "no";
* full disk: the soft ``RLIMIT_FSIZE`` of this process is lowered while the command runs (with
  ``SIGXFSZ`` ignored, as the CLI does, the kernel fails the write with EFBIG), or the writer is
  monkeypatched to raise ENOSPC.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import resource
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from noisyfr.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"seed": 0, "device": "cpu",
         "data": {"image_size": 32},
         "model": {"backbone": "small_cnn", "embedding_dim": 8},
         "loss": {"name": "arcface", "s": 16, "m": 0.3},
         "optim": {"lr": 0.05, "batch_size": 8, "epochs": 1},
         "track": {"angles": True}}
PAIRS = "synthetic-pairs:ids=4,per_id=4,pairs=20,size=32,seed=3"


# --------------------------------------------------------------------------- the world
class World:
    """Inputs every case may use (built once): an ImageFolder, its RecordIO pack, a pairs folder,
    training and sweep configs, a trained run with its checkpoint, a sweep directory to analyse."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.pairs = root / "pairs"
        self.rec = root / "rec" / "train.rec"
        self.outliers = root / "outliers"
        self.config = root / "train.yaml"
        self.sweep_config = root / "sweep.yaml"
        self.run = root / "run"
        self.ckpt = self.run / "checkpoints" / "last.pt"
        self.sweep = root / "sweep"

    def image(self) -> Path:
        return sorted(self.data.glob("*/*"))[0]


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run ``noisyfr ARGV`` in this process: exit status and the non-empty stderr lines."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from fabricate import make_synthetic_sweep

    w = World(tmp_path_factory.mktemp("world"))
    for argv in (["synth", "--ids", 4, "--per-id", 4, "--size", 32, "--out", w.data],
                 ["synth", "--ids", 4, "--per-id", 4, "--size", 32, "--pairs", 8, "--out", w.pairs],
                 ["synth", "--ids", 2, "--per-id", 2, "--size", 32, "--seed", 7, "--out", w.outliers],
                 ["pack", w.data, "--out", w.rec.with_suffix("")]):
        assert main([str(a) for a in argv]) == 0
    cfg = {**TRAIN, "data": {**TRAIN["data"], "train": str(w.data)}}
    w.config.write_text(yaml.safe_dump(cfg))
    w.sweep_config.write_text(yaml.safe_dump({**cfg, "grid": {"loss.name": ["arcface", "cosface"]},
                                              "resources": {"cpu": 1}}))
    assert main(["train", str(w.config), "--out", str(w.run)]) == 0
    make_synthetic_sweep(w.sweep, losses=("arcface",), closed_rates=(0.0, 0.4), seeds=(0,),
                         num_ids=4, per_id=6, epochs=2)
    import matplotlib.font_manager  # noqa: F401 - its cache is built now, not under a file-size limit
    return w


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Everything under ``roots``: kind, mode and (files) content hash and mtime."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                if stat.S_ISREG(st.st_mode):
                    out[str(p)] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest(),
                                   st.st_mtime_ns)
                else:
                    out[str(p)] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", st.st_mode)
    return out


def expand(argv: list, world: World, tmp_path: Path) -> list:
    """``argv`` with ``{data}``, ``{run}``, ``{ckpt}``, ``{config}``, ``{sweep_config}`` (the
    world's inputs), ``{sweep_inf}`` (``tmp_path/inf.yaml``) and ``{t}`` (``tmp_path``) filled in."""
    names = {"data": world.data, "run": world.run, "ckpt": world.ckpt, "config": world.config,
             "sweep_config": world.sweep_config, "sweep_inf": tmp_path / "inf.yaml", "t": tmp_path}
    return [a.format(**names) if isinstance(a, str) else a for a in argv]


def refused(argv: list, named: str, world: World, tmp_path: Path, capsys, *,
            context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
            extra_lines: bool = False) -> str:
    """Run the command; assert exit 2, one stderr line naming ``named``, nothing changed."""
    before = snapshot(world.root, tmp_path)
    with context():
        code, lines = cli(argv, capsys)
    after = snapshot(world.root, tmp_path)
    assert code == 2, (code, lines)
    assert lines and not any("Traceback" in line for line in lines), lines
    if not extra_lines:
        assert len(lines) == 1, lines
    line = lines[-1]
    assert "error" in line and str(named) in line, (named, line)
    added = sorted(set(after) - set(before))
    assert not added, f"left behind: {added}"
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed, f"changed or removed: {changed}"
    return line


# --------------------------------------------------------------------------- simulations
@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` cannot be written: mode 0555, and for root :func:`os.access` says so too."""
    folder.mkdir(parents=True, exist_ok=True)
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    real_access = os.access

    def access(path, how, *a, **k):
        if how & os.W_OK and Path(path).resolve().is_relative_to(folder.resolve()):
            return False
        return real_access(path, how, *a, **k)

    try:
        with pytest.MonkeyPatch.context() as mp:
            if os.geteuid() == 0:
                mp.setattr(os, "access", access)
            yield folder
    finally:
        folder.chmod(stat.S_IMODE(mode))


@contextlib.contextmanager
def disk_full_after(limit: int):
    """No file of this process may grow past ``limit`` bytes (soft RLIMIT_FSIZE; EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


@contextlib.contextmanager
def memory_cap(extra: int = 2 << 30):
    """This process may map at most ``extra`` more bytes while the block runs (soft RLIMIT_AS):
    a resource bomb that is not refused fails with MemoryError instead of exhausting the host."""
    with open("/proc/self/status") as fh:
        size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --------------------------------------------------------------------------- 1. output is an input
OUTPUT_IS_INPUT = {
    "inject-over-an-image": lambda w, t: (["inject", w.data, "--closed", 0.2, "--out", w.image()], w.image()),
    "inject-into-the-dataset": lambda w, t: (["inject", w.data, "--closed", 0.2, "--out", w.data / "m.parquet"],
                                             w.data / "m.parquet"),
    "inject-over-the-idx": lambda w, t: (["inject", w.rec, "--closed", 0.2, "--out", w.rec.with_suffix(".idx")],
                                         w.rec.with_suffix(".idx")),
    "inject-into-the-outliers": lambda w, t: (["inject", w.data, "--open", 0.2, "--outliers", w.outliers,
                                               "--out", w.outliers / "m.parquet"], w.outliers / "m.parquet"),
    "pack-into-the-dataset": lambda w, t: (["pack", w.data, "--out", w.data / "packed" / "train"],
                                           w.data / "packed" / "train"),
    "pack-over-its-rec": lambda w, t: (["pack", w.rec, "--out", w.rec.with_suffix("")], w.rec.with_suffix("")),
    "eval-over-the-checkpoint": lambda w, t: (["eval", "--checkpoint", w.ckpt, "--val", PAIRS, "--out", w.ckpt],
                                              w.ckpt),
    "embed-into-the-dataset": lambda w, t: (["embed", w.ckpt, w.data, "--out", w.data / "e.npy"],
                                            w.data / "e.npy"),
    "embed-into-the-pairs-images": lambda w, t: (["embed", w.ckpt, w.pairs / "pairs.txt",
                                                  "--out", w.pairs / "images" / "e.npy"],
                                                 w.pairs / "images" / "e.npy"),
    "train-into-the-dataset": lambda w, t: (["train", w.config, "--out", w.data / "run"], w.data / "run"),
    "train-over-the-config": lambda w, t: (["train", w.config, "--out", w.config], w.config),
    "train-over-the-manifest-folder": lambda w, t: (["train", w.config, f"data.manifest={w.run / 'config.yaml'}",
                                                     "--out", w.root], w.root),
    "sweep-into-the-dataset": lambda w, t: (["sweep", w.sweep_config, "--out", w.data], w.data),
    "analyze-over-its-angles": lambda w, t: (["analyze", w.run, "--out", w.run / "angles"], w.run / "angles"),
    "analyze-over-its-trials": lambda w, t: (["analyze", w.sweep, "--out", w.sweep / "trials"],
                                             w.sweep / "trials"),
}


@pytest.mark.parametrize("case", OUTPUT_IS_INPUT)
def test_output_that_is_or_lies_inside_an_input_is_refused(case, world, tmp_path, capsys):
    argv, named = OUTPUT_IS_INPUT[case](world, tmp_path)
    refused(argv, named, world, tmp_path, capsys)


def test_export_over_its_checkpoint_is_refused(world, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    onnx_named = tmp_path / "model.onnx"
    onnx_named.write_bytes(world.ckpt.read_bytes())  # a checkpoint whose name ends in .onnx
    refused(["export", onnx_named, "--out", onnx_named], onnx_named, world, tmp_path, capsys)


# --------------------------------------------------------------------------- 2. unwritable folder
UNWRITABLE = {
    "inject": lambda w, ro: ["inject", w.data, "--closed", 0.2, "--out", ro / "m.parquet"],
    "pack": lambda w, ro: ["pack", w.data, "--out", ro / "train"],
    "synth": lambda w, ro: ["synth", "--ids", 2, "--per-id", 2, "--size", 32, "--out", ro / "synth"],
    "curves": lambda w, ro: ["curves", "--points", 20, "--out", ro / "curves.png"],
    "analyze": lambda w, ro: ["analyze", w.run, "--no-figures", "--out", ro / "report"],
    "eval": lambda w, ro: ["eval", "--checkpoint", w.ckpt, "--val", PAIRS, "--out", ro / "eval.json"],
    "embed": lambda w, ro: ["embed", w.ckpt, w.data, "--out", ro / "e.npy"],
    "train": lambda w, ro: ["train", w.config, "--out", ro / "run"],
    "sweep": lambda w, ro: ["sweep", w.sweep_config, "--out", ro / "sweep"],
    "demo": lambda w, ro: ["demo", "--out", ro / "demo"],
    "export": lambda w, ro: ["export", w.ckpt, "--out", ro / "model.onnx"],
}


@pytest.mark.parametrize("command", UNWRITABLE)
def test_unwritable_output_folder_is_one_line(command, world, tmp_path, capsys):
    if command == "export":
        pytest.importorskip("onnxscript")
    ro = tmp_path / "ro"
    ro.mkdir()
    line = refused(UNWRITABLE[command](world, ro), ro, world, tmp_path, capsys, context=lambda: read_only(ro))
    assert "permission denied" in line or "read-only" in line, line


# --------------------------------------------------------------------------- 3. full disk
FULL_DISK = {
    "inject": (["inject", "{data}", "--closed", 0.2, "--out", "{t}/m.parquet"], 200),
    "pack": (["pack", "{data}", "--out", "{t}/packed/train"], 2000),
    "synth": (["synth", "--ids", 3, "--per-id", 3, "--size", 32, "--out", "{t}/synth"], 600),
    "curves": (["curves", "--points", 50, "--out", "{t}/curves.png"], 2000),
    "analyze": (["analyze", "{run}", "--out", "{t}/report"], 3000),
    "eval": (["eval", "--checkpoint", "{ckpt}", "--val", PAIRS, "--out", "{t}/eval.json"], 20),
    "embed": (["embed", "{ckpt}", "{data}", "--out", "{t}/e.npy"], 100),
    "train": (["train", "{config}", "--out", "{t}/run"], 4096),
    "export": (["export", "{ckpt}", "--out", "{t}/model.onnx"], 1000),
}


@pytest.mark.parametrize("command", FULL_DISK)
def test_full_disk_is_one_line_and_leaves_nothing(command, world, tmp_path, capsys):
    if command == "export":
        pytest.importorskip("onnxscript")
    argv, limit = FULL_DISK[command]
    argv = expand(argv, world, tmp_path)
    line = refused(argv, tmp_path, world, tmp_path, capsys, context=lambda: disk_full_after(limit),
                   extra_lines=command == "train")
    assert "cannot write" in line and "File too large" in line, line


def no_space(obj, f, *a, **k):
    """A ``torch.save`` on a full disk."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))


def test_no_space_left_while_training_removes_the_new_run(world, tmp_path, capsys, monkeypatch):
    import noisyfr.train.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    line = refused(["train", world.config, "--out", tmp_path / "run"], tmp_path / "run", world, tmp_path, capsys,
                   extra_lines=True)
    assert "No space left on device" in line


def test_no_space_left_on_resume_keeps_the_last_checkpoint(world, tmp_path, capsys, monkeypatch):
    import shutil

    import noisyfr.train.checkpoint as checkpoint

    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    last = (run / "checkpoints" / "last.pt").read_bytes()

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    code, lines = cli(["train", run / "config.yaml", "optim.epochs=2", "--resume", "--out", run], capsys)
    assert code == 2 and "No space left on device" in lines[-1] and "--resume" in lines[-1], lines
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1


def test_no_space_left_writing_a_manifest_removes_the_temp_file(world, tmp_path, capsys, monkeypatch):
    import noisyfr.noise.manifest as manifest

    def partial_then_no_space(table, path, *a, **k):
        Path(path).write_bytes(b"partial")
        no_space(table, path)

    monkeypatch.setattr(manifest.pq, "write_table", partial_then_no_space)
    line = refused(["inject", world.data, "--closed", 0.2, "--out", tmp_path / "m.parquet"], "m.parquet",
                   world, tmp_path, capsys)
    assert "No space left on device" in line


# --------------------------------------------------------------------------- 4. late validation
# Under a 1-byte file-size limit any write fails with "cannot write": an error about the input
# instead shows that validation ran completely before the first byte was written.
def test_train_with_noise_and_a_missing_val_set_writes_no_manifest(world, tmp_path, capsys):
    refused(["train", world.config, "data.noise.closed=0.4", f"data.val=[{tmp_path / 'none.txt'}]",
             "--out", tmp_path / "run"], "none.txt", world, tmp_path, capsys, context=lambda: disk_full_after(1))


def test_train_on_a_folder_with_an_unreadable_image_writes_nothing(world, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world.data, data)
    bad = sorted(data.glob("*/*"))[5]
    bad.write_bytes(b"not an image")
    refused(["train", world.config, f"data.train={data}", "--out", tmp_path / "run"], bad.name, world, tmp_path,
            capsys, context=lambda: disk_full_after(1))


def test_failed_pack_leaves_no_output_folder(world, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world.data, data)
    bad = sorted(data.glob("*/*"))[3]
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    refused(["pack", data, "--out", tmp_path / "packed" / "train"], bad.name, world, tmp_path, capsys,
            context=lambda: disk_full_after(1))


def test_sweep_with_a_missing_val_set_writes_nothing(world, tmp_path, capsys):
    refused(["sweep", world.sweep_config, f"data.val=[{tmp_path / 'none.txt'}]", "--out", tmp_path / "sw"],
            "none.txt", world, tmp_path, capsys, context=lambda: disk_full_after(1))


def test_eval_with_a_missing_val_set_writes_nothing(world, tmp_path, capsys):
    refused(["eval", "--checkpoint", world.ckpt, "--val", tmp_path / "none.txt", "--out", tmp_path / "e.json"],
            "none.txt", world, tmp_path, capsys)


def test_sweep_resume_of_a_folder_without_a_sweep_writes_nothing(world, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a sweep\n")
    refused(["sweep", "--resume", "--out", tmp_path], tmp_path, world, tmp_path, capsys)


def test_train_resume_without_a_checkpoint_writes_nothing(world, tmp_path, capsys):
    refused(["train", world.config, "--resume", "--out", tmp_path / "run"], tmp_path / "run", world, tmp_path,
            capsys)


# --------------------------------------------------------------------------- 5. non-finite numbers
NON_FINITE = {
    "train-lr-nan": (["train", "{config}", "optim.lr=nan", "--print-config"], "optim.lr"),
    "train-momentum-NaN": (["train", "{config}", "optim.momentum=NaN", "--print-config"], "optim.momentum"),
    "train-s-overflow": (["train", "{config}", "loss.s=1e999", "--out", "{t}/run"], "loss.s"),
    "train-yaml-inf": (["train", "{config}", "loss.m=.inf", "--out", "{t}/run"], "loss.m"),
    "sweep-lr-nan": (["sweep", "{sweep_config}", "optim.lr=nan", "--dry-run"], "optim.lr"),
    "sweep-grid-inf": (["sweep", "{sweep_inf}", "--dry-run"], "optim.lr"),
    "inject-closed-nan": (["inject", "{data}", "--closed", "nan", "--out", "{t}/m.parquet"], "--closed"),
    "curves-neg-cos-inf": (["curves", "--neg-cos", "inf", "--out", "{t}/c.png"], "--neg-cos"),
    "analyze-quantile-nan": (["analyze", "{run}", "--quantile", "NaN", "--out", "{t}/r"], "--quantile"),
    "eval-crop-nan": (["eval", "--checkpoint", "{ckpt}", "--val", PAIRS, "--center-crop", "nan",
                       "--out", "{t}/e.json"], "--center-crop"),
    "embed-crop-inf": (["embed", "{ckpt}", "{data}", "--center-crop", "-inf", "--out", "{t}/e.npy"],
                       "--center-crop"),
    "inject-synthetic-nan": (["inject", "synthetic:ids=4,per_id=4,size=nan", "--closed", 0.2,
                              "--out", "{t}/m.parquet"], "size"),
}


@pytest.mark.parametrize("case", NON_FINITE)
def test_non_finite_numbers_are_refused(case, world, tmp_path, capsys):
    argv, named = NON_FINITE[case]
    sweep = yaml.safe_load(world.sweep_config.read_text())
    sweep["grid"]["optim.lr"] = [0.1, float("-inf")]  # written by PyYAML as -.inf
    (tmp_path / "inf.yaml").write_text(yaml.safe_dump(sweep))
    refused(expand(argv, world, tmp_path), named, world, tmp_path, capsys)


@pytest.mark.parametrize("override", ["track.angles_every=0", "track.angles_every=1.5",
                                      "track.angles_fraction=0", "track.angles_fraction=1.5",
                                      "track.angles_fraction=most", "track.angles_fraction=.nan"])
def test_bad_angle_log_settings_are_refused(override, world, tmp_path, capsys):
    refused(["train", world.config, override, "--out", tmp_path / "run"], override.split("=")[0], world,
            tmp_path, capsys)


# --------------------------------------------------------------------------- 6. resource bombs
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_yaml_alias_bomb_is_refused(command, world, tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    base = yaml.safe_load((world.sweep_config if command == "sweep" else world.config).read_text())
    cfg.write_text(yaml.safe_dump(base) + "lols:\n" + "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines()))
    argv = ["train", cfg, "--out", tmp_path / "run"] if command == "train" else \
        ["sweep", cfg, "--out", tmp_path / "sw", "--dry-run"]
    refused(argv, "bomb.yaml", world, tmp_path, capsys, context=memory_cap)


def huge_header_png(path: Path) -> Path:
    """A valid PNG whose header claims 100000 x 100000 pixels (PIL's bomb limit is 178 M)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_image_claiming_huge_size_is_one_line_naming_it(world, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world.data, data)
    bomb = huge_header_png(sorted(data.iterdir())[0] / "zz_bomb.png")
    refused(["embed", world.ckpt, data, "--out", tmp_path / "e.npy"], bomb.name, world, tmp_path, capsys,
            context=memory_cap)


def test_property_claiming_two_billion_classes_is_refused(world, tmp_path, capsys):
    import shutil

    rec = tmp_path / "rec"
    shutil.copytree(world.rec.parent, rec)
    (rec / "property").write_text("2000000000,32,32")
    refused(["inject", rec / "train.rec", "--closed", 0.2, "--out", tmp_path / "m.parquet"], "property",
            world, tmp_path, capsys, context=memory_cap)


def test_curves_points_bomb_is_refused(world, tmp_path, capsys):
    refused(["curves", "--points", "100000000", "--out", tmp_path / "c.png"], "--points", world, tmp_path, capsys,
            context=memory_cap)


# --------------------------------------------------------------------------- 7. file where a folder is expected
FILE_FOR_FOLDER = {
    "train": lambda w, f: ["train", w.config, "--out", f],
    "synth": lambda w, f: ["synth", "--ids", 2, "--per-id", 2, "--size", 32, "--out", f],
    "sweep": lambda w, f: ["sweep", w.sweep_config, "--out", f],
    "analyze": lambda w, f: ["analyze", w.run, "--out", f],
    "pack-parent": lambda w, f: ["pack", w.data, "--out", f / "train"],
    "inject-parent": lambda w, f: ["inject", w.data, "--closed", 0.2, "--out", f / "m.parquet"],
}


@pytest.mark.parametrize("command", FILE_FOR_FOLDER)
def test_a_file_where_a_folder_is_expected(command, world, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("keep me\n")
    refused(FILE_FOR_FOLDER[command](world, f), f, world, tmp_path, capsys)


@pytest.mark.parametrize("command", ["eval", "embed"])
def test_a_folder_where_a_file_is_expected(command, world, tmp_path, capsys):
    d = tmp_path / ("out.npy" if command == "embed" else "out.json")
    d.mkdir()
    argv = ["embed", world.ckpt, world.data, "--out", d] if command == "embed" else \
        ["eval", "--checkpoint", world.ckpt, "--val", PAIRS, "--out", d]
    refused(argv, d, world, tmp_path, capsys)


# --------------------------------------------------------------------------- 9. analysis metric
def test_analyze_metric_must_name_a_column(world, tmp_path, capsys):
    for src in (world.sweep, world.run):
        refused(["analyze", src, "--metric", "NOSUCHCOLUMN", "--out", tmp_path / "r"], "NOSUCHCOLUMN",
                world, tmp_path, capsys)


# --------------------------------------------------------------------------- 11. fingerprint
def test_manifest_for_other_synthetic_pixels_is_refused(world, tmp_path, capsys):
    manifest = tmp_path / "m.parquet"
    assert main(["inject", "synthetic:ids=4,per_id=4,size=32,seed=1", "--closed", "0.2", "--seed", "0",
                 "--out", str(manifest)]) == 0
    refused(["train", world.config, "data.train=synthetic:ids=4,per_id=4,size=32,seed=0",
             f"data.manifest={manifest}", "--out", tmp_path / "run"], "m.parquet", world, tmp_path, capsys)


def test_manifest_for_other_image_bytes_is_refused(world, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world.data, data)
    manifest = tmp_path / "m.parquet"
    assert main(["inject", str(data), "--closed", "0.2", "--out", str(manifest)]) == 0
    for img in sorted(data.glob("*/*")):  # same names, same labels, other pixels
        arr = np.asarray(Image.open(img).convert("RGB"))
        Image.fromarray(255 - arr).save(img, format="JPEG")
    refused(["train", world.config, f"data.train={data}", f"data.manifest={manifest}",
             "--out", tmp_path / "run"], "m.parquet", world, tmp_path, capsys)


# --------------------------------------------------------------------------- 10. umask
@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_follow_the_umask(mask, world, tmp_path, capsys):
    old = os.umask(mask)
    try:
        for argv in (["inject", world.data, "--closed", 0.2, "--out", tmp_path / "m.parquet"],
                     ["synth", "--ids", 2, "--per-id", 2, "--size", 32, "--out", tmp_path / "s"],
                     ["train", world.config, "--out", tmp_path / "run"]):
            assert main([str(a) for a in argv]) == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    folders = [tmp_path / "s", *(p for p in tmp_path.rglob("*") if p.is_dir())]
    assert len(files) > 10 and len(folders) > 5
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~mask}
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o777 & ~mask}
