"""Verification metrics against independent computations, embedding of verification sets."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisyfr.errors import NoisyFRError
from noisyfr.eval import embed_images, evaluate, noisy_detection_auc, verify
from noisyfr.models import create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- independent references
def stratified_chunks(issame, folds):
    """Fold k = the k-th contiguous tenth of the same pairs + of the different pairs (file order)."""
    pos, neg = np.flatnonzero(issame), np.flatnonzero(~issame)
    assert len(pos) % folds == 0 and len(neg) % folds == 0  # equal shares: no rounding convention
    return [np.sort(np.r_[p, n]) for p, n in zip(np.split(pos, folds), np.split(neg, folds))]


def brute_force_accuracy(scores, issame, folds, chunks=None):
    """Cross-validated accuracy by a plain threshold scan (same iff score > t; smallest best t)."""
    accs, ths = [], []
    chunks = stratified_chunks(issame, folds) if chunks is None else chunks
    for test in chunks:
        train = np.setdiff1d(np.arange(len(scores)), test)
        s, y = scores[train], issame[train]
        u = sorted(set(s.tolist()))
        cands = [u[0] - 1.0] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [u[-1] + 1.0]
        best_t, best_acc = None, -1.0
        for t in cands:
            acc = np.mean((s > t) == y)
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(np.mean((scores[test] > best_t) == issame[test]))
        ths.append(best_t)
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(ths))


def tar_by_counting(scores, issame, far):
    """TAR at FAR: with N negatives at most floor(far*N) false accepts are allowed."""
    neg = np.sort(scores[~issame])[::-1]
    k = int(math.floor(far * len(neg) + 1e-9))
    return float(np.mean(scores[issame] > neg[k])) if k < len(neg) else 1.0


def mann_whitney_auc(pos, neg):
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def cos_rows(a, b):
    return np.array([np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)])


def pairs_with_similarity(sims):
    """2-D embeddings whose cosine is exactly ``sims`` (first at angle 0, second at arccos(sim))."""
    ang = np.arccos(np.clip(sims, -1, 1))
    e1 = np.tile([[2.0, 0.0]], (len(sims), 1))
    e2 = np.stack([np.cos(ang), np.sin(ang)], 1) * 0.5
    return e1, e2


# ---------------------------------------------------------------- stand-in verification sets
class ListSet:
    """Minimal VerificationSet: images held in memory."""

    def __init__(self, images, pairs, issame, name="standin"):
        self.images, self.name = images, name
        self.pairs = np.asarray(pairs, dtype=np.int64)
        self.issame = np.asarray(issame, dtype=bool)
        self.num_images = len(images)

    def load_image(self, i):
        return self.images[i]


def read_lfw_pairs(pairs_file: Path):
    """Parse LFW pairs.txt (written independently of noisyfr.data.pairs)."""
    lines = pairs_file.read_text().split("\n")
    paths, index, pairs, same = [], {}, [], []

    def idx(name, k):
        p = pairs_file.parent / "images" / name / f"{name}_{int(k):04d}.jpg"
        if p not in index:
            index[p] = len(paths)
            paths.append(p)
        return index[p]

    for line in lines[1:]:
        f = line.split()
        if len(f) == 3:
            pairs.append((idx(f[0], f[1]), idx(f[0], f[2])))
            same.append(True)
        elif len(f) == 4:
            pairs.append((idx(f[0], f[1]), idx(f[2], f[3])))
            same.append(False)
    return paths, np.array(pairs), np.array(same)


@pytest.fixture(scope="module")
def lfw_projection(lfw_pairs_file):
    """Fixed embedding of LFW fold 1: seeded random projection of 24x24 grey centre crops."""
    paths, pairs, same = read_lfw_pairs(lfw_pairs_file)
    feats = []
    for p in paths:
        with Image.open(p) as im:
            g = im.convert("L").crop((70, 70, 180, 180)).resize((24, 24), Image.BILINEAR)
        v = np.asarray(g, dtype=np.float64).ravel()
        feats.append(v - v.mean())
    proj = np.random.default_rng(1234).normal(size=(24 * 24, 64))
    emb = np.stack(feats) @ proj
    return emb[pairs[:, 0]], emb[pairs[:, 1]], same


# ---------------------------------------------------------------- verify
def test_verify_lfw_fold1_matches_independent(lfw_projection):
    e1, e2, same = lfw_projection
    assert len(same) == 600 and same.sum() == 300
    res = verify(e1, e2, same, folds=10)
    scores = cos_rows(e1, e2)
    acc, std, thr = brute_force_accuracy(scores, same, 10)
    assert res["num_pairs"] == 600
    assert res["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res["accuracy_std"] == pytest.approx(std, abs=1e-12)
    assert res["threshold"] == pytest.approx(thr, abs=1e-9)
    assert res["auc"] == pytest.approx(mann_whitney_auc(scores[same], scores[~same]), abs=1e-12)
    # 300 negatives: FAR 1e-3 and 1e-4 are below resolution -> TAR at FAR 0
    tar0 = float(np.mean(scores[same] > scores[~same].max()))
    assert res["tar_at_far_1e-3"] == pytest.approx(tar0)
    assert res["tar_at_far_1e-4"] == pytest.approx(tar0)
    # the pixel projection carries some identity signal, far from perfect; balanced folds keep the
    # accuracy above chance (contiguous folds of this 300-same-then-300-different file would not)
    assert 0.55 < res["accuracy"] < 0.95 and 0.55 < res["auc"] < 0.99


def test_verify_is_cosine_and_accepts_int_labels(lfw_projection):
    e1, e2, same = lfw_projection
    a = verify(e1, e2, same)
    b = verify(3.0 * e1, 0.25 * e2, same.astype(int))
    assert a == pytest.approx(b)


def test_verify_separable_known_answer():
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.5
    sims = np.where(same, rng.uniform(0.3, 1.0, 400), rng.uniform(-1.0, 0.2, 400))
    res = verify(*pairs_with_similarity(sims), same)
    assert res["accuracy"] == 1.0 and res["accuracy_std"] == 0.0
    assert res["auc"] == 1.0
    assert res["tar_at_far_1e-3"] == 1.0 and res["tar_at_far_1e-4"] == 1.0
    assert 0.2 < res["threshold"] < 0.3


def test_verify_random_is_chance():
    rng = np.random.default_rng(1)
    e1, e2 = rng.normal(size=(4000, 32)), rng.normal(size=(4000, 32))
    res = verify(e1, e2, rng.random(4000) < 0.5)
    assert abs(res["accuracy"] - 0.5) < 0.04
    assert abs(res["auc"] - 0.5) < 0.04


def test_verify_known_errors_and_tar_with_resolution():
    # 1000 positives, 20000 negatives: FAR 1e-3 allows 20 false accepts, 1e-4 allows 2
    rng = np.random.default_rng(2)
    same = np.r_[np.ones(1000, bool), np.zeros(20000, bool)]
    sims = np.tanh(np.where(same, rng.normal(1.0, 0.5, same.size), rng.normal(-0.5, 0.5, same.size)))
    res = verify(*pairs_with_similarity(sims), same)
    scores = cos_rows(*pairs_with_similarity(sims))
    for key, far in (("tar_at_far_1e-3", 1e-3), ("tar_at_far_1e-4", 1e-4)):
        assert res[key] == pytest.approx(tar_by_counting(scores, same, far), abs=1e-12)
    assert res["tar_at_far_1e-3"] > res["tar_at_far_1e-4"]


def test_verify_small_exact_case():
    # 8 pairs, 2 folds; fold A = pairs 0-3 (2 same, 2 different), fold B = pairs 4-7
    sims = np.array([0.9, 0.1, 0.6, 0.8, 0.95, 0.3, 0.05, 0.15])
    same = np.array([1, 0, 0, 1, 1, 1, 0, 0], bool)
    res = verify(*pairs_with_similarity(sims), same, folds=2)
    # Train on B: 0.225 (between 0.15 and 0.3) is perfect; on A the negative 0.6 is accepted: 3/4.
    # Train on A: 0.7 (between 0.6 and 0.8) is perfect; on B the positive 0.3 is rejected: 3/4.
    assert res["accuracy"] == pytest.approx(0.75)
    assert res["accuracy_std"] == pytest.approx(0.0)
    assert res["threshold"] == pytest.approx((0.225 + 0.7) / 2)


def test_verify_standard_order_equals_contiguous_kfold():
    # insightface .bin order: 10 contiguous blocks of (30 same, 30 different); the folds must be
    # exactly the contiguous tenths (plain KFold), as in the insightface protocol
    rng = np.random.default_rng(6)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    sims = np.tanh(np.where(same, rng.normal(0.5, 0.5, 600), rng.normal(0.0, 0.5, 600)))
    res = verify(*pairs_with_similarity(sims), same)
    scores = cos_rows(*pairs_with_similarity(sims))
    acc, std, thr = brute_force_accuracy(scores, same, 10, chunks=np.array_split(np.arange(600), 10))
    assert (res["accuracy"], res["accuracy_std"]) == pytest.approx((acc, std), abs=1e-12)
    assert res["threshold"] == pytest.approx(thr, abs=1e-9)


def insightface_calculate_roc(e1, e2, issame, folds=10):
    """insightface's 10-fold accuracy, from its description: unit embeddings, squared distance,
    contiguous folds, thresholds 0..3.99 step 0.01, "same" iff distance < t, first best t."""
    e1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = e2 / np.linalg.norm(e2, axis=1, keepdims=True)
    dist = np.sum((e1 - e2) ** 2, axis=1)
    accs, ths = [], []
    for test in np.array_split(np.arange(len(dist)), folds):
        train = np.setdiff1d(np.arange(len(dist)), test)
        best_t, best_acc = None, -1.0
        for t in np.arange(0, 4, 0.01):
            acc = np.mean((dist[train] < t) == issame[train])
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(np.mean((dist[test] < best_t) == issame[test]))
        ths.append(1 - best_t / 2)
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(ths))


def test_verify_insightface_thresholds_match_insightface_protocol():
    rng = np.random.default_rng(8)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)   # the .bin order
    base = rng.normal(size=(600, 32))
    e1 = base + rng.normal(scale=0.3, size=base.shape)
    e2 = np.where(same[:, None], base, rng.normal(size=base.shape)) + rng.normal(scale=1.6, size=base.shape)
    ref = insightface_calculate_roc(e1, e2, same)
    res = verify(e1, e2, same, thresholds="insightface")
    assert (res["accuracy"], res["accuracy_std"], res["threshold"]) == pytest.approx(ref, abs=1e-12)
    assert 0.7 < res["accuracy"] < 0.99                                  # neither trivial nor perfect
    exact = verify(e1, e2, same)
    assert exact["threshold"] != pytest.approx(res["threshold"], abs=1e-6)  # another rule
    assert {k: exact[k] for k in ("auc", "tar_at_far_1e-3")} == {k: res[k] for k in ("auc", "tar_at_far_1e-3")}
    with pytest.raises(NoisyFRError, match="thresholds: expected one of exact, insightface"):
        verify(e1, e2, same, thresholds="grid")


def test_verify_bad_input():
    e = np.ones((5, 4))
    with pytest.raises(NoisyFRError, match="same shape"):
        verify(e, np.ones((5, 3)), [True] * 5, folds=2)
    with pytest.raises(NoisyFRError, match="issame"):
        verify(e, e, [True] * 4, folds=2)
    with pytest.raises(NoisyFRError, match="fewer than folds"):
        verify(e, e, [True, False] * 2 + [True])
    with pytest.raises(NoisyFRError, match="folds"):
        verify(e, e, [True] * 5, folds=1)
    bad = e.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NoisyFRError, match="NaN"):
        verify(bad, e, [True] * 5, folds=2)
    with pytest.raises(NoisyFRError, match="0/1"):
        verify(e, e, [0, 1, 2, 0, 1], folds=2)


def test_verify_one_class_gives_nan_auc():
    rng = np.random.default_rng(3)
    res = verify(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), np.ones(20, bool), folds=2)
    assert res["accuracy"] == 1.0
    assert math.isnan(res["auc"]) and math.isnan(res["tar_at_far_1e-3"])


# ---------------------------------------------------------------- noisy detection AUC
def test_noisy_detection_auc():
    rng = np.random.default_rng(4)
    noisy = rng.random(300) < 0.2
    theta = np.where(noisy, rng.normal(1.4, 0.2, 300), rng.normal(1.0, 0.2, 300)).round(2)  # ties
    auc = noisy_detection_auc(theta, noisy)
    assert auc == pytest.approx(mann_whitney_auc(theta[noisy], theta[~noisy]), abs=1e-12)
    assert auc > 0.8
    assert math.isnan(noisy_detection_auc(theta, np.zeros(300, bool)))
    with pytest.raises(NoisyFRError, match="is_noisy"):
        noisy_detection_auc(theta, noisy[:10])


# ---------------------------------------------------------------- embed_images / evaluate
@pytest.fixture(scope="module")
def tiny_set():
    g = torch.Generator().manual_seed(5)
    imgs = [torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8, generator=g) for _ in range(5)]
    imgs.append(torch.flip(imgs[0], dims=[2]))  # mirror image of image 0
    pairs = [(0, 5), (1, 2), (3, 4), (0, 1), (2, 5), (1, 3)]
    return ListSet(imgs, pairs, [True, True, True, False, False, False])


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_backbone("small_cnn", embedding_dim=16, image_size=32)


def test_embed_images_matches_manual(tiny_set, tiny_model):
    from torchvision.transforms.v2 import functional as F

    tiny_model.train()
    emb = embed_images(tiny_model, tiny_set, image_size=32, batch_size=4)
    assert tiny_model.training  # mode restored
    assert emb.dtype == np.float32 and emb.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    x = torch.stack([F.resize(im, [32, 32], antialias=True) for im in tiny_set.images]).float()
    x = (x / 255.0 - 0.5) / 0.5
    tiny_model.eval()
    with torch.no_grad():
        ref = tiny_model(x) + tiny_model(x.flip(-1))
    tiny_model.train()
    ref = (ref / ref.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(emb, ref, atol=2e-5)
    # flip-sum makes a mirrored face embed like the original
    np.testing.assert_allclose(emb[5], emb[0], atol=2e-5)


def test_embed_images_deterministic_and_batch_independent(tiny_set, tiny_model):
    a = embed_images(tiny_model, tiny_set, image_size=32, batch_size=6)
    b = embed_images(tiny_model, tiny_set, image_size=32, batch_size=6)
    c = embed_images(tiny_model, tiny_set, image_size=32, batch_size=1)
    assert a.tobytes() == b.tobytes()
    np.testing.assert_allclose(a, c, atol=1e-5)
    d = embed_images(tiny_model, tiny_set, image_size=32, center_crop=0.5)
    assert not np.allclose(a, d, atol=1e-3)  # center_crop reaches the preprocessing


def test_evaluate_on_pairs(tiny_set, tiny_model):
    res = evaluate(tiny_model, tiny_set, folds=2, image_size=32, batch_size=3)
    emb = embed_images(tiny_model, tiny_set, image_size=32)
    ref = verify(emb[tiny_set.pairs[:, 0]], emb[tiny_set.pairs[:, 1]], tiny_set.issame, folds=2)
    assert res["name"] == "standin" and res["num_pairs"] == 6
    assert {k: res[k] for k in ref} == pytest.approx(ref, nan_ok=True)
    bad = ListSet(tiny_set.images, [(0, 6)], [True], name="bad")
    with pytest.raises(NoisyFRError, match="bad: pair index out of range"):
        evaluate(tiny_model, bad, folds=2, image_size=32)
    with pytest.raises(NoisyFRError, match="batch_size"):
        embed_images(tiny_model, tiny_set, image_size=32, batch_size=0)
