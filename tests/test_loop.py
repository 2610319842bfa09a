"""``noisyfr loop`` end to end on a tiny loop (6 identities x 12 images, 2 epochs, 1 loss, 1
condition, 2 seeds, 2 rules): the files, the references (the oracle removes exactly the noisy
samples; the noisy rows), the paired gains in percentage points recomputed from the table, the held-out images
shared by every run of a seed, resume, and bad configs; plus the pieces it rests on (a
manifest's recorded held-out rows, the shared render cache)."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from noisyfr.cli import main
from noisyfr.loop import run as loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "seed": 0, "device": "cpu",
    "data": {"train": "synthetic:ids=6,per_id=12,size=32,seed=1", "image_size": 32, "holdout": 0.25,
             "val": ["synthetic-pairs:ids=6,per_id=4,first_id=1000,pairs=40,size=32,seed=0"]},
    "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.5},
    "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
    "optim": {"epochs": 2, "batch_size": 8, "lr": 0.05},
    "eval": {"every": 0},
    "loop": {"losses": [{"name": "arcface", "s": 16.0, "m": 0.3}],
             "conditions": {"closed=0.3": {"closed": 0.3}},
             "seeds": [0, 1],
             "rules": [{"score": "margin", "max_deg": 0}, {"score": "theta", "fraction": 0.2}]},
}
RULES = ["noisy", "oracle", "margin max_deg=0", "theta fraction=0.2"]


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _run_files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("loop.csv", "loop.md", ".lock")}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    cfg = _write(root / "tiny.yaml", TINY)
    out = root / "out"
    assert main(["loop", str(cfg), "--out", str(out)]) == 0
    return cfg, out


def test_files_and_reference_rows(done):
    _, out = done
    for name in ("loop.csv", "loop.md", "loop.yaml"):
        assert (out / name).is_file()
    t = pd.read_csv(out / "loop.csv")
    assert list(t.columns) == list(loop.COLUMNS)
    assert len(t) == 2 * len(RULES)
    assert sorted(t["rule"].unique()) == sorted(RULES)
    assert sorted(t["seed"].unique()) == [0, 1]
    noisy = t[t["rule"] == "noisy"]
    assert len(noisy) == 2 and (noisy["removed"] == 0).all() and (noisy["noise_left"] > 0.2).all()
    assert noisy["heldout_accuracy"].notna().all() and noisy["val_accuracy"].notna().all()
    oracle = t[t["rule"] == "oracle"]
    assert (oracle["precision"] == 1.0).all() and (oracle["recall"] == 1.0).all()
    assert (oracle["noise_left"] == 0.0).all() and (oracle["clean_lost"] == 0.0).all()
    # the oracle removed exactly the noisy samples of the noisy run's training images
    merged = oracle.merge(noisy, on="seed", suffixes=("", "_noisy"))
    assert (merged["removed"] == (merged["noise_left_noisy"] * merged["trained_noisy"]).round()).all()
    assert (merged["trained"] == merged["trained_noisy"] - merged["removed"]).all()
    md = (out / "loop.md").read_text()
    for rule in RULES:
        assert f"| {rule} |" in md
    assert "recovered" in md


def test_gains_are_paired_by_seed_in_percentage_points(done):
    _, out = done
    t = pd.read_csv(out / "loop.csv")
    for acc, short in (("heldout_accuracy", "heldout"), ("val_accuracy", "val")):
        for _seed, g in t.groupby("seed"):
            base = float(g.loc[g["rule"] == "noisy", acc].iloc[0])
            top = float(g.loc[g["rule"] == "oracle", acc].iloc[0])
            for _, r in g.iterrows():
                if np.isnan(r[acc]):  # a rule that could not clean (it would leave an identity only
                    # held-out images): a row saying why, no run and no gain
                    assert r["status"].startswith("clean failed") and np.isnan(r[f"gain_{short}_pp"])
                    continue
                assert r[f"gain_{short}_pp"] == pytest.approx(100 * (r[acc] - base))
                assert r[f"to_oracle_{short}_pp"] == pytest.approx(100 * (top - r[acc]))
    # loop.md: the pp table per rule and accuracy, a recovered fraction only where identified
    from noisyfr.analysis import recovery

    tab = recovery.recovery_table(t)
    assert len(tab) == 2 * 2                   # 2 rules x 2 accuracies
    md = (out / "loop.md").read_text()
    assert "What each rule recovers, in percentage points" in md
    for _, r in tab.iterrows():
        line = next(ln for ln in md.splitlines()
                    if ln.startswith(f"| {r['loss']} | {r['condition']} | {r['rule']} | {r['accuracy']} |"))
        assert (recovery.NOT_IDENTIFIED in line) == (not r["identified"])


def test_every_run_of_a_seed_holds_out_the_noisy_runs_images(done):
    from noisyfr.noise.manifest import read_manifest
    from noisyfr.train.data import split_identities

    _, out = done
    t = pd.read_csv(out / "loop.csv")
    for seed in (0, 1):
        noisy_dir = out / t[(t["seed"] == seed) & (t["rule"] == "noisy")]["run"].iloc[0]
        man, _ = read_manifest(noisy_dir / "manifest.parquet")
        _, held = split_identities(man["orig_label"].to_numpy(), None, 0.25, seed)
        for _, r in t[(t["seed"] == seed) & (t["status"] == "ok") & (t["rule"] != "noisy")].iterrows():
            run_dir = out / r["run"]
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            cleaned, _ = read_manifest(cfg["data"]["manifest"])
            assert set(cleaned.loc[cleaned["heldout"], "source_index"]) == set(held)
            trained = pd.read_parquet(run_dir / "angles" / "epoch_1.parquet")["sample_index"].to_numpy()
            src = cleaned["source_index"].to_numpy()[trained]
            assert not set(src) & set(held)
            assert len(trained) == r["trained"]
            if r["rule"] == "oracle":   # trained on the truly clean samples only
                assert (cleaned["noise"].to_numpy()[trained] == "clean").all()


def test_resume_skips_finished_runs_and_reruns_a_missing_one(done, capsys):
    import shutil

    cfg, out = done
    before = _run_files(out)
    capsys.readouterr()
    assert main(["loop", "--resume", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "loop: 0 training run(s)" in err
    assert _run_files(out) == before
    # a retrained run that is gone is trained again, and only it
    t = pd.read_csv(out / "loop.csv")
    gone = out / t[(t["seed"] == 1) & (t["rule"] == "oracle")]["run"].iloc[0]
    shutil.rmtree(gone)
    assert main(["loop", str(cfg), "--out", str(out), "--resume"]) == 0
    assert "loop: 1 training run(s)" in capsys.readouterr().err
    again = pd.read_csv(out / "loop.csv")
    pd.testing.assert_frame_equal(again, t)   # same seed, same bytes: the same numbers
    # without --resume a used loop directory is refused
    assert main(["loop", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err


def _bad(**change):
    cfg = copy.deepcopy(TINY)
    for key, value in change.items():
        *path, last = key.split(".")
        d = cfg
        for k in path:
            d = d[k]
        if value is None:
            d.pop(last)
        else:
            d[last] = value
    return cfg


@pytest.mark.parametrize("cfg, words", [
    (_bad(loop=None), "'loop': missing"),
    (_bad(**{"loop.rules": [{"score": "weight", "max_deg": 60}]}), "applies to the angle scores"),
    (_bad(**{"loop.rules": [{"score": "aum"}]}), "exactly one threshold"),
    (_bad(**{"loop.rules": [{"score": "nope", "fraction": 0.2}]}), "choose from"),
    (_bad(**{"loop.rules": [{"score": "theta", "fraction": 1.5}]}), "fraction"),
    (_bad(**{"loop.rules": [{"score": "theta", "fraction": 0.2, "label": "oracle"}]}), "reserved"),
    (_bad(**{"loop.seeds": [0, 0]}), "twice"),
    (_bad(**{"loop.conditions": {"none": {"closed": 0.0}}}), "injects no noise"),
    (_bad(**{"loop.conditions": {"c": {"closed": 2.0}}}), "loop.conditions.c.closed"),
    (_bad(**{"loop.threads": 0}), "loop.threads"),
    (_bad(**{"loop.colour": 1}), "unknown key"),
    (_bad(**{"optim.epochs": -1}), "optim.epochs"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, cfg, words):
    path = _write(tmp_path / "bad.yaml", cfg)
    assert main(["loop", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("noisyfr loop: error:") and words in err, err
    assert not (tmp_path / "out").exists()


def test_the_shipped_configs_validate(capsys):
    repo = Path(__file__).resolve().parents[1]
    assert main(["loop", str(repo / "experiments/configs/clean_loop.yaml"), "--dry-run"]) == 0
    assert "90 training run(s)" in capsys.readouterr().out
    plan = loop.load_plan(repo / "experiments/configs/clean_loop_casia.yaml")
    assert plan.base["model"]["backbone"] == "iresnet50"


@pytest.mark.parametrize("column", [[True, False, True, False], [1, 0, 1, 0], ["true", "False", "TRUE", "false"]])
def test_a_recorded_heldout_column_fixes_the_split(column):
    from noisyfr.errors import NoisyFRError
    from noisyfr.train.data import split_rows

    man = pd.DataFrame({"heldout": column, "label": [0, 0, 1, 1]})
    train, held = split_rows(man, [0, 0, 1, 1], None, 0.25, seed=3)
    assert list(held) == [0, 2] and list(train) == [1, 3]
    # without held-out images the column is not used
    train, held = split_rows(man, [0, 0, 1, 1], None, 0.0, seed=3)
    assert list(train) == [0, 1, 2, 3] and len(held) == 0
    # an identity whose every image is held out would have no training image: refused
    with pytest.raises(NoisyFRError, match="identity 'b'"):
        split_rows(man.iloc[:3], [0, 0, 1], None, 0.25, seed=3, names=["a", "b"])


def test_a_bad_heldout_column_is_one_line():
    from noisyfr.errors import NoisyFRError
    from noisyfr.train.data import split_rows

    with pytest.raises(NoisyFRError, match="'heldout'"):
        split_rows(pd.DataFrame({"heldout": ["yes", "no"]}), [0, 1], None, 0.25, seed=0)


def test_shared_renders_give_the_same_images_rendered_once():
    from noisyfr.data import open_index
    from noisyfr.data.synthetic import shared_renders

    spec = "synthetic:ids=3,per_id=4,size=32,seed=5"
    alone = [open_index(spec).load_image(i) for i in range(12)]
    with shared_renders():
        a, b = open_index(spec), open_index(spec)
        first = [a.load_image(i) for i in range(12)]
        first[0].zero_()    # a caller's tensor is its own: the shared copy is untouched
        second = [b.load_image(i) for i in range(12)]
    assert all((x == y).all() for x, y in zip(alone, second))
    assert (second[0] == alone[0]).all() and alone[0].any()


def test_a_signal_between_stages_stops_the_loop_before_the_next(tmp_path):
    import signal

    from noisyfr.errors import Stopped

    before = signal.getsignal(signal.SIGTERM)
    stop = loop._stop_between_stages(tmp_path)
    try:
        stop()                                # nothing asked: goes on
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopped) as exc:
            stop()
        assert exc.value.code == 143 and "--resume" in str(exc.value)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before
