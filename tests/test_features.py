"""``noisyfr features``: embeddings of datasets and pairs sets from pretrained models (dlib,
noisyfr checkpoints, ONNX), the cache that makes it resumable, bad input, determinism, and the
frozen dlib model's own verification on real LFW pairs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DLIB_FOLD1, REPO, exit_status

from noisyfr.data.feature_store import read_features, read_meta
from noisyfr.errors import NoisyFRError
from noisyfr.features import extract as ex
from noisyfr.features.models import FALLBACK_BOX, fallback_box, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = {"model": {"backbone": "small_cnn", "embedding_dim": 8},
          "data": {"image_size": 32, "center_crop": 0.75}}
SYNTH = "synthetic:ids=3,per_id=3,size=40,seed=5"


@pytest.fixture(scope="module")
def dlib():
    """The dlib extra: installed by ``make install``; outside CI a test without it is skipped."""
    try:
        import dlib
    except ImportError:
        msg = "dlib missing: pip install 'noisyfr[dlib]' (make install does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return dlib


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    from noisyfr.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("small_cnn", 8, image_size=32).eval()
    path = tmp_path_factory.mktemp("ckpt") / "epoch_1.pt"
    torch.save({"config": CONFIG, "model": model.state_dict(), "epoch": 1}, path)
    return path, model


@pytest.fixture(scope="module")
def few_lfw(tmp_path_factory, lfw_train_dir):
    """An ImageFolder of 3 real LFW identities x 2 images (copied to a temporary folder)."""
    root = tmp_path_factory.mktemp("lfw") / "images"
    for name in sorted(os.listdir(lfw_train_dir))[:3]:
        (root / name).mkdir(parents=True)
        for f in sorted(os.listdir(lfw_train_dir / name))[:2]:
            shutil.copy(lfw_train_dir / name / f, root / name / f)
    return root


def by_hand(model, images, crop=0.75, size=32):
    """Centre crop, resize, [-1, 1], model(x) + model(flip x), unnormalised: the reference."""
    from torchvision.transforms.v2 import functional as F

    xs = []
    for im in images:
        side = int(round(min(im.shape[-2:]) * crop))
        xs.append(F.resize(F.center_crop(im, [side, side]), [size, size], antialias=True))
    x = (torch.stack(xs).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        return (model(x) + model(x.flip(-1))).numpy()


def files_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_features_match_the_model_by_hand_and_repeat_byte_for_byte(small_ckpt, tmp_path):
    from noisyfr.data import open_index

    path, model = small_ckpt
    a, b = tmp_path / "a" / "f.parquet", tmp_path / "b" / "f.parquet"
    for out in (a, b):
        assert exit_status(["features", SYNTH, "--model", str(path), "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert Path(str(a) + ".json").read_bytes() == Path(str(b) + ".json").read_bytes()
    table = read_features(a, expect_dim=8)
    index = open_index(SYNTH)
    want = by_hand(model, [index.load_image(i) for i in range(len(index))])
    np.testing.assert_allclose(table.embeddings, want, atol=1e-5, rtol=0)
    assert table.paths == [str(p) for p in index.paths]
    assert table.labels.tolist() == list(index.labels)
    meta = read_meta(a)
    assert meta["model"]["kind"] == "checkpoint" and meta["model"]["epoch"] == 1
    assert meta["preprocessing"]["center_crop"] == 0.75 and meta["preprocessing"]["resize"] == [32, 32]
    assert meta["misses"] == 0 and not table.misses.any()
    assert files_of(a.parent) == ["f.parquet", "f.parquet.json"]  # the work folder is gone


def test_a_manifest_embeds_its_dataset(small_ckpt, tmp_path):
    path, _ = small_ckpt
    manifest = tmp_path / "m.parquet"
    assert exit_status(["inject", SYNTH, "--out", str(manifest), "--closed", "0.3", "--seed", "1"]) == 0
    assert exit_status(["features", str(manifest), "--model", str(path), "--out", str(tmp_path / "m_f.parquet")]) == 0
    assert exit_status(["features", SYNTH, "--model", str(path), "--out", str(tmp_path / "d_f.parquet")]) == 0
    m, d = read_features(tmp_path / "m_f.parquet"), read_features(tmp_path / "d_f.parquet")
    np.testing.assert_array_equal(m.embeddings, d.embeddings)
    assert m.paths == d.paths and m.meta["fingerprint"] == d.meta["fingerprint"]
    assert m.meta["source"]["kind"] == "manifest" and m.meta["source"]["dataset"] == SYNTH


def test_onnx_features_agree_with_the_checkpoint(small_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    path, _ = small_ckpt
    onnx = tmp_path / "m.onnx"
    assert exit_status(["export", str(path), "--out", str(onnx)]) == 0
    for model, out in ((onnx, "o.parquet"), (path, "c.parquet")):
        assert exit_status(["features", SYNTH, "--model", str(model), "--out", str(tmp_path / out),
                            "--center-crop", "0.75"]) == 0
    o, c = read_features(tmp_path / "o.parquet"), read_features(tmp_path / "c.parquet")
    np.testing.assert_allclose(o.embeddings, c.embeddings, atol=1e-4, rtol=0)
    assert o.meta["model"]["kind"] == "onnx" and o.meta["preprocessing"]["resize"] == [32, 32]


# ----------------------------------------------------------------------------- cache and resume
class Counting:
    """A model wrapper that counts its calls and can fail on a given call (an interruption)."""

    def __init__(self, model, fail_on: int | None = None):
        self.model, self.calls, self.fail_on = model, 0, fail_on
        self.info, self.preprocessing, self.dim = model.info, model.preprocessing, model.dim

    def embed(self, images):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.model.embed(images)


def test_an_interrupted_run_resumes_from_its_finished_chunks(small_ckpt, tmp_path, monkeypatch):
    path, _ = small_ckpt
    monkeypatch.setattr(ex, "CHUNK", 2)  # 9 images: 5 chunks
    source = ex.open_source(SYNTH)
    whole = Counting(load_model(str(path)))
    ex.extract(source, whole, tmp_path / "whole.parquet")
    assert whole.calls == 5
    out = tmp_path / "f.parquet"
    first = Counting(load_model(str(path)), fail_on=4)
    with pytest.raises(KeyboardInterrupt):
        ex.extract(source, first, out)
    assert not out.exists() and len(list(ex.work_folder(out).iterdir())) == 3
    second = Counting(load_model(str(path)))
    table, counts = ex.extract(source, second, out)
    assert second.calls == 2 and counts == {"computed": 2, "reused": 3}
    assert out.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert not ex.work_folder(out).exists()
    third = Counting(load_model(str(path)))
    table, counts = ex.extract(source, third, out)
    assert table is None and third.calls == 0 and counts["up_to_date"]


def test_another_model_recomputes(small_ckpt, tmp_path, monkeypatch):
    path, _ = small_ckpt
    source = ex.open_source(SYNTH)
    out = tmp_path / "f.parquet"
    ex.extract(source, load_model(str(path)), out)
    flipless = Counting(load_model(str(path), flip=False))
    table, counts = ex.extract(source, flipless, out)
    assert flipless.calls == 1 and counts["computed"] == 1
    assert table.meta["preprocessing"]["flip_sum"] is False


# ----------------------------------------------------------------------------- bad input
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_out_inside_the_input_is_refused_before_any_work(small_ckpt, few_lfw, capsys):
    path, _ = small_ckpt
    before = sorted(str(p) for p in few_lfw.rglob("*"))
    out = few_lfw / "feats.parquet"
    assert exit_status(["features", str(few_lfw), "--model", str(path), "--out", str(out)]) == 2
    assert "inside the input" in one_line_error(capsys)
    assert sorted(str(p) for p in few_lfw.rglob("*")) == before


def test_an_undecodable_image_is_named_and_nothing_is_written(small_ckpt, few_lfw, tmp_path, capsys):
    path, _ = small_ckpt
    root = tmp_path / "data"
    shutil.copytree(few_lfw, root)
    bad = sorted(root.iterdir())[1] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    out = tmp_path / "out" / "f.parquet"
    assert exit_status(["features", str(root), "--model", str(path), "--out", str(out)]) == 2
    line = one_line_error(capsys)
    assert "broken.jpg" in line and "1 of 7 images cannot be decoded" in line and "misses" in line
    assert not out.parent.exists() or files_of(out.parent) == []


def test_nan_or_wrong_sized_embeddings_write_nothing(small_ckpt, tmp_path):
    path, _ = small_ckpt
    source = ex.open_source(SYNTH)
    model = load_model(str(path))

    class Broken(Counting):
        def __init__(self, model, bad):
            super().__init__(model)
            self.bad = bad

        def embed(self, images):
            emb, miss = self.model.embed(images)
            return (np.where(np.arange(len(emb))[:, None] == 2, np.nan, emb), miss) \
                if self.bad == "nan" else (emb[:, :3], miss)

    for bad, words in (("nan", "NaN or infinity"), ("dim", "expected (9, 8)")):
        out = tmp_path / bad / "f.parquet"
        with pytest.raises(NoisyFRError, match=words.replace("(", r"\(").replace(")", r"\)")):
            ex.extract(source, Broken(model, bad), out)
        assert not out.exists() and not ex.work_folder(out).exists()


def test_a_feature_file_of_another_dimension_is_refused(small_ckpt, tmp_path):
    path, _ = small_ckpt
    out = tmp_path / "f.parquet"
    assert exit_status(["features", SYNTH, "--model", str(path), "--out", str(out)]) == 0
    with pytest.raises(NoisyFRError, match="dimension 8, expected 128"):
        read_features(out, expect_dim=128)


def test_a_missing_dlib_extra_is_one_line_naming_the_extra(tmp_path, few_lfw):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "dlib.py").write_text("raise ImportError('No module named dlib (stub)')\n")
    out = tmp_path / "out" / "f.parquet"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "noisyfr.cli", "features", str(few_lfw), "--model",
                           "dlib", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'noisyfr[dlib]'" in lines[0]
    assert not out.parent.exists()


# ----------------------------------------------------------------------------- dlib on real faces
def test_fallback_box_is_the_documented_centre_box():
    assert fallback_box(250, 250) == (50, 50, 199, 199)
    assert fallback_box(100, 200) == (20, 40, 79, 159)
    assert FALLBACK_BOX == (0.2, 0.2, 0.8, 0.8)


def dlib_by_hand(dlib, img: np.ndarray) -> np.ndarray:
    """dlib's own pipeline, written out from dlib's API: HOG detect (upsample 1), the detection
    nearest the centre, 5 landmarks, 150-px chip with padding 0.25, descriptor."""
    import importlib.util

    models = Path(list(importlib.util.find_spec("face_recognition_models").submodule_search_locations)[0]) / "models"
    h, w = img.shape[:2]
    dets = list(dlib.get_frontal_face_detector()(img, 1))
    rect = min(dets, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
    shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))(img, rect)
    chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    return np.asarray(rec.compute_face_descriptor(chip), dtype=np.float32)


def test_dlib_features_of_real_faces(dlib, few_lfw, tmp_path):
    out = tmp_path / "f.parquet"
    assert exit_status(["features", str(few_lfw), "--model", "dlib", "--out", str(out)]) == 0
    table = read_features(out, expect_dim=128)
    assert len(table) == 6 and table.meta["model"]["kind"] == "dlib"
    assert table.meta["preprocessing"]["chip"] == {"size": 150, "padding": 0.25, "by": "dlib.get_face_chip"}
    assert table.meta["misses"] == int(table.misses.sum())
    found = [i for i in range(len(table)) if not table.misses[i]]
    assert found, "the detector found no face in 6 LFW images"
    from PIL import Image

    for i in found[:2]:
        with Image.open(few_lfw / table.paths[i]) as im:  # the same decoder (PIL): the same numbers
            pil = np.array(im.convert("RGB"))
        np.testing.assert_allclose(table.embeddings[i], dlib_by_hand(dlib, pil), atol=1e-5)
        # dlib's own JPEG loader (libjpeg, other chroma upsampling) differs by a few grey levels: a small distance
        own = dlib_by_hand(dlib, dlib.load_rgb_image(str(few_lfw / table.paths[i])))
        assert np.linalg.norm(table.embeddings[i] - own) < 0.15
    # the same person is nearer than another person (dlib's own 0.6 rule, on real faces)
    d = np.linalg.norm(table.embeddings[:, None] - table.embeddings[None], axis=2)
    same = table.labels[:, None] == table.labels[None]
    off = ~np.eye(len(table), dtype=bool)
    assert d[same & off].max() < 0.6 < d[~same].min()


def test_dlib_workers_give_the_same_bytes_and_refuse_what_they_cannot_keep(dlib, few_lfw, tmp_path, capsys,
                                                                          monkeypatch, small_ckpt):
    """``--workers 2`` embeds the chunks in two forked processes: the feature file is the same,
    byte for byte, as one process's; a cached chunk is reused, not recomputed. Refused with one
    line and nothing written: with --jitter (dlib's jitter generator is per process) and with a
    torch model (it has its own threads)."""
    import pandas as pd

    monkeypatch.setattr(ex, "CHUNK", 2)  # 3 chunks of the 6 images
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert exit_status(["features", str(few_lfw), "--model", "dlib", "--out", str(one)]) == 0
    assert exit_status(["features", str(few_lfw), "--model", "dlib", "--out", str(two), "--workers", "2"]) == 0
    assert one.read_bytes() == two.read_bytes()
    assert "0 of 3 chunks reused" in capsys.readouterr().out
    # an interrupted run's finished chunk (here: the first) is reused, the others computed in the pool
    three = tmp_path / "three.parquet"
    table = read_features(one)
    model = load_model("dlib")
    hashes = ex.image_hashes(ex.open_source(str(few_lfw)), "read")
    parts = ex.work_folder(three)
    parts.mkdir()
    with open(parts / f"{ex.chunk_key(model, hashes[:2])}.npz", "wb") as fh:
        np.savez(fh, embedding=table.embeddings[:2], miss=table.misses[:2])
    assert exit_status(["features", str(few_lfw), "--model", "dlib", "--out", str(three), "--workers", "2"]) == 0
    assert "1 of 3 chunks reused" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(three), pd.read_parquet(one))
    ckpt, _ = small_ckpt
    for args, needle in ((["--model", "dlib", "--jitter", "2"], "--jitter 2"),
                         (["--model", str(ckpt)], "only for --model dlib")):
        out = tmp_path / "no.parquet"
        assert exit_status(["features", str(few_lfw), "--out", str(out), "--workers", "2", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--workers 2" in err[0] and needle in err[0], err
        assert not out.exists() and not ex.work_folder(out).exists()


def test_dlib_misses_fall_back_to_the_centre_box_and_are_counted(dlib, tmp_path, few_lfw):
    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(few_lfw, root)
    blank = sorted(root.iterdir())[0] / "blank.png"
    Image.new("RGB", (250, 250), (128, 128, 128)).save(blank)
    out = tmp_path / "f.parquet"
    assert exit_status(["features", str(root), "--model", "dlib", "--out", str(out)]) == 0
    table = read_features(out)
    row = table.paths.index(f"{blank.parent.name}/blank.png")
    assert table.misses[row] and table.meta["misses"] >= 1 and len(table) == 7
    assert np.isfinite(table.embeddings[row]).all()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # scheduled last among the Ray tests: conftest.BackgroundRun
def test_dlib_verification_on_lfw_fold1_is_near_the_published_accuracy(dlib, lfw_pairs_file):
    """The frozen dlib model on the 600 pairs of LFW fold 1 (807 images, about 1.5 min): dlib
    reports 99.38 % on LFW's 10 folds; this pipeline must come within about a point (measured:
    98.33 % at 0.6, 98.50 % 10-fold, 99.33 % at the best threshold without jitter; with
    --jitter 10, 7x slower and not tested here, 99.50 / 99.33 / 99.67 %; docs/features.md)."""
    from noisyfr.features.verify import pair_accuracy

    # the command as a user runs it, in two processes (the bytes do not depend on it:
    # test_dlib_workers_give_the_same_bytes...), started at nice 19 with the first Ray test of
    # this worker's session (or now): it takes the CPU the Ray tests leave, not the other worker's
    code, stdout, stderr = DLIB_FOLD1.wait(timeout=900)
    assert code == 0, stderr[-2000:]
    out = DLIB_FOLD1.out
    table = read_features(out)
    assert len(table) == 807 and len(table.pairs) == 600 and table.pairs[:, 2].sum() == 300
    result = pair_accuracy(table)
    published = 0.9938
    assert result["best"]["accuracy"] >= published - 0.01, result
    assert result["fixed"]["accuracy"] >= published - 0.015, result
    assert result["cv"]["accuracy"] >= published - 0.015, result
    # a control that could fail: shuffling which image is which breaks verification to chance
    from noisyfr.data.feature_store import table_of

    rng = np.random.default_rng(0)
    shuffled = table_of(table.paths, table.identities, table.embeddings[rng.permutation(len(table))],
                        table.misses, table.meta)
    assert pair_accuracy(shuffled)["best"]["accuracy"] < 0.65
    assert "fixed threshold (Euclidean < 0.6)" in stdout


def test_a_bare_state_dict_needs_and_takes_its_backbone(tmp_path, capsys):
    """insightface weights load as a bare state dict named by --backbone (112 px, d = 512)."""
    from noisyfr.models import create_backbone

    torch.manual_seed(1)
    model = create_backbone("small_cnn", 512, image_size=112).eval()
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    out = tmp_path / "f.parquet"
    args = ["features", SYNTH, "--model", str(tmp_path / "backbone.pth"), "--out", str(out)]
    assert exit_status(args) == 2 and "--backbone" in one_line_error(capsys) and not out.exists()
    assert exit_status(args + ["--backbone", "small_cnn"]) == 0
    table = read_features(out, expect_dim=512)
    from noisyfr.data import open_index

    index = open_index(SYNTH)
    want = by_hand(model, [index.load_image(i) for i in range(3)], crop=1.0, size=112)
    np.testing.assert_allclose(table.embeddings[:3], want, atol=1e-4, rtol=0)
    assert table.meta["model"]["backbone"] == "small_cnn" and "epoch" not in table.meta["model"]
