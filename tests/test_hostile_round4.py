"""Hostile input, round 4: one probe (at least) per class of the review of ``query``, ``clean``,
``loop``, locks, ``.stop`` and ``interrupted.pt``, with real files, links, FIFOs and processes.

Every refusal is exit 2 with one line on stderr, and every file outside the command's output
keeps its bytes (a hash of everything under the world before and after). The classes:

1. a link or FIFO planted at ``DIR/.lock`` (or at a checkpoint) is refused, never followed;
2. an output over an input that lives outside the run (a manifest, a nested run's angles, the
   command's own other outputs) is refused;
3. nothing is written before a refusal, and a failed later output takes back the earlier ones;
4. wrong numbers are refused, not reported (labels that slug to a reserved or shared name, an
   identity left without a training image, an empty last-epoch log, a sheet's titles);
5. ``query`` streams: bounded memory whatever the SQL, --max-rows and --max-bytes;
6. ``clean`` checks the logs as ``analyze`` does;
7. a symlinked trial is refused;
8. a FIFO among the angle logs does not hang analyze, query or clean;
9. no ``noisyfr-duckdb-*`` folder is left in the temp directory;
10. messages say what is wrong;
11. CSV text cells that a spreadsheet would run are escaped; Parquet keeps the raw text.
"""
from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from noisyfr.cli import main

REPO = Path(__file__).resolve().parents[1]
TRIAL = "trials/arcface_closed0.4_seed0"
TRAIN = {"seed": 0, "device": "cpu", "data": {"image_size": 32, "train": "synthetic:ids=4,per_id=4,size=32,seed=1"},
         "model": {"backbone": "small_cnn", "embedding_dim": 8},
         "loss": {"name": "arcface", "s": 16, "m": 0.3},
         "optim": {"lr": 0.05, "batch_size": 8, "epochs": 1}}


# --------------------------------------------------------------------------- helpers
def cli(argv, capsys) -> tuple[int, list[str]]:
    """``noisyfr ARGV`` in this process: exit status and the non-empty stderr lines."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def proc(argv, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``noisyfr ARGV`` in a child process of this checkout (a hang is a TimeoutExpired)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "noisyfr.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=full, stdin=subprocess.DEVNULL)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Everything under ``roots`` (links not followed): kind, and for files mode and content hash."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                if stat.S_ISREG(st.st_mode):
                    out[str(p)] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
                elif stat.S_ISLNK(st.st_mode):
                    out[str(p)] = ("link", os.readlink(p))
                else:
                    out[str(p)] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", st.st_mode)
    return out


def refused(argv, named: str, roots, capsys) -> str:
    """Run in this process; assert exit 2, one stderr line naming ``named``, nothing changed."""
    before = snapshot(*roots)
    code, err = cli(argv, capsys)
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert named in err[0], err[0]
    assert snapshot(*roots) == before
    return err[0]


def refused_proc(argv, named: str, roots, timeout: float = 120, env=None) -> str:
    """Run in a child process; assert exit 2 (no hang), one stderr line naming ``named``, nothing changed."""
    before = snapshot(*roots)
    done = proc(argv, timeout, env)
    err = lines(done.stderr)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(err) == 1, err
    assert named in err[0], err[0]
    assert snapshot(*roots) == before
    return err[0]


def rewrite_log(path: Path, change) -> None:
    """Rewrite an angle log with ``change(df)`` applied, keeping its schema (a NaN stays a NaN,
    None becomes a null)."""
    table = pq.read_table(path)
    df = change(table.to_pandas())
    cols = [pa.array(df[f.name].to_numpy(), type=f.type, from_pandas=False)
            if pd.api.types.is_float_dtype(df[f.name]) else pa.array(df[f.name], type=f.type)
            for f in table.schema]
    pq.write_table(pa.Table.from_arrays(cols, schema=table.schema), path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A synthetic sweep (no training), a secret file outside it, and a copy of one trial whose
    manifest lives outside the run (``run`` + ``outside/M.parquet``)."""
    from fabricate import make_synthetic_sweep

    root = tmp_path_factory.mktemp("round4")
    make_synthetic_sweep(root / "sweep", losses=("arcface",), closed_rates=(0.0, 0.4), seeds=(0,),
                         num_ids=4, per_id=6, epochs=2)
    (root / "secret.txt").write_text("another user's file\n")
    (root / "outside").mkdir()
    src = root / "sweep" / TRIAL
    man = Path(yaml.safe_load((src / "config.yaml").read_text())["data"]["manifest"])
    shutil.copy(man, root / "outside" / "M.parquet")
    shutil.copy(str(man) + ".json", root / "outside" / "M.parquet.json")
    shutil.copytree(src, root / "run")
    cfg = yaml.safe_load((root / "run" / "config.yaml").read_text())
    cfg["data"]["manifest"] = str(root / "outside" / "M.parquet")
    cfg["output_dir"] = str(root / "run")
    (root / "run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture
def run_copy(world, tmp_path) -> Path:
    """A private copy of the world's run (its manifest still outside, in the world)."""
    dst = tmp_path / "run"
    shutil.copytree(world / "run", dst)
    return dst


# --------------------------------------------------------------------------- 1. planted lock links
@pytest.mark.parametrize("dangling", [False, True])
def test_a_lock_link_is_refused_and_its_target_untouched(world, tmp_path, capsys, dangling):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / ("missing.txt" if dangling else "victim.txt")
    if not dangling:
        target.write_text("keep me\n")
    (out / ".lock").symlink_to(target)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN))
    refused(["train", cfg, "--out", out], ".lock", [tmp_path, world], capsys)
    assert target.exists() is (not dangling)


def test_train_never_writes_through_a_planted_checkpoints_link(world, tmp_path, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "last.pt").write_bytes(b"another user's file")
    (out / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN))
    refused(["train", cfg, "--out", out], "checkpoints", [tmp_path, world], capsys)


def test_acquire_never_follows_a_lock_link(tmp_path):
    from noisyfr.errors import NoisyFRError
    from noisyfr.lock import acquire

    target = tmp_path / "victim.txt"
    target.write_text("keep me\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".lock").symlink_to(target)
    with pytest.raises(NoisyFRError, match="symbolic link"):
        acquire(tmp_path / "d", "output_dir")
    assert target.read_text() == "keep me\n"


def test_a_lock_fifo_does_not_hang_train(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".lock")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN))
    msg = refused_proc(["train", cfg, "--out", out], "named pipe", [tmp_path, world], timeout=180)
    assert ".lock" in msg


def test_a_stop_request_replaces_a_planted_link_and_never_writes_its_target(tmp_path):
    from noisyfr.train.rundir import STOP_NAME, clear_stop, request_stop

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STOP_NAME).symlink_to(victim)
    path = request_stop(tmp_path / "run", by="test")
    assert not path.is_symlink() and path.read_text() == "test\n"
    clear_stop(tmp_path / "run")
    assert victim.read_text() == "keep me\n" and not path.exists()


def test_a_planted_checkpoint_link_is_never_a_resume_candidate(tmp_path):
    from noisyfr.train.checkpoint import resume_candidates

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "interrupted.pt").symlink_to(tmp_path / "elsewhere.pt")
    (tmp_path / "elsewhere.pt").write_bytes(b"x")
    os.mkfifo(tmp_path / "checkpoints" / "last.pt")
    assert resume_candidates(tmp_path) == []


# --------------------------------------------------------------------------- 2. outputs over inputs outside the run
def test_query_out_over_the_runs_manifest_outside_it(world, capsys):
    manifest = world / "outside" / "M.parquet"
    refused(["query", world / "run", "SELECT * FROM runs", "--out", manifest], "M.parquet", [world], capsys)


def test_analyze_out_inside_a_nested_runs_angles(world, tmp_path, capsys):
    nested = tmp_path / "top"
    shutil.copytree(world / "sweep", nested / "inner")
    out = nested / "inner" / TRIAL / "angles" / "report"
    refused(["analyze", nested, "--out", out, "--no-figures"], "angles", [tmp_path, world], capsys)


@pytest.mark.parametrize("which", ["sidecar", "scores"])
def test_clean_sheet_over_its_own_other_outputs(world, run_copy, tmp_path, capsys, which):
    out = tmp_path / "c.parquet"
    sheet = tmp_path / ("c.parquet.json" if which == "sidecar" else "c.scores.parquet")
    refused(["clean", run_copy, "--out", out, "--score", "margin", "--fraction", "0.3", "--sheet", sheet],
            str(sheet.name), [tmp_path, world], capsys)


# --------------------------------------------------------------------------- 3. writes before refusing
def test_loop_out_inside_its_dataset_writes_nothing(tmp_path, capsys):
    images = tmp_path / "images"
    assert main(["synth", "--ids", "2", "--per-id", "3", "--size", "32", "--out", str(images)]) == 0
    cfg = _loop_config(images)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    refused(["loop", path, "--out", images / "loopout"], str(images), [tmp_path], capsys)
    assert not (images / "loopout").exists()


def test_a_failed_later_output_takes_back_the_earlier_ones(run_copy, world, tmp_path, capsys, monkeypatch):
    real = pd.DataFrame.to_parquet

    def full_disk_on_scores(self, path, *a, **k):
        if ".scores." in str(path) or str(path).endswith(".scores.parquet"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(self, path, *a, **k)

    out = tmp_path / "c.parquet"
    out.write_bytes(b"an earlier output, kept when this call fails")
    before = out.read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk_on_scores)
    code, err = cli(["clean", run_copy, "--out", out, "--score", "margin", "--fraction", "0.3"], capsys)
    assert code == 2 and len(err) == 1 and "No space left" in err[0], err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet", "run"]


# --------------------------------------------------------------------------- 4. wrong numbers
def _loop_config(train) -> dict:
    return {"seed": 0, "device": "cpu",
            "data": {"train": str(train), "image_size": 32, "holdout": 0.25},
            "model": {"backbone": "small_cnn", "embedding_dim": 8, "width": 0.5},
            "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
            "optim": {"epochs": 1, "batch_size": 8, "lr": 0.05}, "eval": {"every": 0},
            "loop": {"losses": [{"name": "arcface", "s": 16.0, "m": 0.3}],
                     "conditions": {"closed=0.3": {"closed": 0.3}}, "seeds": [0],
                     "rules": [{"score": "margin", "max_deg": 0}]}}


@pytest.mark.parametrize("labels, words", [
    (["oracle "], "reserved"), (["Noisy"], "reserved"), (["CLEAN"], "reserved"), ([".."], "leading dot"),
    (["a b", "a/b"], "same file name"), (["Rule", "rule"], "same file name"), (["x.scores"], ".scores")])
def test_rule_labels_are_checked_after_slugging(tmp_path, capsys, labels, words):
    cfg = _loop_config("synthetic:ids=4,per_id=4,size=32,seed=1")
    cfg["loop"]["rules"] = [{"score": "margin", "max_deg": 10 + i, "label": x} for i, x in enumerate(labels)]
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    msg = refused(["loop", path, "--out", tmp_path / "l", "--dry-run"], "loop key 'loop.rules", [tmp_path], capsys)
    assert words in msg


def test_clean_refuses_to_leave_an_identity_only_held_out_images(run_copy, world, tmp_path, capsys):
    from noisyfr.analysis import load
    from noisyfr.cleaning.cli import heldout_rows

    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["data"]["holdout"] = 0.5
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = load.scan_run(run_copy)
    man = pd.read_parquet(run.manifest_path)
    held = heldout_rows(run, man)
    lonely = (man["label"].to_numpy() == 0) & ~held   # the training images labelled 0
    assert lonely.any() and ((man["label"].to_numpy() == 0) & held).any()
    far = set(man.loc[lonely, "index"].astype(int))
    for f in sorted((run_copy / "angles").glob("epoch_*.parquet")):
        rewrite_log(f, lambda d: d.assign(theta_y=np.where(d["sample_index"].isin(far), 3.0,
                                                           np.minimum(d["theta_y"], 1.5)).astype("float32")))
    msg = refused(["clean", run_copy, "--out", tmp_path / "c.parquet", "--score", "theta", "--max-deg", "150"],
                  "keeps no sample", [tmp_path, world], capsys)
    assert "1 identity" in msg


def test_train_refuses_a_manifest_that_leaves_an_identity_only_held_out(tmp_path, capsys):
    from noisyfr.data import open_index
    from noisyfr.noise.inject import inject
    from noisyfr.noise.spec import NoiseSpec

    spec = "synthetic:ids=4,per_id=4,size=32,seed=1"
    m = inject(open_index(spec), NoiseSpec(), command="test")
    frame = m.frame.copy()
    frame["heldout"] = (frame["orig_label"] == 2) | (frame.index % 4 == 0)
    frame = frame[~((frame["orig_label"] == 2) & ~frame["heldout"])]   # identity 2: held-out images only
    frame = frame.assign(index=np.arange(len(frame)))
    frame["source"] = "index"
    frame["source_index"] = m.frame["index"].to_numpy()[frame.index.to_numpy()]
    frame = frame.reset_index(drop=True)
    from noisyfr.noise.manifest import write_manifest

    path = tmp_path / "m.parquet"
    write_manifest(frame, {**m.meta, "samples": len(frame)}, path)
    cfg = {**TRAIN, "data": {**TRAIN["data"], "train": spec, "manifest": str(path), "holdout": 0.25}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    refused(["train", tmp_path / "t.yaml", "--out", tmp_path / "o"], "identity", [tmp_path], capsys)
    assert not (tmp_path / "o").exists()


def test_an_empty_last_epoch_log_is_refused(world, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(world / "sweep", sweep)
    rewrite_log(sweep / TRIAL / "angles" / "epoch_2.parquet", lambda d: d.iloc[:0])
    refused(["analyze", sweep, "--out", tmp_path / "rep", "--no-figures"], "epoch_2.parquet", [tmp_path, world], capsys)
    refused(["query", sweep, "SELECT 1"], "holds no rows", [tmp_path, world], capsys)


def test_a_sheet_titles_each_class_with_its_true_identity():
    from noisyfr.cleaning.sheet import class_names

    manifest = pd.DataFrame({"index": [0, 1, 2, 3], "identity": ["bob", "ann", "ann", "bob"],
                             "orig_label": [1, 0, 0, 1], "label": [0, 0, 0, 1]})
    # sample 0 is bob's image labelled as ann's class: class 0 is still ann
    assert class_names(manifest).to_dict() == {0: "ann", 1: "bob"}


# --------------------------------------------------------------------------- 5. unbounded memory
def test_query_streams_and_stops_at_max_rows(world, tmp_path):
    before = snapshot(world)
    done = proc(["query", world / "sweep", "SELECT * FROM range(200000000)", "--max-rows", "5"],
                env={"TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r.strip() for r in lines(done.stdout)]
    assert rows[1:6] == ["0", "1", "2", "3", "4"] and rows[-1].startswith("... more than 5 rows"), rows
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mb < 2048, f"peak {peak_mb:.0f} MB for 5 rows (the whole result was 1.6 GB)"
    assert snapshot(world) == before
    assert not list(tmp_path.glob("noisyfr-duckdb-*"))   # 9. no temp folder left


def test_query_out_stops_at_max_bytes_and_writes_nothing(world, tmp_path, capsys):
    out = tmp_path / "big.parquet"
    refused(["query", world / "sweep", "SELECT * FROM range(100000000)", "--out", out, "--max-bytes", "100000"],
            "--max-bytes", [tmp_path, world], capsys)
    assert not out.exists()


# --------------------------------------------------------------------------- 6. clean as careful as analyze
@pytest.mark.parametrize("change, words", [
    (lambda d: d.assign(sample_index=d["sample_index"].where(d.index != 0, 999)), "sample_index 999"),
    (lambda d: d.assign(theta_y=d["theta_y"].where(d.index != 0, np.nan)), "NaN"),
    (lambda d: d.assign(theta_y=pd.Series([None] + list(d["theta_y"].iloc[1:]), dtype=object)), "null")])
def test_clean_checks_the_logs_as_analyze_does(run_copy, world, tmp_path, capsys, change, words):
    for f in sorted((run_copy / "angles").glob("epoch_*.parquet")):
        rewrite_log(f, change)
    a = refused(["analyze", run_copy, "--out", tmp_path / "rep", "--no-figures"], words, [tmp_path, world], capsys)
    c = refused(["clean", run_copy, "--out", tmp_path / "c.parquet", "--score", "margin", "--fraction", "0.3"],
                words, [tmp_path, world], capsys)
    assert a.split(": ", 2)[-1] == c.split(": ", 2)[-1]   # the same answer


# --------------------------------------------------------------------------- 7. symlinked trial
def test_a_symlinked_trial_is_refused(world, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "trials" / "t0").symlink_to(world / "run", target_is_directory=True)
    refused(["query", sweep, "SELECT count(*) FROM angles"], "symbolic link", [tmp_path, world], capsys)


# --------------------------------------------------------------------------- 8. FIFOs
@pytest.mark.parametrize("command", ["analyze", "query", "clean"])
def test_a_fifo_angle_log_does_not_hang(run_copy, world, tmp_path, command):
    os.mkfifo(run_copy / "angles" / "epoch_3.parquet")
    argv = {"analyze": ["analyze", run_copy, "--out", tmp_path / "rep"],
            "query": ["query", run_copy, "SELECT count(*) FROM angles"],
            "clean": ["clean", run_copy, "--out", tmp_path / "c.parquet", "--score", "margin", "--fraction", "0.3"]}
    refused_proc(argv[command], "named pipe", [tmp_path, world], timeout=180)


# --------------------------------------------------------------------------- 10. messages
def test_a_missing_function_is_not_called_a_view(world, capsys):
    msg = refused(["query", world / "sweep", "SELECT no_such_fn(1)"], "no_such_fn", [world], capsys)
    assert "no known function" in msg and "no view" not in msg


def test_export_of_a_raw_pickle_is_one_line(tmp_path):
    import pickle

    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    refused_proc(["export", tmp_path / "raw.pkl", "--out", tmp_path / "m.onnx"], "raw.pkl", [tmp_path])


# --------------------------------------------------------------------------- 11. CSV injection
def test_csv_text_cells_are_escaped_and_parquet_keeps_them(world, tmp_path, capsys):
    sql = "SELECT '=HYPERLINK(1)' AS t, '@x' AS u, 'plain' AS v, -1.5 AS n, run FROM runs"
    assert cli(["query", world / "sweep", sql, "--out", tmp_path / "q.csv"], capsys)[0] == 0
    assert cli(["query", world / "sweep", sql, "--out", tmp_path / "q.parquet"], capsys)[0] == 0
    text = pd.read_csv(tmp_path / "q.csv")
    assert text["t"].iloc[0] == "'=HYPERLINK(1)" and text["u"].iloc[0] == "'@x" and text["v"].iloc[0] == "plain"
    assert text["n"].iloc[0] == -1.5
    raw = pd.read_parquet(tmp_path / "q.parquet")
    assert raw["t"].iloc[0] == "=HYPERLINK(1)" and raw["u"].iloc[0] == "@x"
