"""Synthetic verification pairs (``synthetic-pairs:`` specs) over identities unseen in training."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from noisyfr.data import SyntheticIndex, decode_image, load_pairs
from noisyfr.data.render import render_identity_params, render_image
from noisyfr.data.synthetic import PAIRS_DEFAULTS, parse_pairs_spec
from noisyfr.data.synthetic_pairs import SyntheticPairs, sample_pairs
from noisyfr.data.verification import VerificationSet
from noisyfr.errors import NoisyFRError

SMALL = "synthetic-pairs:ids=12,per_id=4,first_id=40,pairs=40,size=16,seed=3"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unordered(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in pairs.tolist()}


def _check_structure(v, ids, per_id, first_id, n_pairs):
    """Every structural promise of a synthetic pairs set, checked from scratch."""
    assert v.num_images == ids * per_id
    assert v.pairs.dtype == np.int64 and v.pairs.shape == (n_pairs, 2)
    assert v.issame.dtype == np.bool_ and v.issame.shape == (n_pairs,)
    assert v.pairs.min() >= 0 and v.pairs.max() < ids * per_id
    assert (v.pairs[:, 0] != v.pairs[:, 1]).all()
    assert len(_unordered(v.pairs)) == n_pairs                      # no duplicate pairs
    assert int(v.issame.sum()) == n_pairs // 2                       # balanced
    half = n_pairs // 2
    assert v.issame[:half].all() and not v.issame[half:].any()       # same block, then different
    # the labels of the images agree with issame; label of image i computed independently
    label = lambda i: first_id + i // per_id                         # noqa: E731
    truth = [label(a) == label(b) for a, b in v.pairs.tolist()]
    assert truth == v.issame.tolist()
    assert v.labels.tolist() == [label(i) for i in range(ids * per_id)]


# ---------------------------------------------------------------- spec, defaults, structure
def test_defaults_through_load_pairs():
    v = load_pairs("synthetic-pairs")
    w = load_pairs("synthetic-pairs:ids=100,per_id=10,first_id=100000,pairs=600,size=112,seed=0")
    assert isinstance(v, VerificationSet) and isinstance(v, SyntheticPairs)
    assert v.name == "synthetic-pairs"
    assert v.source == w.source == (
        "synthetic-pairs:ids=100,per_id=10,first_id=100000,pairs=600,size=112,seed=0")
    assert np.array_equal(v.pairs, w.pairs) and np.array_equal(v.issame, w.issame)
    _check_structure(v, 100, 10, 100_000, 600)
    img = v.load_image(999)
    assert img.dtype == torch.uint8 and img.shape == (3, 112, 112)
    # the canonical spec reads back to the same parameters, dashes accepted for underscores
    assert parse_pairs_spec(v.spec) == PAIRS_DEFAULTS
    assert parse_pairs_spec("synthetic-pairs:per-id=3,first-id=7")["per_id"] == 3


@pytest.mark.parametrize("ids,per_id,n_pairs", [
    (3, 2, 6),      # every same pair is used (dense enumeration of same pairs)
    (2, 2, 4),      # 2 same pairs and 4 different pairs exist: all same, half the different
    (2, 3, 12),     # 6 same, 9 different: both kinds dense
    (50, 20, 400),  # sparse: rejection sampling of both kinds
])
def test_counts_balance_and_no_duplicates(ids, per_id, n_pairs):
    v = SyntheticPairs(ids=ids, per_id=per_id, first_id=1000, pairs=n_pairs, size=16, seed=1)
    _check_structure(v, ids, per_id, 1000, n_pairs)
    all_same = {(j * per_id + a, j * per_id + b) for j in range(ids)
                for a, b in itertools.combinations(range(per_id), 2)}
    if n_pairs // 2 == len(all_same):
        assert _unordered(v.pairs[v.issame]) == all_same


def test_pairs_are_spread_over_identities():
    """Drawn uniformly: same pairs touch most identities, different pairs most identity pairs' members."""
    pairs, issame = sample_pairs(ids=100, per_id=10, pairs=600, seed=0)
    same_ids = np.unique(pairs[issame, 0] // 10)
    diff_ids = np.unique(pairs[~issame] // 10)
    # 300 same pairs over 100 identities: P(an identity is missed) = (99/100)^300 ~ 5%
    assert len(same_ids) >= 85
    assert len(diff_ids) == 100
    # every image position k appears (pairs are not all between the first images)
    assert set((pairs % 10).ravel().tolist()) == set(range(10))


def test_same_spec_same_pairs_and_bytes_other_seed_differs():
    a, b = load_pairs(SMALL), load_pairs(SMALL)
    assert np.array_equal(a.pairs, b.pairs) and np.array_equal(a.issame, b.issame)
    for i in (0, 17, a.num_images - 1):
        assert a.read_bytes(i) == b.read_bytes(i)
        assert torch.equal(decode_image(a.read_bytes(i)), a.load_image(i))
    c = load_pairs(SMALL.replace("seed=3", "seed=4"))
    assert not np.array_equal(a.pairs, c.pairs)
    assert not torch.equal(a.load_image(0), c.load_image(0))
    # access order and caching change nothing
    d = SyntheticPairs.from_spec(SMALL, cache_mb=0)
    assert torch.equal(d.load_image(5), a.load_image(5))


def test_images_are_the_training_generator_at_labels_from_first_id():
    """Image i is image i % per_id of identity first_id + i // per_id of the same generator."""
    v = load_pairs(SMALL)                                   # first_id = 40, per_id = 4, seed 3
    big = SyntheticIndex(ids=52, per_id=4, size=16, seed=3, cache_mb=0)
    for i in (0, 5, 47):
        label, k = 40 + i // 4, i % 4
        assert torch.equal(v.load_image(i), big.load_image(label * 4 + k))
        assert torch.equal(v.load_image(i), render_image(3, label, k, 16))


def test_disjoint_from_training_identities():
    train = SyntheticIndex.from_spec("synthetic:ids=40,per_id=16,size=32,seed=0")
    v = SyntheticPairs(ids=30, per_id=4, first_id=40, pairs=60, size=32, seed=0)
    assert set(v.labels.tolist()).isdisjoint(set(train.labels.tolist()))
    assert v.labels.min() >= train.num_identities
    fields = lambda p: dataclasses.astuple(p)               # noqa: E731
    train_params = {fields(train.identity_params(j)) for j in range(train.num_identities)}
    for label in np.unique(v.labels).tolist():
        assert fields(v.identity_params(label)) not in train_params
        assert v.identity_params(label) == render_identity_params(0, label)
    # and no verification image is pixel-identical to a training image of the same position
    train_imgs = torch.stack([train.load_image(j * 16) for j in range(40)])
    for j in range(30):
        assert not (train_imgs == v.load_image(j * 4)).flatten(1).all(1).any()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("spec,needle", [
    ("synthetic-pairs:colour=3", "unknown key 'colour'"),
    ("synthetic-pairs:ids=ten", "ids: expected an integer"),
    ("synthetic-pairs:ids=1", "ids: must be in [2,"),
    ("synthetic-pairs:per_id=1", "per_id: must be in [2,"),
    ("synthetic-pairs:pairs=7", "pairs must be even"),
    ("synthetic-pairs:pairs=0", "pairs: must be in [2,"),
    ("synthetic-pairs:ids=3,per_id=2,pairs=8", "only 3"),
    ("synthetic-pairs:size=8", "size: must be in [16,"),
    ("synthetic-pairs:seed=-1", "seed: must be in [0,"),
    ("synthetic-pairs:first_id=-5", "first_id: must be in [0,"),
    ("synthetic-pairs:ids=3,ids=4", "given twice"),
    ("synthetic-pairs:ids", "needs a value"),
])
def test_bad_spec_raises_naming_the_key(spec, needle):
    with pytest.raises(NoisyFRError) as exc:
        load_pairs(spec)
    msg = str(exc.value)
    assert needle in msg and spec in msg and "\n" not in msg


def test_bad_constructor_values_and_index():
    with pytest.raises(NoisyFRError, match="pairs: expected an integer"):
        SyntheticPairs(pairs=10.0)
    with pytest.raises(NoisyFRError, match="ids: expected an integer"):
        SyntheticPairs(ids=True)
    v = load_pairs(SMALL)
    with pytest.raises(IndexError):
        v.load_image(v.num_images)
    # a path that merely resembles the prefix is still a path
    with pytest.raises(NoisyFRError, match="does not exist"):
        load_pairs("synthetic-pairsX")


# ---------------------------------------------------------------- through the evaluator
def test_identity_embedding_is_perfect_and_random_is_chance():
    from noisyfr.eval import verify

    v = load_pairs("synthetic-pairs:ids=100,per_id=10,pairs=600,size=16,seed=0")
    # an oracle embedding: the identity's stable parameters (numeric fields, standardised)
    feats = []
    for label in range(v.first_id, v.first_id + 100):
        p = render_identity_params(0, label)
        row = []
        for x in dataclasses.astuple(p):
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                row.append(float(x))
            elif isinstance(x, tuple) and x and isinstance(x[0], float):
                row.extend(x)
        feats.append(row[:20])
    feats = np.asarray(feats)
    feats = (feats - feats.mean(0)) / feats.std(0)
    emb = feats[v.labels - v.first_id]
    good = verify(emb[v.pairs[:, 0]], emb[v.pairs[:, 1]], v.issame)
    assert good["accuracy"] > 0.98 and good["auc"] > 0.99
    rng = np.random.default_rng(0)
    rand = rng.normal(size=(v.num_images, 32))
    chance = verify(rand[v.pairs[:, 0]], rand[v.pairs[:, 1]], v.issame)
    assert abs(chance["accuracy"] - 0.5) < 0.08 and abs(chance["auc"] - 0.5) < 0.08


def test_evaluate_with_a_pixel_model_beats_chance():
    """End to end through noisyfr.eval.evaluate: the mean colours of a coarse grid over the face
    centre (skin, eyes, hair line) carry identity clearly above chance, far below perfect: the
    images vary in pose, light and occlusion within an identity."""
    from noisyfr.eval import evaluate

    v = load_pairs("synthetic-pairs:ids=60,per_id=5,pairs=300,size=16,seed=0")
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
    res = evaluate(model, v, image_size=16, center_crop=0.5, batch_size=300)
    assert res["name"] == "synthetic-pairs" and res["num_pairs"] == 300
    # chance: accuracy 0.5 +- 0.029, AUC 0.5 +- 0.033 (300 pairs)
    assert 0.6 < res["accuracy"] < 0.9 and 0.65 < res["auc"] < 0.95


def test_training_config_accepts_the_spec():
    train = pytest.importorskip("noisyfr.train")
    spec = "synthetic-pairs:ids=20,per_id=4,pairs=40,size=32,seed=0"
    cfg = train.load_config({"data": {"train": "synthetic:ids=8,per_id=4,size=32,seed=0",
                                      "image_size": 32, "val": [spec]},
                             "model": {"backbone": "small_cnn", "embedding_dim": 16}})
    assert cfg["data"]["val"] == [spec]
    assert load_pairs(cfg["data"]["val"][0]).num_pairs == 40


# ---------------------------------------------------------------- noisyfr synth --pairs
def _synth_pairs(out, *extra):
    from noisyfr.cli import main

    return main(["synth", "--pairs", "20", "--ids", "5", "--per-id", "3", "--first-id", "70",
                 "--size", "24", "--seed", "2", "--out", str(out), *extra])


def test_cli_pairs_writes_the_same_set_in_lfw_layout(tmp_path):
    import json

    a, b = tmp_path / "a", tmp_path / "b"
    assert _synth_pairs(a) == 0 and _synth_pairs(b) == 0
    tree = lambda r: {p.relative_to(r).as_posix(): p.read_bytes()  # noqa: E731
                      for p in sorted(r.rglob("*")) if p.is_file()}
    assert tree(a) == tree(b)                                    # same options, same bytes
    mem = load_pairs("synthetic-pairs:ids=5,per_id=3,first_id=70,pairs=20,size=24,seed=2")
    assert json.loads((a / "synth.json").read_text())["spec"] == mem.spec
    disk = load_pairs(a)
    assert disk.issame.tolist() == mem.issame.tolist()
    # the pair members are the same (identity, image number), read back from the file names
    for (da, db), (ma, mb) in zip(disk.pairs.tolist(), mem.pairs.tolist()):
        for d, m in ((da, ma), (db, mb)):
            name = disk.files[d].stem                            # id0071_0002
            assert name == f"id{70 + m // 3:04d}_{m % 3 + 1:04d}"
            diff = (disk.load_image(d).float() - mem.load_image(m).float()).abs().mean()
            assert diff < 5.0                                    # JPEG q95 rounding only (~3)
    lines = (a / "pairs.txt").read_text().splitlines()
    assert lines[0].split() == ["1", "10"] and len(lines) == 21
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_pairs_bad_values_exit_2_and_write_nothing(tmp_path, capsys):
    from noisyfr.cli import main

    out = tmp_path / "x"
    assert _synth_pairs(out, "--pairs", "21") == 2
    assert "--pairs must be even" in capsys.readouterr().err
    assert main(["synth", "--pairs", "40", "--ids", "5", "--per-id", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--pairs=40" in err and "--ids=5" in err and len(err.strip().splitlines()) == 1
    assert main(["synth", "--first-id", "3", "--out", str(out)]) == 2
    assert "--first-id" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
