"""The fast paths behind ``benchmarks/bench_noise.py`` give the same results as the plain ones.

- ``dumps_meta`` (C-encoder fast path) == ``json.dumps(..., indent=2, sort_keys=True)``;
- ``select_rounds`` (one repeat + one scatter) == a per-label reference loop over the same keys;
- ``RecordIOIndex.read_bytes`` (mmap slices) == the record bytes, after close/fork/pickle, and a
  ``.rec`` cut after opening is still reported as truncated;
- ``inject_to`` (background hashing / path gathering) still names a paths/labels mismatch;
- the benchmark itself runs at a small scale and prints its PASS/FAIL table.
"""
from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import inject_file, true_in_forked_child

from noisyfr.data.index import FaceIndex
from noisyfr.errors import NoisyFRError
from noisyfr.noise import draw as nz
from noisyfr.noise.manifest import dumps_meta

REPO = Path(__file__).resolve().parents[1]


def _json_ref(obj) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _random_json(rng: np.random.Generator, depth: int):
    kind = rng.integers(0, 9 if depth < 4 else 5)
    if kind == 0:
        return int(rng.integers(-10**12, 10**12))
    if kind == 1:
        return float(rng.normal() * 10.0 ** rng.integers(-8, 8))
    if kind == 2:
        alphabet = list("ab ,:\n\t\"\\é€{}[]") + ["\u2028", "😀", "\x00"]
        return "".join(rng.choice(alphabet, size=rng.integers(0, 8)))
    if kind == 3:
        return [None, True, False][rng.integers(0, 3)]
    if kind == 4:  # flat list of scalars (the fast path)
        return [_random_json(rng, 4) for _ in range(rng.integers(0, 6))]
    if kind in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    keys = [_random_json(rng, 4) if rng.random() < 0.1 else f"k{rng.integers(0, 50)}\n"
            for _ in range(rng.integers(0, 5))]
    keys = [k if isinstance(k, str) else str(k) for k in keys]
    return {k: _random_json(rng, depth + 1) for k in keys}


def test_dumps_meta_is_byte_identical_to_json_dumps():
    rng = np.random.default_rng(0)
    for _ in range(300):
        obj = {"root": _random_json(rng, 0), "classes": [f"id{k}" for k in range(rng.integers(0, 30))]}
        assert dumps_meta(obj) == _json_ref(obj)
    # shapes a sidecar really has: int-keyed dicts, tuples, empty containers, nested flat lists
    meta = {"partners": {"3": 4, "10": 2}, "counts": {"clean": 5, "open": 0}, "empty": [],
            "nothing": {}, "tuple": (1, 2.5, "x"), "holdout": {"labels": [], "identities": []},
            "nested": [[1, 2], [], {"a": [None]}], "intkeys": {2: "b", 1: "a"},
            "mixed": {"x": {1: [1, {"y": 2}]}}, "num": -0.0, "big": 1e300}
    assert dumps_meta(meta) == _json_ref(meta)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_dumps_meta_refuses_nan_like_json(bad):
    with pytest.raises(ValueError):
        _json_ref({"a": [1, bad]})
    with pytest.raises(ValueError):
        dumps_meta({"a": [1, bad]})
    with pytest.raises(ValueError):
        dumps_meta({"a": {"b": [[bad]]}})


def _select_rounds_reference(labels, rounds, seed, eligible=None):
    """Per-label loop: the same random keys, each label's samples sorted by key, rounds in turn."""
    rng = np.random.default_rng(seed)
    idx = np.arange(len(labels)) if eligible is None else np.flatnonzero(eligible)
    u = rng.random(len(idx))
    codes = np.zeros(len(labels), dtype=np.int8)
    for lab in np.unique(labels[idx]):
        members = np.flatnonzero(labels[idx] == lab)
        ranked = idx[members[np.argsort(u[members], kind="stable")]]
        start = 0
        for r, counts in enumerate(rounds):
            c = int(counts[lab]) if lab < len(counts) else 0
            codes[ranked[start:start + c]] = r + 1
            start += c
    return codes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_select_rounds_matches_per_label_reference(seed):
    rng = np.random.default_rng(100 + seed)
    k = 40
    labels = rng.integers(0, k, size=3000)
    eligible = rng.random(3000) < 0.7 if seed else None
    lab = labels if eligible is None else labels[eligible]
    sizes = np.bincount(lab, minlength=k)
    first = rng.integers(0, sizes + 1)
    second = rng.integers(0, sizes - first + 1)
    got = nz.select_rounds(labels, [first, second], np.random.default_rng(seed), eligible)
    ref = _select_rounds_reference(labels, [first, second], seed, eligible)
    np.testing.assert_array_equal(got, ref)
    sel = labels if eligible is None else np.where(eligible, labels, -1)
    for r, counts in enumerate([first, second]):
        np.testing.assert_array_equal(np.bincount(sel[got == r + 1], minlength=k), counts)
    if eligible is not None:
        assert not got[~eligible].any()


def test_select_rounds_refuses_counts_above_group_sizes():
    labels = np.array([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="exceed"):
        nz.select_rounds(labels, [np.array([1, 2]), np.array([1, 2])], np.random.default_rng(0))


# --------------------------------------------------------------------------- .rec via mmap

class _Bytes(FaceIndex):
    """Tiny index of given encoded images."""

    def __init__(self, images: list[bytes], labels: list[int]):
        self._images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.identities = [f"p{k}" for k in range(max(labels) + 1)]
        self.paths = [f"img/{k}" for k in range(len(images))]
        self.source = "<bytes>"

    def read_bytes(self, i):
        return self._images[i]


@pytest.fixture()
def small_rec(tmp_path: Path):
    import io

    from PIL import Image

    from noisyfr.data import pack_index

    rng = np.random.default_rng(0)
    images = []
    for _ in range(12):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    labels = [k % 3 for k in range(12)]
    pack_index(_Bytes(images, labels), tmp_path / "train", progress=False)
    order = np.argsort(labels, kind="stable")  # pack groups the records by label
    return tmp_path / "train.rec", [images[j] for j in order]


def test_rec_read_bytes_from_map_after_close_fork_and_pickle(small_rec):
    from noisyfr.data import RecordIOIndex

    rec_path, expected = small_rec
    ix = RecordIOIndex(rec_path)
    assert [ix.read_bytes(i) for i in range(len(ix))] == expected
    assert ix.read_bytes(-1) == expected[-1]
    ix.close()
    assert ix._mm is None and ix.read_bytes(3) == expected[3]  # re-mapped on demand
    # a forked child maps the file again in its own generation
    assert true_in_forked_child(
        lambda: [ix.read_bytes(i) for i in range(len(ix))] == expected and ix._mm_gen != -1)
    clone = pickle.loads(pickle.dumps(ix))
    assert clone._mm is None and [clone.read_bytes(i) for i in range(len(ix))] == expected
    ix.close()
    clone.close()


def test_rec_cut_after_opening_is_reported_truncated(small_rec):
    from noisyfr.data import RecordIOIndex

    rec_path, expected = small_rec
    ix = RecordIOIndex(rec_path)  # offsets checked against the full file
    whole = rec_path.read_bytes()
    last_end = ix._img_start[-1] + ix._img_len[-1]
    rec_path.write_bytes(whole[:last_end - 5])  # cut inside the last image, before the first read
    assert ix.read_bytes(0) == expected[0]
    with pytest.raises(NoisyFRError, match=r"train\.rec: truncated: record rec/12"):
        ix.read_bytes(len(ix) - 1)
    ix.close()
    rec_path.write_bytes(b"")  # emptied before the next map: refused, not a crash
    with pytest.raises(NoisyFRError, match=r"train\.rec: cannot map"):
        ix.read_bytes(0)
    ix.close()


# --------------------------------------------------------------------------- inject

class _Labels(FaceIndex):
    def __init__(self, labels, paths):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.identities = [f"i{k}" for k in range(int(self.labels.max()) + 1)]
        self.paths = paths
        self.source = "<labels>"


@pytest.mark.parametrize("opts", [dict(closed=0.2), dict(closed=0.2, open=0.2, holdout_ids=2)])
def test_inject_names_paths_labels_mismatch_despite_background_work(tmp_path, opts):
    labels = np.repeat(np.arange(10), 5)
    index = _Labels(labels, [f"p{k}" for k in range(len(labels) - 1)])  # one path short
    with pytest.raises(NoisyFRError, match="49 paths but 50 labels"):
        inject_file(index, tmp_path / "m.parquet", seed=0, **opts)
    assert list(tmp_path.iterdir()) == []


def test_inject_same_bytes_in_repeated_runs(tmp_path):
    labels = np.repeat(np.arange(30), 7)
    index = _Labels(labels, [f"p/{k}" for k in range(len(labels))])
    outliers = _Labels(np.repeat(np.arange(4), 3), [f"o/{k}" for k in range(12)])
    outliers.identities = [f"o{k}" for k in range(4)]
    blobs = []
    for run in range(3):
        out = tmp_path / f"m{run}.parquet"
        df, meta = inject_file(index, out, closed=0.2, open=0.1, outliers=outliers, seed=5,
                                command="cmd")
        blobs.append((out.read_bytes(), Path(str(out) + ".json").read_bytes()))
        assert (df["source"] == "outliers").sum() == round(0.1 * len(labels))
        assert df["path"].str.startswith("o/").sum() == round(0.1 * len(labels))
        assert json.loads(blobs[-1][1]) == meta
    assert blobs[0] == blobs[1] == blobs[2]


def test_benchmark_runs_small_and_prints_the_table(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_noise
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert bench_noise.main(["--samples", "20000", "--ids", "500", "--outlier-ids", "50",
                             "--per-outlier", "4", "--rec-images", "300", "--repeat", "1",
                             "--rec-data", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "torch imported: " in out and "synthetic 112x112 JPEGs" in out
    for metric in ("run 1 wall (s)", "peak RSS (MiB)", ".rec read_bytes / f.read 1 MiB chunks"):
        line = next(line for line in out.splitlines() if metric in line)
        assert line.rstrip().endswith(("PASS", "FAIL"))


def test_outlier_index_with_paths_labels_mismatch_is_named(tmp_path):
    labels = np.repeat(np.arange(10), 5)
    index = _Labels(labels, [f"p{k}" for k in range(len(labels))])
    outliers = _Labels(np.repeat(np.arange(3), 4), [f"o{k}" for k in range(11)])  # one path short
    outliers.source, outliers.identities = "<outliers>", ["x0", "x1", "x2"]
    with pytest.raises(NoisyFRError, match=r"<outliers>: 11 paths but 12 labels"):
        inject_file(index, tmp_path / "m.parquet", open=0.2, outliers=outliers, seed=0)
    assert list(tmp_path.iterdir()) == []
