"""``noisyfr inject`` / ``inject_to`` on real faces (ORL PGM, LFW JPEG): every noise type,
exact counts, stratification, determinism, bad input."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import exit_status, inject_file

from noisyfr.cli import main
from noisyfr.data import open_index
from noisyfr.errors import NoisyFRError
from noisyfr.noise import read_manifest


def _per_identity(df, mask):
    return np.bincount(df["orig_label"].to_numpy()[mask], minlength=40)


def test_closed_symmetric_counts_stratified_and_labels(orl, tmp_path):
    df, meta = inject_file(orl, tmp_path / "m.parquet", closed=0.3, seed=1)
    assert len(df) == len(orl) == 400
    closed = (df["noise"] == "closed").to_numpy()
    assert closed.sum() == round(0.3 * 400) == meta["counts"]["closed"]
    assert np.all(_per_identity(df, closed) == 3)  # 10 images per identity -> exactly 3 each
    assert np.all(df["label"][closed] != df["orig_label"][closed])
    clean = ~closed
    assert np.array_equal(df["orig_label"].to_numpy(), np.asarray(orl.labels))
    assert np.all(df["label"][clean] == df["orig_label"][clean])
    assert df["path"].tolist() == list(orl.paths)
    assert df["identity"].tolist() == [orl.identities[k] for k in orl.labels]
    assert meta["rates"]["closed"] == pytest.approx(0.3)
    assert meta["num_classes"] == 40 and meta["seed"] == 1
    # many different targets: symmetric is not a fixed partner
    assert df["label"][closed].nunique() > 20


def test_pairwise_uses_one_partner_per_identity(orl, tmp_path):
    df, _ = inject_file(orl, tmp_path / "m.parquet", closed=0.4, closed_mode="pairwise", seed=2)
    closed = df[df["noise"] == "closed"]
    partner = closed.groupby("orig_label")["label"].nunique()
    assert len(partner) == 40 and (partner == 1).all()
    mapping = closed.groupby("orig_label")["label"].first()
    assert (mapping.index != mapping.to_numpy()).all()
    assert sorted(mapping.tolist()) == list(range(40))  # a permutation: each is someone's partner


def test_nearest_from_images_finds_a_duplicated_identity(orl_dir, tmp_path):
    # s1copy holds the same images as s1 -> they are each other's nearest identity
    root = tmp_path / "faces"
    for name, src in [("s1", "s1"), ("s1copy", "s1"), ("s2", "s2"), ("s3", "s3"), ("s4", "s4")]:
        shutil.copytree(orl_dir / src, root / name)
    index = open_index(root)
    df, meta = inject_file(index, tmp_path / "m.parquet", closed=0.5, closed_mode="nearest", seed=0)
    names = index.identities
    closed = df[df["noise"] == "closed"]
    for a, b in [("s1", "s1copy"), ("s1copy", "s1")]:
        flips = closed[closed["identity"] == a]["label"]
        assert len(flips) == 5 and (flips == names.index(b)).all()
    assert meta["nearest"]["features"] == "mean_images"


def test_nearest_from_embeddings(orl, tmp_path):
    # identity i's embedding is closest to identity (i ^ 1): pairs (0,1), (2,3), ...
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 32))
    ident = np.repeat(base, 2, axis=0) + 0.01 * rng.normal(size=(40, 32))
    np.save(tmp_path / "e.npy", ident)
    df, meta = inject_file(orl, tmp_path / "m.parquet", closed=0.2, closed_mode="nearest",
                            embeddings=tmp_path / "e.npy", seed=0)
    closed = df[df["noise"] == "closed"]
    assert np.array_equal(closed["label"].to_numpy(), closed["orig_label"].to_numpy() ^ 1)
    # per-sample embeddings give the same partners
    per_sample = ident[np.asarray(orl.labels)] + 0.001 * rng.normal(size=(400, 32))
    df2, _ = inject_file(orl, tmp_path / "m2.parquet", closed=0.2, closed_mode="nearest",
                          embeddings=per_sample, seed=0)
    assert df2["label"].equals(df["label"])
    with pytest.raises(NoisyFRError, match="rows"):
        inject_file(orl, tmp_path / "m3.parquet", closed=0.2, closed_mode="nearest",
                     embeddings=np.zeros((7, 3)), seed=0)
    assert not (tmp_path / "m3.parquet").exists()


def test_open_set_from_outlier_folder(orl, lfw_train_dir, lfw, tmp_path):
    df, meta = inject_file(orl, tmp_path / "m.parquet", open=0.1, outliers=lfw_train_dir, seed=3)
    assert len(df) == 400  # size unchanged
    op = df[df["noise"] == "open"]
    assert len(op) == 40 and meta["counts"]["open"] == 40
    assert np.all(np.bincount(op["label"], minlength=40) == 1)  # stratified: one per identity
    assert (op["orig_label"] == -1).all() and (op["source"] == "outliers").all()
    assert op["source_index"].is_unique  # pool of 840 > 40: drawn without replacement
    for _, row in op.iterrows():
        k = row["source_index"]
        assert row["path"] == lfw.paths[k] and row["identity"] == lfw.identities[lfw.labels[k]]
        assert (Path(lfw_train_dir) / row["path"]).is_file()
    assert meta["outliers"]["root"] == str(Path(lfw_train_dir).resolve())
    assert meta["outliers"]["fingerprint"]["samples"] == len(lfw)


def test_open_set_holdout_renumbers_labels(lfw, tmp_path):
    df, meta = inject_file(lfw, tmp_path / "m.parquet", open=0.2, holdout_ids=4, seed=5)
    held = set(meta["holdout"]["identities"])
    assert len(held) == 4 and meta["num_classes"] == 80 == meta["num_identities"]
    assert len(df) == len(lfw) - 40  # in-set samples only
    assert sorted(df["label"].unique()) == list(range(80))  # no empty class
    clean = df[df["noise"] == "clean"]
    assert not set(clean["identity"]) & held
    # the renumbering in the sidecar maps new labels back to the index's labels
    label_map = np.array(meta["label_map"])
    names = np.array(lfw.identities)
    assert (names[label_map[clean["label"]]] == clean["identity"].to_numpy()).all()
    op = df[df["noise"] == "open"]
    assert len(op) == round(0.2 * 800)
    assert set(op["identity"]) <= held and (op["source"] == "index").all()
    assert len(set(op["source_index"])) == 40  # 160 draws from a pool of 40: all of it used
    assert meta["classes"] == [n for n in lfw.identities if n not in held]


def test_split_and_merge(orl, tmp_path):
    df, meta = inject_file(orl, tmp_path / "m.parquet", split=3, merge=2, seed=4)
    assert meta["num_classes"] == 43
    sp = df[df["noise"] == "split"]
    assert len(sp) == 15 and meta["counts"]["split"] == 15  # floor(10 / 2) moved per identity
    assert sorted(sp["label"].unique()) == [40, 41, 42]
    for info in meta["split"]:
        rows = df[df["orig_label"] == info["label"]]
        assert (rows["label"] == info["new_label"]).sum() == 5
        assert (rows["label"] == info["label"]).sum() == 5
    mg = df[df["noise"] == "merge"]
    assert len(mg) == 20
    for info in meta["merge"]:
        rows = df[df["orig_label"] == info["merged_label"]]
        assert (rows["label"] == info["label"]).all() and (rows["noise"] == "merge").all()
    assert not set(meta["merge"][0].values()) & {None}
    merged_away = {m["merged_label"] for m in meta["merge"]}
    assert not merged_away & set(df["label"])


def test_mixed_noise_never_overlaps_and_counts(lfw, tmp_path):
    df, meta = inject_file(lfw, tmp_path / "m.parquet", closed=0.3, open=0.1, holdout_ids=2,
                            split=2, merge=1, seed=6)
    m = len(df)
    assert m == len(lfw) - 20
    counts = df["noise"].value_counts()
    assert counts["closed"] == round(0.3 * m) and counts["open"] == round(0.1 * m)
    assert counts["split"] == 10 and counts["merge"] == 10
    assert counts.sum() == m  # one noise type per row
    assert meta["counts"] == {k: int(counts.get(k, 0)) for k in ["clean", "closed", "open", "split", "merge"]}
    for k in ("closed", "open"):
        assert meta["rates"][k] == pytest.approx(counts[k] / m)
    # stratification (docs/noise.md): identity i gets floor(q_i) or floor(q_i) + 1 with
    # q_i = rate * M * e_i / sum(e), e_i = its samples still eligible for that step
    noise = df["noise"].to_numpy()
    true = np.where(noise == "open", df["label"], df["orig_label"])  # open rows keep the replaced label
    c = meta["num_identities"]
    for step, eligible in [("open", np.isin(noise, ["clean", "open", "closed"])),
                           ("closed", np.isin(noise, ["clean", "closed"]))]:
        e = np.bincount(true[eligible], minlength=c)
        q = meta["requested"][step] * m * e / e.sum()
        got = np.bincount(true[noise == step], minlength=c)
        assert np.all((got == np.floor(q + 1e-9)) | (got == np.floor(q + 1e-9) + 1)), step


@pytest.mark.parametrize("data", ["orl_dir", "lfw_train_dir"])
def test_same_seed_same_bytes_other_seed_differs(request, data, tmp_path):
    root = request.getfixturevalue(data)
    outs = []
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        for ext in ("parquet", "csv"):
            argv = ["inject", str(root), "--out", str(tmp_path / f"{name}.{ext}"), "--closed", "0.2",
                    "--open", "0.1", "--holdout-ids", "3", "--split", "1", "--merge", "1", "--seed", str(seed)]
            assert main(argv) == 0
        outs.append(name)
    for ext in ("parquet", "csv"):
        a, b, c = (Path(tmp_path / f"{n}.{ext}").read_bytes() for n in outs)
        assert a == b and a != c
    a_meta = json.loads((tmp_path / "a.parquet.json").read_text())
    b_meta = json.loads((tmp_path / "b.parquet.json").read_text())
    assert {k: v for k, v in a_meta.items() if k != "command"} == \
        {k: v for k, v in b_meta.items() if k != "command"}
    # CSV and Parquet hold the same table
    pa_df, _ = read_manifest(tmp_path / "a.parquet")
    csv_df, _ = read_manifest(tmp_path / "a.csv")
    pd.testing.assert_frame_equal(pa_df.astype(str), csv_df.astype(str))


def test_cli_summary_and_sidecar(orl_dir, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert main(["inject", str(orl_dir), "--out", str(out), "--closed", "0.25", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "closed/symmetric 100 (25.00%)" in text and "400 samples" in text
    meta = json.loads((tmp_path / "m.parquet.json").read_text())
    from noisyfr import __version__
    assert meta["version"] == __version__
    assert meta["command"].startswith("noisyfr inject ") and "--seed 3" in meta["command"]
    assert meta["fingerprint"]["samples"] == 400 and len(meta["fingerprint"]["sha256"]) == 64
    assert meta["requested"]["closed"] == 0.25


BAD = [
    (["--closed", "-0.1"], "--closed"),
    (["--closed", "1.5"], "--closed"),
    (["--open", "nan", "--holdout-ids", "2"], "--open"),
    (["--closed", "0.7", "--open", "0.4", "--holdout-ids", "2"], "sum"),
    (["--open", "0.1"], "outlier source"),
    (["--holdout-ids", "39"], "--holdout-ids"),
    (["--split", "41"], "--split"),
    (["--merge", "21"], "--merge"),
]


@pytest.mark.parametrize("extra,needle", BAD)
def test_bad_options_exit_2_no_output(orl_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "m.parquet"
    assert exit_status(["inject", str(orl_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("noisyfr inject: error:") and needle in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_outliers_sharing_identities_refused(orl_dir, tmp_path, capsys):
    shared = tmp_path / "outl"
    shutil.copytree(orl_dir / "s5", shared / "s5")
    out = tmp_path / "m.parquet"
    assert main(["inject", str(orl_dir), "--out", str(out), "--open", "0.1", "--outliers", str(shared)]) == 2
    err = capsys.readouterr().err
    assert "shares identities" in err and "s5" in err and str(shared) in err
    assert not out.exists() and not Path(str(out) + ".json").exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_folders(orl_dir, tmp_path, capsys, kind):
    folder = tmp_path / "nothing"
    if kind == "empty":
        folder.mkdir()
    out = tmp_path / "m.parquet"
    assert main(["inject", str(folder), "--out", str(out)]) == 2
    assert str(folder) in capsys.readouterr().err
    assert main(["inject", str(orl_dir), "--out", str(out), "--open", "0.1", "--outliers", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "--outliers" in err
    assert not out.exists()


def test_failed_write_leaves_no_partial_files(orl, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def boom(table, where, **kw):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        inject_file(orl, tmp_path / "m.parquet", closed=0.1, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_independent_of_storage_but_of_labels(orl, orl_dir, tmp_path):
    from noisyfr.noise import fingerprint

    assert fingerprint(orl) == fingerprint(open_index(orl_dir))
    root = tmp_path / "faces"
    for k in range(1, 41):
        shutil.copytree(orl_dir / f"s{k}", root / f"s{k}")
    assert fingerprint(open_index(root)) == fingerprint(orl)  # same relative paths and labels
    (root / "s40" / "10.pgm").rename(root / "s39" / "99.pgm")
    assert fingerprint(open_index(root)) != fingerprint(orl)


def test_rate_rounding_matches_round(orl, tmp_path):
    for rate in (0.0125, 0.0375, 0.333):
        df, meta = inject_file(orl, tmp_path / "m.parquet", closed=rate, seed=0)
        assert meta["counts"]["closed"] == round(rate * 400)
        per_id = np.bincount(df["orig_label"][df["noise"] == "closed"], minlength=40)
        assert set(per_id) <= {math.floor(rate * 10), math.floor(rate * 10) + 1}
