"""Synthetic face-like identities: contract, determinism, difficulty, and the ``noisyfr synth`` CLI."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from noisyfr.data.index import FaceIndex, decode_image
from noisyfr.data.render import render_identity_params, render_image
from noisyfr.data.synthetic import DEFAULTS, SyntheticIndex, encode_png, parse_spec
from noisyfr.errors import NoisyFRError

# ---------------------------------------------------------------- spec and index contract

def test_spec_defaults_and_keys():
    assert parse_spec("synthetic") == DEFAULTS == {"ids": 100, "per_id": 20, "size": 112, "seed": 0}
    assert parse_spec("synthetic:") == DEFAULTS
    assert parse_spec("synthetic:size=48, seed=7") == {"ids": 100, "per_id": 20, "size": 48, "seed": 7}
    idx = SyntheticIndex.from_spec("synthetic:ids=3,per_id=2,size=32,seed=5")
    assert (idx.ids, idx.per_id, idx.size, idx.seed) == (3, 2, 32, 5)
    # the canonical spec reads back to the same index
    assert SyntheticIndex.from_spec(idx.spec).spec == idx.spec == idx.source


@pytest.mark.parametrize("spec, needle", [
    ("synthetic:idz=3", "'idz'"),
    ("synthetic:ids=three", "ids"),
    ("synthetic:ids=0", "ids"),
    ("synthetic:size=8", "size"),
    ("synthetic:seed=-1", "seed"),
    ("synthetic:per_id", "per_id"),
    ("synthetic:ids=2,ids=3", "ids"),
    ("synth:ids=2", "synth:ids=2"),
])
def test_bad_spec_names_the_problem(spec, needle):
    with pytest.raises(NoisyFRError) as exc:
        SyntheticIndex.from_spec(spec)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg


def test_bad_constructor_values():
    with pytest.raises(NoisyFRError, match="per_id"):
        SyntheticIndex(ids=2, per_id=0)
    with pytest.raises(NoisyFRError, match="size"):
        SyntheticIndex(size=32.5)


def test_index_layout():
    idx = SyntheticIndex(ids=3, per_id=4, size=32, seed=0)
    assert isinstance(idx, FaceIndex) and len(idx) == 12 and idx.num_identities == 3
    assert idx.labels.dtype == np.int64
    np.testing.assert_array_equal(idx.labels, np.repeat(np.arange(3), 4))
    assert idx.identities == ["id0000", "id0001", "id0002"]
    assert idx.paths[0] == "id0000/000.png" and idx.paths[5] == "id0001/001.png"
    assert len(set(idx.paths)) == 12
    img = idx.load_image(5)
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 32, 32)
    data = idx.read_bytes(5)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert torch.equal(decode_image(data), img)       # lossless: the bytes are the image
    with pytest.raises(IndexError):
        idx.load_image(12)


# ---------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_other_images():
    a = SyntheticIndex(ids=2, per_id=3, size=40, seed=11)
    b = SyntheticIndex(ids=2, per_id=3, size=40, seed=11)
    c = SyntheticIndex(ids=2, per_id=3, size=40, seed=12)
    for i in range(len(a)):
        assert a.read_bytes(i) == b.read_bytes(i)
        diff = (a.load_image(i).float() - c.load_image(i).float()).abs().mean()
        assert diff > 10, f"seed change barely changed image {i}"
    # images within one index are all different
    assert len({a.read_bytes(i) for i in range(len(a))}) == len(a)


def test_access_order_cache_and_prefix_independence():
    forward = SyntheticIndex(ids=3, per_id=3, size=32, seed=4)
    imgs = [forward.load_image(i) for i in range(len(forward))]
    backward = SyntheticIndex(ids=3, per_id=3, size=32, seed=4, cache_mb=0)
    for i in reversed(range(len(backward))):
        assert torch.equal(backward.load_image(i), imgs[i])
    # the cache hands out copies: mutating a result does not corrupt later reads
    forward.load_image(0).zero_()
    assert torch.equal(forward.load_image(0), imgs[0])
    # a bigger spec contains the smaller one: image (label, k) depends only on seed/label/k/size
    big = SyntheticIndex(ids=5, per_id=6, size=32, seed=4)
    for i in range(len(forward)):
        label, k = divmod(i, 3)
        assert torch.equal(big.load_image(label * 6 + k), imgs[i])
    # a pickled index (DataLoader workers) drops its cache and renders the same images
    clone = pickle.loads(pickle.dumps(forward))
    assert len(clone._cache) == 0
    assert torch.equal(clone.load_image(7), imgs[7])


def test_identity_params_stable_and_distinct():
    render_identity_params.cache_clear()
    p = render_identity_params(3, 1)
    render_identity_params.cache_clear()
    assert render_identity_params(3, 1) == p                      # recomputed, identical
    assert SyntheticIndex(ids=2, seed=3).identity_params(1) == p  # independent of ids
    others = [render_identity_params(3, j) for j in range(2, 12)]
    assert all(o != p for o in others)
    assert render_identity_params(4, 1) != p
    # identities differ in continuous geometry, not just by chance in one field
    widths = [o.head_a for o in others]
    assert np.std(widths) > 0.02


# ---------------------------------------------------------------- content and difficulty

def _stack(idx):
    return torch.stack([idx.load_image(i) for i in range(len(idx))])


def test_face_centre_follows_identity_skin_tone():
    """The face is drawn where expected: the centre patch brightness tracks each identity's skin."""
    from scipy.stats import spearmanr

    idx = SyntheticIndex(ids=30, per_id=6, size=32, seed=2)
    x = _stack(idx).float().reshape(30, 6, 3, 32, 32)
    centre = x[:, :, :, 13:19, 12:20].mean(dim=(1, 2, 3, 4)).numpy()    # around nose and cheeks
    skin = np.array([np.mean(idx.identity_params(j).skin) for j in range(30)])
    rho = spearmanr(centre, skin).statistic
    assert rho > 0.7, f"centre patch vs skin tone rank correlation {rho:.2f}"


def test_within_identity_variation_is_real():
    idx = SyntheticIndex(ids=6, per_id=8, size=32, seed=0)
    x = _stack(idx).float().reshape(6, 8, -1)
    within = (x - x.mean(dim=1, keepdim=True)).abs().mean().item()
    # uniform pixel noise of std sigma <= 12 has mean |deviation| <= 0.87 * 12 ~ 10 grey levels
    # (about 6 on average); pose, lighting, background and occlusions must add much more
    assert within > 20, f"mean within-identity deviation {within:.1f}"


@pytest.fixture(scope="module")
def split32():
    """ids=20, per_id=20, size=32: first 14 images of each identity train, last 6 test."""
    idx = SyntheticIndex(ids=20, per_id=20, size=32, seed=0)
    x = _stack(idx)
    y = torch.from_numpy(idx.labels)
    k = torch.arange(len(idx)) % 20
    return x, y, k < 14, k >= 14


def test_raw_pixel_nearest_neighbour_is_clearly_imperfect(split32):
    from sklearn.neighbors import KNeighborsClassifier

    x, y, tr, te = split32
    flat = x.flatten(1).float().numpy()
    knn = KNeighborsClassifier(n_neighbors=1).fit(flat[tr.numpy()], y[tr].numpy())
    acc = (knn.predict(flat[te.numpy()]) == y[te].numpy()).mean()
    # identity is visible in the pixels (well above 5% chance) but far from solved
    assert 0.1 < acc < 0.65, f"1-NN accuracy {acc:.2f}"


def test_small_cnn_learns_identities(split32):
    x, y, tr, te = split32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        ids = 20
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=2, padding=2), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, ids))
        xs = x.float() / 127.5 - 1.0
        xtr, ytr = xs[tr], y[tr]
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(12):
            net.train()
            perm = torch.randperm(len(xtr), generator=g)
            for b in range(0, len(xtr), 32):
                j = perm[b:b + 32]
                xb = xtr[j]
                flip = torch.rand(len(j), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                loss = torch.nn.functional.cross_entropy(net(xb), ytr[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(xs[te]).argmax(1) == y[te]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert acc >= 5 / ids, f"CNN held-out accuracy {acc:.2f} (chance {1 / ids:.2f})"


# ---------------------------------------------------------------- CLI

def _synth(tmp_path, out, *extra):
    from noisyfr.cli import main

    return main(["synth", "--ids", "2", "--per-id", "3", "--size", "24", "--seed", "9",
                 "--out", str(out), *extra])


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_cli_writes_imagefolder_deterministically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _synth(tmp_path, a) == 0
    (b).mkdir()                                   # an existing empty folder is fine
    assert _synth(tmp_path, b) == 0
    ta, tb = _tree(a), _tree(b)
    assert ta == tb                               # byte-identical, synth.json included
    assert sorted(ta) == ["id0000/000.png", "id0000/001.png", "id0000/002.png",
                          "id0001/000.png", "id0001/001.png", "id0001/002.png", "synth.json"]
    meta = json.loads(ta["synth.json"])
    assert {k: meta[k] for k in ("ids", "per_id", "size", "seed")} == \
        {"ids": 2, "per_id": 3, "size": 24, "seed": 9}
    from noisyfr import __version__
    assert meta["version"] == __version__
    idx = SyntheticIndex.from_spec(meta["spec"])
    for i, path in enumerate(idx.paths):
        with Image.open(a / path) as im:
            assert im.format == "PNG" and im.size == (24, 24)
        assert torch.equal(decode_image(ta[path]), idx.load_image(i))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_refuses_non_empty_out_and_bad_values(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _synth(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not empty" in err and len(err.strip().splitlines()) == 1
    assert _tree(out) == {"keep.txt": b"mine"}
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _synth(tmp_path, afile) == 2
    from noisyfr.cli import main
    assert main(["synth", "--ids", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--ids" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_cli_failure_leaves_nothing(tmp_path, monkeypatch):
    import noisyfr.data.synthetic as synthetic

    calls = {"n": 0}
    real = synthetic.encode_png

    def flaky(img):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")
        return real(img)

    monkeypatch.setattr(synthetic, "encode_png", flaky)
    with pytest.raises(OSError):
        from data_tools.synth import write_synthetic
        write_synthetic(tmp_path / "out", ids=2, per_id=3, size=24, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_render_image_matches_index():
    idx = SyntheticIndex(ids=2, per_id=2, size=20, seed=1)
    assert torch.equal(render_image(1, 1, 1, 20), idx.load_image(3))
    assert encode_png(idx.load_image(3)) == idx.read_bytes(3)


def test_written_folder_is_the_same_dataset_as_the_index(tmp_path):
    """Integration with the ImageFolder reader: same paths, labels, pixels and fingerprint."""
    from noisyfr.data import open_index
    from noisyfr.noise.manifest import content_fingerprint, fingerprint

    out = tmp_path / "ds"
    assert _synth(tmp_path, out) == 0
    folder = open_index(str(out))
    mem = open_index("synthetic:ids=2,per_id=3,size=24,seed=9")
    assert isinstance(mem, SyntheticIndex)
    assert list(folder.paths) == list(mem.paths) and folder.identities == mem.identities
    np.testing.assert_array_equal(folder.labels, mem.labels)
    assert fingerprint(folder) == fingerprint(mem)
    assert content_fingerprint(folder) == content_fingerprint(mem) is not None
    for i in range(len(mem)):
        assert torch.equal(folder.load_image(i), mem.load_image(i))


def test_render_image_rejects_bad_arguments():
    with pytest.raises(NoisyFRError, match="size"):
        render_image(0, 0, 0, 8)
    with pytest.raises(NoisyFRError, match="label"):
        render_image(0, -1, 0, 32)
