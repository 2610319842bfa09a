"""Noise scores, ``noisyfr clean`` and its manifests: scores against a pandas re-derivation from
the long angle table, the controls (the truth itself scores precision and recall 1; a random
score's precision is the noise rate), the cleaned manifest read back by ``noisyfr train``, bad
input, and a contact sheet on real faces."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noisyfr.analysis.load import load_run, long_angles, scan_run
from noisyfr.cleaning import scores
from noisyfr.cli import main
from noisyfr.train import load_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "synthetic:ids=6,per_id=12,size=32,seed=1"   # 72 samples


def _cfg(out: Path, data: dict | None = None, **over) -> dict:
    cfg = {"data": data or {"train": TINY, "image_size": 32, "noise": {"closed": 0.3, "seed": 0}},
           "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.5},
           "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
           "optim": {"epochs": 3, "batch_size": 8, "lr": 0.05},
           "seed": 2, "device": "cpu", "output_dir": str(out)}
    return load_config(cfg, list(over.items()))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    train(_cfg(out))
    return out


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_scores_match_a_pandas_rederivation(run_dir):
    run = scan_run(run_dir)
    epoch, rule = scores.choose_epoch(run, "last")
    assert (epoch, rule) == (3, "last")
    got = scores.run_scores(run, epoch).set_index("sample_index")
    a = long_angles([load_run(run_dir)])
    last = a[a["epoch"] == epoch].set_index("sample_index")
    assert len(got) == len(last) == 72
    np.testing.assert_allclose(got["theta"], np.degrees(last["theta_y"].astype(float)), rtol=1e-6)
    np.testing.assert_allclose(got["margin"], np.degrees(last["theta_y"].astype(float) - last["theta_nearest"]),
                               rtol=1e-5, atol=1e-4)
    aum = np.degrees(a["theta_y"].astype(float) - a["theta_nearest"].astype(float)).groupby(a["sample_index"]).mean()
    np.testing.assert_allclose(got["aum"], aum.loc[got.index], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got["subcentre"], np.degrees(last["theta_dominant"].astype(float)), rtol=1e-6)
    np.testing.assert_allclose(got["weight"], last["weight"], rtol=1e-6)
    assert (got["is_noisy"] == last["is_noisy"]).all()
    # the held-out rule picks the epoch of the best held-out accuracy, never by the noise labels
    assert scores.choose_epoch(run, "heldout")[1] in ("heldout", "last")


def test_controls_truth_is_perfect_and_random_scores_the_noise_rate():
    rng = np.random.default_rng(0)
    n = 20000
    noise = np.where(rng.random(n) < 0.3, "closed", "clean")
    label = rng.integers(0, 50, n)
    orig = np.where(noise == "closed", (label + 1) % 50, label)
    table = pd.DataFrame({"sample_index": np.arange(n), "label": label, "orig_label": orig, "noise": noise,
                          "is_noisy": noise != "clean", "truth": (noise != "clean").astype(float),
                          "random": rng.random(n)})
    rate = float((noise != "clean").mean())
    flags, rule = scores.flag(table, "truth", fraction=rate)
    t = scores.truth_table(table, flags).set_index("noise")
    assert t.loc["all", "precision"] == 1.0 and t.loc["all", "recall"] == 1.0
    assert t.loc["all", "noise_left"] == 0.0 and t.loc["all", "clean_lost"] == 0.0
    flags, _ = scores.flag(table, "random", fraction=0.5)
    t = scores.truth_table(table, flags).set_index("noise")
    sd = np.sqrt(rate * (1 - rate) / flags.sum())
    assert abs(t.loc["all", "precision"] - rate) < 4 * sd
    assert abs(t.loc["all", "recall"] - 0.5) < 0.03


def test_clean_writes_a_manifest_train_reads_and_never_touches_the_run(run_dir, tmp_path, capsys):
    before = _snapshot(run_dir)
    out = tmp_path / "clean.parquet"
    assert main(["clean", str(run_dir), "--out", str(out), "--score", "margin", "--max-deg", "0",
                 "--relabel", "--relabel-margin", "5"]) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "precision" in printed
    assert _snapshot(run_dir) == before
    side = json.loads(Path(str(out) + ".json").read_text())
    prov = side["cleaned"]
    assert prov["score"] == "margin" and prov["rule"] == "max_deg" and prov["threshold"] == 0.0
    assert prov["epoch"] == 3 and prov["run"] == str(run_dir.resolve())
    man = pd.read_parquet(out)
    sc = pd.read_parquet(tmp_path / "clean.scores.parquet")
    assert len(man) == 72 - int(sc["removed"].sum()) == side["samples"]
    assert (man["index"] == np.arange(len(man))).all()
    relabelled = man[man["relabelled_from"] >= 0]
    assert len(relabelled) == int(sc["relabelled"].sum())
    # a relabelled row's noise type follows its new label
    assert ((relabelled["label"] == relabelled["orig_label"]) == (relabelled["noise"] == "clean")).all()
    all_row = [r for r in prov["truth"] if r["noise"] == "all"][0]
    assert 0 <= all_row["precision"] <= 1 and 0 <= all_row["noise_left"] <= 1
    # train reads it through data.manifest
    again = tmp_path / "retrain"
    result = train(_cfg(again, {"train": TINY, "image_size": 32, "manifest": str(out)}, **{"optim.epochs": 1}))
    assert result is not None
    kept = pd.read_parquet(again / "angles" / "epoch_1.parquet")
    assert kept["sample_index"].max() < len(man)


@pytest.mark.parametrize("argv, words", [
    (["--score", "nope", "--fraction", "0.2"], "unknown score"),
    (["--score", "theta", "--max-deg", "-10"], "out of range"),
    (["--score", "weight", "--max-deg", "60"], "applies to the angle scores"),
    (["--score", "theta", "--fraction", "0.2", "--max-deg", "60"], "exactly one threshold"),
    (["--score", "random", "--fraction", "0.999"], "keeps no sample of"),
])
def test_bad_input_one_line_exit_2_nothing_written(run_dir, tmp_path, capsys, argv, words):
    before = _snapshot(run_dir)
    out = tmp_path / "c.parquet"
    assert main(["clean", str(run_dir), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists() and not (tmp_path / "c.scores.parquet").exists()
    assert _snapshot(run_dir) == before


def test_out_inside_the_run_and_a_run_without_logs_are_refused(run_dir, tmp_path, capsys):
    assert main(["clean", str(run_dir), "--out", str(run_dir / "c.parquet"), "--score", "theta",
                 "--fraction", "0.1"]) == 2
    assert "inside the input" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "angles").mkdir(parents=True)
    (empty / "config.yaml").write_text("seed: 0\n")
    assert main(["clean", str(empty), "--out", str(tmp_path / "c.parquet"), "--score", "theta",
                 "--fraction", "0.1"]) == 2
    assert "no angle logs" in capsys.readouterr().err


def test_real_faces_without_injected_noise_get_scores_a_proposal_and_a_contact_sheet(lfw_train_dir, tmp_path, capsys):
    out = tmp_path / "lfw_run"
    train(_cfg(out, {"train": str(lfw_train_dir), "image_size": 32}, **{"optim.epochs": 1}))
    sheet = tmp_path / "sheet.html"
    assert main(["clean", str(out), "--out", str(tmp_path / "lfw_clean.parquet"), "--score", "theta",
                 "--fraction", "0.05", "--sheet", str(sheet)]) == 0
    printed = capsys.readouterr().out
    assert "no injected noise" in printed and "precision" not in printed
    html = sheet.read_text()
    assert html.count("<img") >= 8 and "data:image/jpeg;base64," in html
    side = json.loads(Path(str(tmp_path / "lfw_clean.parquet") + ".json").read_text())
    assert side["cleaned"]["truth"] is None and side["cleaned"]["removed"] == round(0.05 * 840)
    assert os.path.getsize(tmp_path / "lfw_clean.scores.parquet") > 0


def test_cleanlab_reference_is_scored_like_the_angle_rules(run_dir, tmp_path, capsys):
    pytest.importorskip("cleanlab") if not os.environ.get("CI") else None
    out = tmp_path / "cl.parquet"
    assert main(["clean", str(run_dir), "--out", str(out), "--score", "cleanlab"]) == 0
    assert "precision" in capsys.readouterr().out
    side = json.loads(Path(str(out) + ".json").read_text())["cleaned"]
    assert side["score"] == "cleanlab" and side["rule"] == "cleanlab" and side["threshold"] is None
    sc = pd.read_parquet(tmp_path / "cl.scores.parquet")
    assert (sc["removed"] == sc["cleanlab_issue"]).all()
    assert sc["cleanlab"].between(0, 1).all()
    # its score ranks like any other: the top fraction
    assert main(["clean", str(run_dir), "--out", str(tmp_path / "cl2.parquet"), "--score", "cleanlab",
                 "--fraction", "0.25"]) == 0
    assert pd.read_parquet(tmp_path / "cl2.scores.parquet")["removed"].sum() == round(0.25 * 72)


def test_report_scores_the_fixed_rules_against_the_truth(run_dir, tmp_path):
    from noisyfr.analysis.report import tables

    t = tables(run_dir, figures=False)
    c = t["cleaning.csv"]
    assert set(c["rule"]) == set(scores.REPORT_RULES)
    # the report's counts equal the per-sample scores' flags at the last epoch
    sc = scores.run_scores(scan_run(run_dir), 3)
    row = c[(c["rule"] == "margin>0") & (c["noise"] == "all")].iloc[0]
    flags = sc["margin"].to_numpy() > 0
    want = scores.truth_table(sc, flags).set_index("noise").loc["all"]
    for col in ("precision", "recall", "noise_left", "clean_lost"):
        assert row[col] == pytest.approx(want[col], nan_ok=True), col
