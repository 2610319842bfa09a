"""``noisyfr embed`` (.npy + Parquet) and ``noisyfr export`` (ONNX, run in onnxruntime)."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import exit_status
from torch import nn

from noisyfr.cli import main
from noisyfr.data import load_pairs
from noisyfr.data.pairs import write_bin
from noisyfr.models import BACKBONE_SPECS, create_backbone, register_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = {"model": {"backbone": "small_cnn", "embedding_dim": 16},
          "data": {"image_size": 32, "center_crop": 0.8}}


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_backbone("small_cnn", 16, image_size=32).eval()
    path = tmp_path_factory.mktemp("ckpt") / "epoch_1.pt"
    torch.save({"config": CONFIG, "model": model.state_dict(), "epoch": 1}, path)
    return path, model


def by_hand(model, images, crop=0.8, flip=True):
    """Centre crop, resize to 32, [-1, 1], model(x) (+ model(flip x)): raw embeddings."""
    from torchvision.transforms.v2 import functional as F

    xs = []
    for im in images:
        side = int(round(min(im.shape[-2:]) * crop))
        xs.append(F.resize(F.center_crop(im, [side, side]), [32, 32], antialias=True))
    x = (torch.stack(xs).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        return (model(x) + model(x.flip(-1)) if flip else model(x)).numpy()


def test_embed_pairs_sets_with_and_without_flip(small_ckpt, lfw_pairs_file, tmp_path, capsys):
    path, model = small_ckpt
    bin_path = write_bin(load_pairs("synthetic-pairs:ids=3,per_id=2,pairs=4,size=40,seed=3"),
                         tmp_path / "tiny.bin")
    vset = load_pairs(bin_path)
    for flip in (True, False):
        out = tmp_path / f"bin_{flip}.npy"
        assert main(["embed", str(path), str(bin_path), "--out", str(out), "--device", "cpu",
                     *([] if flip else ["--no-flip"])]) == 0
        raw = by_hand(model, [vset.load_image(i) for i in range(vset.num_images)], flip=flip)
        emb = np.load(out)
        assert emb.shape == (8, 16) and emb.dtype == np.float32
        np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
        table = pd.read_parquet(out.with_suffix(".parquet"))
        assert list(table.columns) == ["path", "identity", "norm"]
        assert table["path"].tolist() == [f"{bin_path}[{i}]" for i in range(8)]
        assert table["identity"].isna().all()                     # a .bin does not record identities
        np.testing.assert_allclose(table["norm"], np.linalg.norm(raw, axis=1), rtol=1e-5)
    assert "flip off" in capsys.readouterr().out
    # an LFW pairs.txt: identities are the image folders
    root = tmp_path / "lfw"
    root.mkdir()
    lines = lfw_pairs_file.read_text().splitlines()
    (root / "pairs.txt").write_text("\n".join([lines[1], lines[-1]]) + "\n")
    (root / "images").symlink_to(lfw_pairs_file.parent / "images")
    out = tmp_path / "lfw.npy"
    assert main(["embed", str(path), str(root / "pairs.txt"), "--out", str(out), "--device", "cpu",
                 "--center-crop", "0.6"]) == 0
    table = pd.read_parquet(out.with_suffix(".parquet"))
    same, diff = lines[1].split(), lines[-1].split()
    assert table["identity"].tolist() == [same[0], same[0], diff[0], diff[2]]
    lfw = load_pairs(root / "pairs.txt")
    raw = by_hand(model, [lfw.load_image(i) for i in range(4)], crop=0.6)
    np.testing.assert_allclose(np.load(out), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_embed_bad_input_leaves_nothing(small_ckpt, tmp_path, capsys):
    path, _ = small_ckpt

    def fails(args, match):
        assert exit_status(["embed", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("noisyfr embed: error:") and "\n" not in err and match in err, err

    fails([str(path), "synthetic:ids=2,per_id=2,size=32", "--out", str(tmp_path / "e.txt")],
          "must end with .npy")
    fails([str(path), str(tmp_path / "nope"), "--out", str(tmp_path / "e.npy")], "nope: does not exist")
    fails([str(path), "synthetic:ids=2,per_id=2,size=32", "--out", str(tmp_path / "e.npy"),
           "--batch-size", "0"], "--batch-size")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- export
def run_onnx(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert isinstance(session.get_inputs()[0].shape[0], str)     # a named, dynamic batch axis
    return session.run(None, {"input": x})[0]


def test_export_matches_pytorch(small_ckpt, tmp_path, capsys):
    path, model = small_ckpt
    out = tmp_path / "model.onnx"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert "max |onnxruntime - torch|" in capsys.readouterr().out
    for batch in (1, 5):
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(run_onnx(out, x.numpy()), want, atol=1e-4, rtol=0)
    # a bare state dict with --backbone (112x112 input)
    torch.manual_seed(1)
    bare = create_backbone("small_cnn", 8, image_size=112, width=0.25).eval()
    torch.save(bare.state_dict(), tmp_path / "bare.pth")
    assert main(["export", str(tmp_path / "bare.pth"), "--backbone", "small_cnn", "--embedding-dim", "8",
                 "--out", str(tmp_path / "bare.onnx"), "--no-check"]) == 2     # width is not 1
    assert "weights do not fit small_cnn" in capsys.readouterr().err
    bare = create_backbone("small_cnn", 8, image_size=112).eval()
    torch.save(bare.state_dict(), tmp_path / "bare.pth")
    assert main(["export", str(tmp_path / "bare.pth"), "--backbone", "small_cnn", "--embedding-dim", "8",
                 "--out", str(tmp_path / "bare.onnx")]) == 0
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(tmp_path / "bare.onnx", x.numpy()), bare(x).numpy(), atol=1e-4)


def test_export_without_the_extra_names_it(small_ckpt, tmp_path, capsys, monkeypatch):
    path, _ = small_ckpt
    out = tmp_path / "m.onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)            # import fails
    assert main(["export", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing: onnxruntime" in err and "pip install 'noisyfr[onnx]'" in err
    assert "--no-check" in err and not out.exists()
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(path), "--out", str(out), "--no-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ONNX export needs the optional packages of the [onnx] extra (missing: onnx)" in err
    assert not list(tmp_path.iterdir())


class _Branchy(nn.Module):
    """Python control flow on a tensor value: torch.export cannot capture it."""

    def __init__(self, embedding_dim):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, embedding_dim)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y if float(y.sum()) > 0 else -y


_CALLS = [0]


class _Stateful(nn.Module):
    """Python state outside the module, changed by every call: the export freezes one value of
    it, so the graph computes something else than the next PyTorch call."""

    def __init__(self, embedding_dim):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, embedding_dim)

    def forward(self, x):
        _CALLS[0] += 1
        return self.fc(x.flatten(1)) * _CALLS[0]


@pytest.fixture
def untraceable():
    saved = dict(BACKBONE_SPECS)
    register_backbone("branchy", lambda embedding_dim, image_size, dropout: _Branchy(embedding_dim),
                      image_sizes=(32,))
    register_backbone("stateful", lambda embedding_dim, image_size, dropout: _Stateful(embedding_dim),
                      image_sizes=(32,))
    yield
    BACKBONE_SPECS.clear()
    BACKBONE_SPECS.update(saved)


@pytest.mark.parametrize("name, match", [("branchy", "branchy): the backbone cannot be exported to ONNX ("),
                                         ("stateful", "differs from PyTorch by")])
def test_export_of_an_untraceable_backbone_is_refused(untraceable, tmp_path, capsys, name, match):
    torch.manual_seed(0)
    model = create_backbone(name, 4, image_size=32)
    ckpt = tmp_path / "c.pt"
    torch.save({"config": {"model": {"backbone": name, "embedding_dim": 4}, "data": {"image_size": 32}},
                "model": model.state_dict()}, ckpt)
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("noisyfr export: error: checkpoint") and "\n" not in err and match in err, err
    assert str(ckpt) in err and not out.exists() and not list((tmp_path / "out").glob("*"))
