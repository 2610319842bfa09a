"""The .bin suite: ``noisyfr eval --val lfw,cfp_fp,... --data-dir DIR`` and the trainer's periodic
evaluation, one code path."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from noisyfr.cli import main
from noisyfr.data import load_pairs
from noisyfr.data.pairs import write_bin
from noisyfr.eval import evaluate, load_backbone
from noisyfr.models import create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = {"model": {"backbone": "small_cnn", "embedding_dim": 16},
          "data": {"image_size": 32, "center_crop": 1.0}}


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory):
    """DIR with lfw.bin and cfp_fp.bin (synthetic faces), and a small_cnn checkpoint."""
    root = tmp_path_factory.mktemp("bins")
    write_bin(load_pairs("synthetic-pairs:ids=6,per_id=3,pairs=20,size=32,seed=1"), root / "lfw.bin")
    write_bin(load_pairs("synthetic-pairs:ids=5,per_id=4,pairs=30,size=32,seed=2"), root / "cfp_fp.bin")
    torch.manual_seed(0)
    model = create_backbone("small_cnn", 16, image_size=32)
    ckpt = root.parent / "suite.pt"
    torch.save({"config": CONFIG, "model": model.state_dict(), "epoch": 2}, ckpt)
    return root, ckpt, model.eval()


def test_suite_by_name_evaluates_the_bins_present(bin_dir, tmp_path, capsys):
    root, ckpt, model = bin_dir
    out = tmp_path / "suite.csv"
    rc = main(["eval", "--checkpoint", str(ckpt), "--val", "lfw,cfp_fp,agedb_30,calfw,cplfw",
               "--data-dir", str(root), "--device", "cpu", "--folds", "5", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert f"skipped (no .bin in {root}): agedb_30, calfw, cplfw" in text
    table = pd.read_csv(out)
    assert table["name"].tolist() == ["lfw", "cfp_fp"] and table["num_pairs"].tolist() == [20, 30]
    for row in table.itertuples():
        ref = evaluate(model, load_pairs(root / f"{row.name}.bin"), folds=5, thresholds="insightface",
                       image_size=32)
        assert (row.accuracy, row.auc, row.threshold) == pytest.approx(
            (ref["accuracy"], ref["auc"], ref["threshold"]), abs=1e-9)
    # --thresholds exact and --no-flip reach the evaluation
    js = tmp_path / "exact.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--val", "lfw", "--data-dir", str(root),
                 "--device", "cpu", "--folds", "5", "--thresholds", "exact", "--no-flip",
                 "--out", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["thresholds"] == "exact" and res["flip"] is False and res["skipped"] == []
    ref = evaluate(model, load_pairs(root / "lfw.bin"), folds=5, image_size=32, flip=False)
    assert res["results"][0]["auc"] == pytest.approx(ref["auc"], abs=1e-9)
    assert res["results"][0]["threshold"] == pytest.approx(ref["threshold"], abs=1e-9)


def test_suite_bad_input_is_one_line(bin_dir, tmp_path, capsys):
    root, ckpt, _ = bin_dir
    out = tmp_path / "r.json"

    def fails(val, *extra, match):
        rc = main(["eval", "--checkpoint", str(ckpt), "--val", val, "--device", "cpu", "--out",
                   str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("noisyfr eval: error:") and "\n" not in err, err
        assert match in err, err
        assert not out.exists()

    fails("lfw", match="lfw: no such verification file (a bare set name needs --data-dir")
    fails("agedb_30,calfw", "--data-dir", str(root), match="holds none of agedb_30.bin, calfw.bin")
    fails("lfw", "--data-dir", str(tmp_path / "nowhere"), match="nowhere: not a directory")
    notbin = tmp_path / "bins"
    notbin.mkdir()
    with open(notbin / "lfw.bin", "wb") as fh:
        pickle.dump({"images": [], "issame": []}, fh)
    fails("lfw,cfp_fp", "--data-dir", str(notbin), match=f"{notbin / 'lfw.bin'}: expected a pickle of")
    with open(notbin / "lfw.bin", "wb") as fh:
        pickle.dump(([b"not an image", b"nor this"], [True]), fh)
    fails("lfw", "--data-dir", str(notbin), match="lfw.bin[0]: corrupt or unreadable image")
    assert main(["eval", "--checkpoint", str(ckpt), "--device", "cpu"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_trainer_evaluates_with_the_suite(bin_dir, tmp_path):
    """The trainer's val accuracy is what noisyfr eval reports for the epoch's checkpoint."""
    from noisyfr.eval.suite import evaluate_sets
    from noisyfr.train import load_config, train

    root, _, _ = bin_dir
    out = tmp_path / "run"
    cfg = load_config({"data": {"train": "synthetic:ids=4,per_id=4,size=32,seed=0", "image_size": 32,
                                "val": [str(root / "lfw.bin"), str(root / "cfp_fp.bin")]},
                       "model": {"backbone": "small_cnn", "embedding_dim": 16},
                       "optim": {"epochs": 1, "batch_size": 8, "lr": 0.05}, "track": {"angles": False},
                       "seed": 1, "device": "cpu", "output_dir": str(out)})
    metrics = train(cfg)
    model, _ = load_backbone(out / "checkpoints" / "epoch_1.pt")
    ref = evaluate_sets(model, [load_pairs(root / "lfw.bin"), load_pairs(root / "cfp_fp.bin")],
                        image_size=32)
    assert metrics["val/lfw/accuracy"] == pytest.approx(ref[0]["accuracy"], abs=1e-12)
    assert metrics["val/cfp_fp/accuracy"] == pytest.approx(ref[1]["accuracy"], abs=1e-12)
    assert metrics["val_accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in ref]), abs=1e-12)
