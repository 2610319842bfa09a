"""``noisyfr eval`` end to end on a small_cnn checkpoint built here, with real LFW images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from noisyfr.cli import main
from noisyfr.data import load_pairs
from noisyfr.data.pairs import write_bin
from noisyfr.eval import evaluate
from noisyfr.models import create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONFIG = {"model": {"backbone": "small_cnn", "embedding_dim": 16},
          "data": {"image_size": 32, "center_crop": 0.6}}


def save_checkpoint(path: Path, config=CONFIG, seed=0) -> dict:
    torch.manual_seed(seed)
    model = create_backbone(config["model"]["backbone"], config["model"]["embedding_dim"],
                            image_size=config["data"]["image_size"])
    state = {"config": config, "model": model.state_dict(), "head": {}, "optimizer": {},
             "scheduler": {}, "rng": {}, "epoch": 3, "step": 120}
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def small_lfw(lfw_pairs_file, tmp_path_factory):
    """The first 12 same and first 12 different pairs of LFW fold 1 (images linked, not copied)."""
    root = tmp_path_factory.mktemp("lfw_small")
    lines = lfw_pairs_file.read_text().splitlines()[1:]
    same = [ln for ln in lines if len(ln.split()) == 3][:12]
    diff = [ln for ln in lines if len(ln.split()) == 4][:12]
    (root / "pairs.txt").write_text("1\t24\n" + "\n".join(same + diff) + "\n")
    (root / "images").symlink_to(lfw_pairs_file.parent / "images")
    return root / "pairs.txt"


def test_eval_cli_table_json_and_bin(small_lfw, tmp_path, capsys):
    ckpt = tmp_path / "epoch_3.pt"
    state = save_checkpoint(ckpt)
    bin_path = write_bin(load_pairs(small_lfw), tmp_path / "small.bin")
    out = tmp_path / "res" / "results.json"
    rc = main(["eval", "--checkpoint", str(ckpt), "--val", str(small_lfw), "--val", str(bin_path),
               "--device", "cpu", "--batch-size", "32", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    name = small_lfw.parent.name  # a pairs.txt set is named after its folder
    assert name in text and "small " in text and "TAR@FAR=1e-3 %" in text and "+-" in text
    payload = json.loads(out.read_text())
    assert payload["epoch"] == 3 and payload["backbone"] == "small_cnn"
    txt_res, bin_res = payload["results"]
    assert txt_res["name"] == name and txt_res["num_pairs"] == 24
    # the .bin holds the same images in pair order: identical metrics
    assert {k: v for k, v in bin_res.items() if k != "name"} == \
        pytest.approx({k: v for k, v in txt_res.items() if k != "name"})
    # the CLI rebuilt the model with the checkpoint's weights, image size and centre crop
    model = create_backbone("small_cnn", 16, image_size=32)
    model.load_state_dict(state["model"])
    ref = evaluate(model, load_pairs(small_lfw), image_size=32, center_crop=0.6,
                   thresholds="insightface")  # the CLI's default: insightface's threshold grid
    assert {k: txt_res[k] for k in ref} == pytest.approx(ref, abs=1e-6)
    # TAR and AUC are continuous functions of the embeddings: another crop or size would not match
    exact = evaluate(model, load_pairs(small_lfw), image_size=32, center_crop=0.6)
    assert {k: txt_res[k] for k in ("auc", "tar_at_far_1e-3")} == \
        pytest.approx({k: exact[k] for k in ("auc", "tar_at_far_1e-3")}, abs=1e-6)


def test_eval_cli_bad_inputs(small_lfw, tmp_path, capsys):
    out = tmp_path / "r.json"

    def fails(ckpt, val=small_lfw, match=""):
        rc = main(["eval", "--checkpoint", str(ckpt), "--val", str(val), "--device", "cpu",
                   "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("noisyfr eval: error:") and "\n" not in err, err
        assert match in err
        assert not out.exists() and not list(tmp_path.glob(".r.json*"))

    fails(tmp_path / "missing.pt", match="missing.pt: no such file")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    fails(junk, match="not a readable checkpoint")
    good = tmp_path / "good.pt"
    save_checkpoint(good)
    fails(good, val=tmp_path / "nope.txt", match="nope.txt")
    wrong_dim = tmp_path / "wrong_dim.pt"
    state = save_checkpoint(wrong_dim)
    state["config"] = {"model": {"backbone": "small_cnn", "embedding_dim": 8},
                       "data": {"image_size": 32}}
    torch.save(state, wrong_dim)
    fails(wrong_dim, match="weights do not fit small_cnn")
    unknown = tmp_path / "unknown.pt"
    state["config"] = {"model": {"backbone": "vgg16"}, "data": {"image_size": 32}}
    torch.save(state, unknown)
    fails(unknown, match="known: iresnet18")
    no_cfg = tmp_path / "no_cfg.pt"
    torch.save({"model": {}}, no_cfg)
    fails(no_cfg, match="not a noisyfr checkpoint")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"config": CONFIG, "model": {}, "extra": np.random.default_rng(0)}, unsafe)
    fails(unsafe, match="not a readable checkpoint")  # weights_only refuses arbitrary objects


def test_resolve_device():
    from noisyfr.errors import NoisyFRError
    from noisyfr.eval import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(NoisyFRError, match="device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(NoisyFRError, match="CUDA is not available"):
            resolve_device("cuda")
