"""Verification sets: LFW pairs.txt (real fold 1), insightface .bin, and the restricted unpickler."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisyfr.data import load_pairs
from noisyfr.data.pairs import write_bin
from noisyfr.errors import NoisyFRError


def _lines(pairs_file: Path) -> list[list[str]]:
    return [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def test_lfw_fold1_pairs(lfw_pairs_file: Path):
    vset = load_pairs(lfw_pairs_file)
    images = lfw_pairs_file.parent / "images"
    on_disk = sorted(str(p) for p in images.rglob("*.jpg"))
    assert vset.num_pairs == 600 and vset.pairs.shape == (600, 2) and vset.pairs.dtype == np.int64
    assert vset.issame.dtype == bool and int(vset.issame.sum()) == 300
    assert vset.num_images == len(on_disk) == 807
    assert sorted(str(f) for f in vset.files) == on_disk
    # every pair against the text file, line by line
    lines = _lines(lfw_pairs_file)
    assert lines[0] == ["1", "300"]
    for (a, b), same, fields in zip(vset.pairs, vset.issame, lines[1:]):
        if len(fields) == 3:
            want = (f"{fields[0]}_{int(fields[1]):04d}.jpg", f"{fields[0]}_{int(fields[2]):04d}.jpg")
        else:
            want = (f"{fields[0]}_{int(fields[1]):04d}.jpg", f"{fields[2]}_{int(fields[3]):04d}.jpg")
        assert (vset.files[a].name, vset.files[b].name) == want
        assert same == (len(fields) == 3)
    img = vset.load_image(int(vset.pairs[0, 0]))
    assert img.dtype == torch.uint8 and img.shape == (3, 250, 250)


def test_pairs_header_optional_and_root(lfw_pairs_file: Path, tmp_path: Path):
    body = lfw_pairs_file.read_text().splitlines()[1:11]
    images = lfw_pairs_file.parent / "images"
    ref = None
    for header in ("", "10\t300\n", "1 300\n"):
        f = tmp_path / f"p{len(header)}.txt"
        f.write_text(header + "\n".join(body) + "\n")
        vset = load_pairs(f, root=images)
        assert vset.num_pairs == 10
        names = [(vset.files[a].name, vset.files[b].name) for a, b in vset.pairs]
        ref = ref or names
        assert names == ref


def test_pairs_missing_image_and_bad_lines(lfw_pairs_file: Path, tmp_path: Path):
    images = lfw_pairs_file.parent / "images"
    f = tmp_path / "pairs.txt"
    f.write_text("Abel_Pacheco\t1\t4\nNo_Such_Person\t1\t2\nAlso_Missing\t3\t4\n")
    with pytest.raises(NoisyFRError, match=r"No_Such_Person_0001\.jpg does not exist"):
        load_pairs(f, root=images)
    f.write_text("Abel_Pacheco\t1\n")
    with pytest.raises(NoisyFRError, match=r"pairs\.txt:1: expected"):
        load_pairs(f, root=images)
    f.write_text("Abel_Pacheco\tone\t4\n")
    with pytest.raises(NoisyFRError, match="not an integer"):
        load_pairs(f, root=images)
    with pytest.raises(NoisyFRError, match="does not exist"):
        load_pairs(tmp_path / "absent.bin")


def test_bin_round_trip_from_fold1(lfw_pairs_file: Path, tmp_path: Path):
    vset = load_pairs(lfw_pairs_file)
    out = write_bin(vset, tmp_path / "lfw.bin")
    assert [p.name for p in tmp_path.iterdir()] == ["lfw.bin"]
    # the file is the insightface format: a plain pickle of (list of bytes, list of bool)
    with open(out, "rb") as fh:
        raw_images, raw_same = pickle.load(fh)
    assert len(raw_images) == 1200 and raw_same == vset.issame.tolist()
    b = load_pairs(out)
    assert b.name == "lfw" and b.num_images == 1200 and b.num_pairs == 600
    np.testing.assert_array_equal(b.pairs, np.arange(1200).reshape(600, 2))
    np.testing.assert_array_equal(b.issame, vset.issame)
    for k in (0, 299, 300, 599):
        for j in (0, 1):
            assert b.read_bytes(2 * k + j) == vset.files[vset.pairs[k, j]].read_bytes()
    assert torch.equal(b.load_image(1), vset.load_image(int(vset.pairs[0, 1])))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_bin_pickle_protocols_and_bytearray(tmp_path: Path, protocol: int):
    imgs = [_jpeg(k) for k in range(4)]
    obj = ([imgs[0], bytearray(imgs[1]), imgs[2], imgs[3]], [True, False])
    f = tmp_path / "tiny.bin"
    f.write_bytes(pickle.dumps(obj, protocol=protocol))
    b = load_pairs(f)
    assert [b.read_bytes(i) for i in range(4)] == imgs
    assert b.issame.tolist() == [True, False]
    assert b.load_image(3).shape == (3, 8, 8)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_is_refused_and_runs_nothing(tmp_path: Path):
    # prove that the payload is live: a plain pickle.loads runs it and creates the file
    proof = tmp_path / "proof_plain_pickle_runs_it"
    pickle.loads(pickle.dumps(([_Evil(proof)], [])))
    assert proof.exists()

    marker = tmp_path / "pwned"
    f = tmp_path / "evil.bin"
    f.write_bytes(pickle.dumps(([_jpeg(0), _Evil(marker)], [True])))
    with pytest.raises(NoisyFRError, match=r"evil\.bin: refused.*system") as exc:
        load_pairs(f)
    assert "\n" not in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    np.zeros(3),                             # numpy: a global outside the allow-list
    {"images": [], "issame": []},            # wrong structure
    ([b"x", b"y", b"z"], [True]),            # 3 images for 1 pair
    ([b"x", b"y"], ["yes"]),                 # issame not bool
])
def test_bad_bin_contents(tmp_path: Path, payload):
    f = tmp_path / "bad.bin"
    f.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(NoisyFRError, match=r"bad\.bin"):
        load_pairs(f)


def test_builtins_outside_allow_list_and_garbage(tmp_path: Path):
    f = tmp_path / "eval.bin"
    # protocol-0 pickle calling builtins.eval("1+1") through REDUCE
    f.write_bytes(b"cbuiltins\neval\n(V1+1\ntR.")
    assert pickle.loads(f.read_bytes()) == 2  # the pickle is valid and would run eval
    with pytest.raises(NoisyFRError, match="refused.*builtins.eval"):
        load_pairs(f)
    f.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(NoisyFRError, match=r"eval\.bin: not a valid"):
        load_pairs(f)


def test_python2_style_bin(tmp_path: Path):
    """insightface's original .bin files are Python-2 pickles: images as BINSTRING (py2 str)."""
    imgs = [_jpeg(5), _jpeg(6)]
    raw = b"\x80\x02" + b"](" + b"".join(b"T" + len(b).to_bytes(4, "little") + b for b in imgs)
    raw += b"e" + b"]\x89a" + b"\x86."  # APPENDS, [False], TUPLE2, STOP
    f = tmp_path / "py2.bin"
    f.write_bytes(raw)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)  # the default ASCII decoding of py2 str fails on JPEG bytes
    b = load_pairs(f)
    assert [b.read_bytes(0), b.read_bytes(1)] == imgs and b.issame.tolist() == [False]
