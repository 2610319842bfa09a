"""NoisyDataset and read_manifest: loading rows, fingerprint checks, validation, workers."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import inject_file
from PIL import Image
from torch.utils.data import DataLoader

from noisyfr.data import open_index
from noisyfr.data.transforms import face_transform
from noisyfr.errors import NoisyFRError
from noisyfr.noise import NoisyDataset, read_manifest
from noisyfr.noise.manifest import write_manifest


@pytest.fixture(scope="module")
def orl_manifest(orl, lfw_train_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("man") / "m.parquet"
    inject_file(orl, out, closed=0.2, open=0.1, outliers=lfw_train_dir, split=1, merge=1, seed=0)
    return out


def test_items_follow_the_manifest(orl, lfw, orl_manifest):
    ds = NoisyDataset(orl, orl_manifest)
    df, meta = read_manifest(orl_manifest)
    assert len(ds) == len(df) == 400 and ds.num_classes == meta["num_classes"] == 41
    assert np.array_equal(ds.labels, df["label"].to_numpy())
    assert np.array_equal(ds.orig_labels, df["orig_label"].to_numpy())
    assert list(ds.noise) == df["noise"].tolist()
    for i in [0, 17, 399]:
        img, label, idx = ds[i]
        assert idx == i and label == df["label"][i]
        if df["noise"][i] != "open":
            assert torch.equal(img, orl.load_image(df["source_index"][i]))
    opens = np.flatnonzero(df["noise"] == "open")
    img, label, idx = ds[int(opens[0])]
    k = df["source_index"][opens[0]]
    assert torch.equal(img, lfw.load_image(k))  # an LFW JPEG, 250x250
    assert img.shape == (3, 250, 250) and label == df["label"][opens[0]]


def test_no_manifest_means_clean(orl):
    ds = NoisyDataset(orl, None, transform=face_transform(32))
    assert ds.num_classes == 40 and not ds.is_noisy().any()
    img, label, idx = ds[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert float(img.min()) >= -1 and float(img.max()) <= 1
    assert label == orl.labels[5] and idx == 5


def test_dataframe_meta_pair_and_fingerprint_mismatch(orl, lfw, orl_manifest):
    df, meta = read_manifest(orl_manifest)
    ds = NoisyDataset(orl, (df, meta))
    assert np.array_equal(ds.labels, df["label"].to_numpy())
    with pytest.raises(NoisyFRError, match="fingerprint") as exc:
        NoisyDataset(lfw, orl_manifest)
    assert str(orl_manifest) in str(exc.value) and str(lfw.source) in str(exc.value)
    bad = dict(meta, fingerprint={"samples": 400, "sha256": "0" * 64})
    with pytest.raises(NoisyFRError, match="fingerprint"):
        NoisyDataset(orl, (df, bad))


def test_dataloader_workers_and_pickle(orl, orl_manifest):
    ds = NoisyDataset(orl, orl_manifest, transform=face_transform(24))
    clone = pickle.loads(pickle.dumps(ds))
    a, b = clone[3], ds[3]
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    loader = DataLoader(torch.utils.data.Subset(ds, list(range(0, 400, 40))), batch_size=5, num_workers=1)
    batches = list(loader)
    idx = torch.cat([bt[2] for bt in batches])
    labels = torch.cat([bt[1] for bt in batches])
    assert idx.tolist() == list(range(0, 400, 40))
    assert labels.tolist() == ds.labels[::40].tolist()
    assert batches[0][0].shape == (5, 3, 24, 24)


def _write(tmp_path, df, meta, name="m.parquet"):
    """Write a (possibly invalid) manifest directly with pandas, bypassing write_manifest's checks."""
    out = tmp_path / name
    if name.endswith(".csv"):
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    (tmp_path / (name + ".json")).write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("mutate,needle", [
    (lambda df, meta: df.drop(columns=["noise"]), "missing columns"),
    (lambda df, meta: df.assign(noise=df["noise"].replace("clean", "dirty")), "unknown noise"),
    (lambda df, meta: df.assign(label=df["label"] + 1000), "out of range"),
    (lambda df, meta: df.assign(index=df["index"][::-1].to_numpy()), "'index'"),
    (lambda df, meta: df.assign(orig_label=-1), "-1"),
])
def test_read_manifest_rejects_bad_tables(orl_manifest, tmp_path, mutate, needle):
    df, meta = read_manifest(orl_manifest)
    for name in ("m.parquet", "m.csv"):
        out = _write(tmp_path, mutate(df, meta), meta, name)
        with pytest.raises(NoisyFRError, match=needle) as exc:
            read_manifest(out)
        assert str(out) in str(exc.value)


def test_read_manifest_missing_or_corrupt_files(orl_manifest, tmp_path):
    with pytest.raises(NoisyFRError, match="not found"):
        read_manifest(tmp_path / "none.parquet")
    df, meta = read_manifest(orl_manifest)
    out = _write(tmp_path, df, meta)
    (tmp_path / "m.parquet.json").unlink()
    with pytest.raises(NoisyFRError, match="sidecar"):
        read_manifest(out)
    (tmp_path / "m.parquet.json").write_text("{not json")
    with pytest.raises(NoisyFRError, match="JSON"):
        read_manifest(out)
    (tmp_path / "m.parquet.json").write_text(json.dumps(meta))
    out.write_bytes(b"garbage")
    with pytest.raises(NoisyFRError, match="not a readable manifest") as exc:
        read_manifest(out)
    assert str(out) in str(exc.value)


def test_minimal_manifest_without_extra_columns(orl, tmp_path):
    from noisyfr.noise import fingerprint

    labels = np.asarray(orl.labels)
    df = pd.DataFrame({"index": np.arange(400), "path": list(orl.paths),
                       "identity": [orl.identities[k] for k in labels],
                       "orig_label": labels, "label": (labels + 1) % 40,
                       "noise": ["closed"] * 400})
    meta = {"num_classes": 40, "fingerprint": {"samples": 400, "sha256": fingerprint(orl)}}
    out = write_manifest(df, meta, tmp_path / "mini.csv")
    with pytest.warns(UserWarning, match=r"mini\.csv: the sidecar's fingerprint has no 'content'"):
        ds = NoisyDataset(orl, out)  # an older manifest: paths and labels checked, not pixels
    img, label, i = ds[10]
    assert label == (labels[10] + 1) % 40 and torch.equal(img, orl.load_image(10))


def test_fingerprint_matches_a_direct_sha256():
    import hashlib

    from noisyfr.noise import fingerprint

    class Labels:  # a duck-typed index
        paths = [f"id{k % 97}/{k}.jpg" if k % 5 else f"é{k}" for k in range(150_000)]  # non-ASCII too
        labels = np.arange(150_000, dtype=np.int64) % 97

    encoded = [p.encode("utf-8") for p in Labels.paths]
    ends = np.cumsum([len(e) for e in encoded]).astype("<i8")
    h = hashlib.sha256(b"noisyfr-fingerprint-v2\x00" + np.int64(150_000).tobytes() + ends.tobytes()
                       + b"".join(encoded) + Labels.labels.astype("<i8").tobytes())
    assert fingerprint(Labels()) == h.hexdigest()
    Labels.labels = Labels.labels.copy()
    Labels.labels[0] = 1
    assert fingerprint(Labels()) != h.hexdigest()


def test_fingerprint_covers_pixels_of_a_sample(tmp_path):
    from noisyfr.data import SyntheticIndex
    from noisyfr.noise.manifest import CONTENT_SAMPLES

    # same paths and labels, other pixels: a manifest for seed=1 is refused on seed=0 data
    out = tmp_path / "m.parquet"
    inject_file(open_index("synthetic:ids=6,per_id=5,size=16,seed=1"), out, closed=0.2, seed=0)
    _, meta = read_manifest(out)
    assert len(meta["fingerprint"]["content"]) == 64
    NoisyDataset(SyntheticIndex(ids=6, per_id=5, size=16, seed=1), out)
    with pytest.raises(NoisyFRError) as info:
        NoisyDataset(SyntheticIndex(ids=6, per_id=5, size=16, seed=0), out)
    msg = str(info.value)
    assert msg.startswith(f"{out}: fingerprint does not match the dataset synthetic:ids=6,per_id=5,size=16,seed=0")
    assert "same paths and labels, but the pixels of the sampled images differ" in msg
    # a folder: changing the pixels of a sampled image (the first is always one) is caught
    root = tmp_path / "faces"
    for k in range(2):
        (root / f"p{k}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * k + j, dtype=np.uint8)).save(root / f"p{k}" / f"{j}.png")
    inject_file(open_index(root), tmp_path / "f.parquet", closed=0.5, seed=0)
    Image.fromarray(np.full((8, 8, 3), 99, dtype=np.uint8)).save(root / "p0" / "0.png")
    with pytest.raises(NoisyFRError, match="pixels of the sampled images differ"):
        NoisyDataset(open_index(root), tmp_path / "f.parquet")
    assert CONTENT_SAMPLES >= 2


def test_sidecar_content_must_be_a_string(orl, orl_manifest):
    df, meta = read_manifest(orl_manifest)
    bad = dict(meta, fingerprint=dict(meta["fingerprint"], content=123))
    with pytest.raises(NoisyFRError, match="sidecar 'fingerprint' must be"):
        NoisyDataset(orl, (df, bad))


def test_outliers_passed_in_memory(orl, lfw, tmp_path):
    # outliers given as an opened index (no folder needed); a different one is refused
    from noisyfr.data import SyntheticIndex

    pool = SyntheticIndex(ids=3, per_id=4, size=16, seed=1)
    out = tmp_path / "m.parquet"
    inject_file(orl, out, open=0.05, outliers=pool, seed=0)
    ds = NoisyDataset(orl, out, outliers=pool)
    i = int(np.flatnonzero(ds.noise == "open")[0])
    img, _, _ = ds[i]
    assert torch.equal(img, pool.load_image(int(ds.manifest["source_index"][i])))
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[i][0], img)
    with pytest.raises(NoisyFRError, match="fingerprint"):
        NoisyDataset(orl, out, outliers=SyntheticIndex(ids=3, per_id=5, size=16, seed=1))
