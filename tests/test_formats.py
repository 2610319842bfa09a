"""Real face formats: ImageFolder, insightface RecordIO (reader + `noisyfr pack`), open_index.

RecordIO expectations are built by hand from the dmlc-core format description
(magic, lrecord = cflag << 29 | length, payload, zero padding; IRHeader '<IfQQ'), not with the
writer under test.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import true_in_forked_child
from PIL import Image

from noisyfr.cli import main as cli_main
from noisyfr.data import open_index
from noisyfr.data.folder import ImageFolderIndex
from noisyfr.data.recordio import RecordIOIndex
from noisyfr.data.recordio_pack import encode_record, pack_index
from noisyfr.errors import NoisyFRError

MAGIC = struct.pack("<I", 0xCED7230A)
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# helpers (independent of the code under test)
# ---------------------------------------------------------------------------------------------
def _png(value: int, size=(6, 5)) -> bytes:
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _pil_rgb(data_or_path) -> np.ndarray:
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def _rec_bytes(payload: bytes) -> bytes:
    """A single-part record as the format description defines it (no magic inside payload)."""
    assert MAGIC not in payload
    pad = (-len(payload)) % 4
    return MAGIC + struct.pack("<I", len(payload)) + payload + b"\0" * pad


def _ir(flag: int, label: float, rid: int, extra=()) -> bytes:
    return struct.pack("<IfQQ", flag, label, rid, 0) + struct.pack(f"<{len(extra)}f", *extra)


def _write_rec(prefix: Path, records: dict[int, bytes], idx: bool = True) -> None:
    """Write records (key -> already-encoded record bytes) in key order plus the .idx."""
    data, lines, pos = [], [], 0
    for key in sorted(records):
        lines.append(f"{key}\t{pos}\n")
        data.append(records[key])
        pos += len(records[key])
    Path(str(prefix) + ".rec").write_bytes(b"".join(data))
    if idx:
        Path(str(prefix) + ".idx").write_text("".join(lines))


def _no_partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    """Two real identities in four formats plus things that must be ignored."""
    root = tmp_path / "faces"
    (root / "bob").mkdir(parents=True)
    (root / "alice").mkdir()
    (root / "empty_id").mkdir()
    (root / ".hidden_id").mkdir()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    img.save(root / "bob" / "b.png")
    img.convert("L").save(root / "bob" / "a.pgm")
    img.convert("P").save(root / "alice" / "z.gif")
    img.save(root / "alice" / "y.JPG", format="JPEG", quality=95)
    img.save(root / ".hidden_id" / "x.png")
    img.save(root / "alice" / ".hidden.png")
    (root / "alice" / "notes.txt").write_text("not an image")
    img.save(root / "loose_at_root.png")
    return root


# ---------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------
def test_imagefolder_layout_and_decoding(tiny_folder: Path):
    ix = open_index(tiny_folder)
    assert isinstance(ix, ImageFolderIndex)
    assert ix.identities == ["alice", "bob"]
    assert ix.paths == ["alice/y.JPG", "alice/z.gif", "bob/a.pgm", "bob/b.png"]
    assert ix.labels.dtype == np.int64 and ix.labels.tolist() == [0, 0, 1, 1]
    assert len(ix) == 4 and ix.source == str(tiny_folder)
    for i, rel in enumerate(ix.paths):
        assert ix.read_bytes(i) == (tiny_folder / rel).read_bytes()
        img = ix.load_image(i)
        assert img.dtype == torch.uint8 and img.shape == (3, 7, 9)
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), _pil_rgb(tiny_folder / rel))


def test_orl_pgm_index(orl_dir: Path):
    ix = open_index(orl_dir)
    assert len(ix) == 400 and ix.num_identities == 40
    assert sorted(ix.identities) == ix.identities
    assert set(ix.identities) == {f"s{k}" for k in range(1, 41)}
    assert np.bincount(ix.labels).tolist() == [10] * 40
    for i in (0, 137, 399):
        ident, fname = ix.paths[i].split("/")
        assert ix.identities[ix.labels[i]] == ident and fname.endswith(".pgm")
        img = ix.load_image(i)
        assert img.shape == (3, 112, 92)
        np.testing.assert_array_equal(img[0].numpy(), _pil_rgb(orl_dir / ix.paths[i])[..., 0])


def test_lfw_jpeg_index(lfw_train_dir: Path):
    ix = open_index(str(lfw_train_dir))
    names = sorted(d.name for d in lfw_train_dir.iterdir() if d.is_dir())
    assert ix.identities == names and len(ix) == 840
    for i in (0, 839):
        assert ix.paths[i].startswith(ix.identities[ix.labels[i]] + "/")
        assert ix.load_image(i).shape == (3, 250, 250)


def test_jpeg_decodes_with_torchvision_to_pil_pixels(lfw_train_dir: Path, monkeypatch):
    """JPEG goes through torchvision's decode_jpeg: the same pixels as PIL (colour, greyscale,
    CMYK); other formats and broken JPEGs through PIL, whose error names the file."""
    from noisyfr.data import decode_images
    from noisyfr.data import index as index_mod

    used = []
    real = index_mod._torchvision_jpeg
    monkeypatch.setattr(index_mod, "_torchvision_jpeg", lambda *a, **k: used.append(1) or real(*a, **k))
    files = sorted(lfw_train_dir.glob("*/*.jpg"))[::40]
    first = Image.open(files[0])
    extra = []
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        first.convert(mode).save(buf, "JPEG", quality=85)
        extra.append(buf.getvalue())
    datas = [f.read_bytes() for f in files] + extra
    got = decode_images(datas)
    assert len(used) == len(datas)                          # every JPEG went through torchvision
    for data, img in zip(datas, got):
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), want)
    used.clear()
    png = _png(3)
    assert torch.equal(decode_images([png])[0].permute(1, 2, 0),
                       torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"))))
    assert not used                                         # not a JPEG: PIL only
    for broken in (datas[0][:len(datas[0]) // 2], datas[0][:200] + bytes(300)):
        with pytest.raises(NoisyFRError, match=r"face\.jpg: corrupt or unreadable image"):
            decode_images([datas[1], broken], names=["ok.jpg", "face.jpg"])


def test_corrupt_image_error_names_file_or_is_skipped(tiny_folder: Path):
    bad = tiny_folder / "bob" / "c_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tiny_folder / "bob" / "d_text.jpg").write_text("this is not a jpeg")
    ix = open_index(tiny_folder)
    assert len(ix) == 6
    i = ix.paths.index("bob/c_broken.png")
    with pytest.raises(NoisyFRError, match="c_broken.png"):
        ix.load_image(i)
    ok = open_index(tiny_folder, skip_corrupt=True)
    assert ok.skipped == 2 and len(ok) == 4
    assert sorted(ok.skipped_paths) == ["bob/c_broken.png", "bob/d_text.jpg"]
    for k in range(len(ok)):
        ok.load_image(k)


def _claiming(fmt: str, width: int, height: int) -> bytes:
    """A real 4x4 image whose header is patched to claim ``width`` x ``height`` pixels (a
    decompression bomb in a few hundred bytes): PNG's IHDR (and its CRC), or JPEG's SOF0."""
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    if fmt == "PNG":
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = [("PNG", 100_000, 100_000), ("JPEG", 60_000, 60_000),   # past twice PIL's limit: PIL raises
         ("PNG", 10_000, 10_000), ("JPEG", 10_000, 10_000)]     # past the limit only: PIL just warns


@pytest.mark.parametrize("fmt, width, height", BOMBS)
def test_decompression_bomb_is_one_line_naming_the_file(tiny_folder: Path, monkeypatch, fmt, width, height):
    import noisyfr.data.index as index_mod

    name = f"bomb.{fmt.lower()}"
    (tiny_folder / "bob" / name).write_bytes(_claiming(fmt, width, height))
    decoded = []  # torchvision's decode_jpeg would allocate the claimed pixels: never reached
    monkeypatch.setattr(index_mod, "_torchvision_jpeg", lambda *a, **k: decoded.append(a))
    ix = open_index(tiny_folder)
    with pytest.raises(NoisyFRError) as info:
        ix.load_image(ix.paths.index(f"bob/{name}"))
    msg = str(info.value)
    assert msg.startswith(str(tiny_folder / "bob" / name)) and "\n" not in msg
    assert f"image too large: its header claims {width * height} pixels" in msg
    assert f"MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}" in msg
    assert decoded == []
    ok = open_index(tiny_folder, skip_corrupt=True)  # a bomb is a bad file: skipped, not decoded
    assert ok.skipped_paths == [f"bob/{name}"]


def test_pack_refuses_a_decompression_bomb(tiny_folder: Path, tmp_path: Path, capsys):
    (tiny_folder / "bob" / "bomb.png").write_bytes(_claiming("PNG", 100_000, 100_000))
    dest = tmp_path / "packed"
    assert cli_main(["pack", str(tiny_folder), "--out", str(dest / "train")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "bob/bomb.png" in err and "10000000000 pixels" in err
    assert _no_partial_files(dest) == []


def test_bad_folders(tmp_path: Path):
    with pytest.raises(NoisyFRError, match="does not exist"):
        open_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoisyFRError, match="no images"):
        open_index(tmp_path / "empty")
    (tmp_path / "only_text" / "id").mkdir(parents=True)
    (tmp_path / "only_text" / "id" / "a.txt").write_text("x")
    with pytest.raises(NoisyFRError, match="only_text"):
        open_index(tmp_path / "only_text")
    (tmp_path / "file.csv").write_text("a,b")
    with pytest.raises(NoisyFRError, match="file.csv"):
        open_index(tmp_path / "file.csv")


def test_scan_does_not_decode(tmp_path: Path, monkeypatch):
    root = tmp_path / "r"
    for k in range(3):
        (root / f"id{k}").mkdir(parents=True)
        (root / f"id{k}" / "0.jpg").write_bytes(b"not decoded at index time")
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("image opened at index time"))
    ix = open_index(root)
    assert len(ix) == 3


# ---------------------------------------------------------------------------------------------
# RecordIO: encoding, hand-built files in both layouts, multi-part records
# ---------------------------------------------------------------------------------------------
def test_encode_record_matches_format_description():
    assert encode_record(b"abcde") == MAGIC + struct.pack("<I", 5) + b"abcde\0\0\0"
    assert encode_record(b"") == MAGIC + struct.pack("<I", 0)
    # magic at aligned positions 4 and 12 splits the payload; at position 1 it does not
    payload = b"\x01\x02\x03\x04" + MAGIC + b"\x05\x06\x07\x08" + MAGIC + b"\x09"
    expected = (MAGIC + struct.pack("<I", (1 << 29) | 4) + b"\x01\x02\x03\x04"
                + MAGIC + struct.pack("<I", (2 << 29) | 4) + b"\x05\x06\x07\x08"
                + MAGIC + struct.pack("<I", (3 << 29) | 1) + b"\x09\0\0\0")
    assert encode_record(payload) == expected
    unaligned = b"\x00" + MAGIC + b"\x00\x00\x00"
    assert encode_record(unaligned) == MAGIC + struct.pack("<I", 8) + unaligned


def test_read_hand_built_arcface_layout(tmp_path: Path):
    imgs = [_png(k) for k in range(5)]
    labels = [0.0, 0.0, 1.0, 2.0, 2.0]
    recs = {0: _rec_bytes(_ir(2, 0.0, 0, (6.0, 9.0)))}
    for k, (img, lab) in enumerate(zip(imgs, labels), start=1):
        recs[k] = _rec_bytes(_ir(0, lab, k) + img)
    for j, (a, b) in enumerate([(1, 3), (3, 4), (4, 6)]):
        recs[6 + j] = _rec_bytes(_ir(2, 0.0, 6 + j, (float(a), float(b))))
    _write_rec(tmp_path / "train", recs)
    (tmp_path / "property").write_text("3,5,6\n")
    ix = open_index(tmp_path / "train.rec")
    assert isinstance(ix, RecordIOIndex) and ix.layout == "arcface"
    assert ix.labels.dtype == np.int64 and ix.labels.tolist() == [0, 0, 1, 2, 2]
    assert ix.identities == ["id0", "id1", "id2"]
    assert ix.paths == [f"rec/{k}" for k in range(1, 6)]
    for i in range(5):
        assert ix.read_bytes(i) == imgs[i]
        np.testing.assert_array_equal(ix.load_image(i).permute(1, 2, 0).numpy(), _pil_rgb(imgs[i]))
    # the same set opened from the folder and from the prefix
    assert open_index(tmp_path).labels.tolist() == ix.labels.tolist()
    assert len(open_index(str(tmp_path / "train"))) == 5


def test_read_hand_built_im2rec_layout_with_multipart(tmp_path: Path):
    # image payloads that hold the magic at 4-aligned payload positions -> multi-part records
    weird = b"ABCD" + MAGIC + b"EFGH" + MAGIC + MAGIC + b"xy"
    imgs = [_png(10), weird, _png(11), _png(12)]
    labels = [4.0, 1.0, 0.0, 4.0]
    recs = {}
    for k, (img, lab) in enumerate(zip(imgs, labels)):
        if k == 2:  # a multi-label header (flag 2): the first label counts
            payload = _ir(2, 0.0, k, (lab, 9.0)) + img
        else:
            payload = _ir(0, lab, k) + img
        recs[k] = encode_record(payload) if k == 1 else _rec_bytes(payload)
    # hand check of the multi-part encoding of record 1: 24-byte header + 'ABCD' then magic
    assert recs[1][:8] == MAGIC + struct.pack("<I", (1 << 29) | 28)
    _write_rec(tmp_path / "data", recs)
    ix = open_index(tmp_path / "data.idx")
    assert ix.layout == "im2rec"
    assert ix.labels.tolist() == [4, 1, 0, 4]
    assert ix.identities == [f"id{k}" for k in range(5)]
    assert [ix.read_bytes(i) for i in range(4)] == imgs
    assert ix.read_record(1) == _ir(0, 1.0, 1) + weird
    # without the .idx the records are found by a sequential scan
    os.remove(tmp_path / "data.idx")
    again = RecordIOIndex(tmp_path / "data.rec")
    assert [again.read_bytes(i) for i in range(4)] == imgs


def test_reader_works_after_fork(tmp_path: Path, tiny_folder: Path):
    pack_index(open_index(tiny_folder), tmp_path / "t", progress=False)
    ix = open_index(tmp_path / "t.rec")
    expected = [ix.read_bytes(i) for i in range(len(ix))]  # parent opened its descriptor
    assert true_in_forked_child(
        lambda: [ix.read_bytes(i) for i in range(len(ix))] == expected and ix._fd_gen != -1)
    assert [ix.read_bytes(i) for i in range(len(ix))] == expected
    clone = pickle.loads(pickle.dumps(ix))  # spawn-style workers get a fresh descriptor
    assert clone._fd is None and [clone.read_bytes(i) for i in range(len(ix))] == expected


def test_rec_skip_corrupt(tiny_folder: Path, tmp_path: Path):
    (tiny_folder / "bob" / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    summary = pack_index(open_index(tiny_folder), tmp_path / "t", verify=False, progress=False)
    assert summary["images"] == 5
    with pytest.raises(NoisyFRError, match=r"rec/5"):  # keys: alice y, z; bob a, b, c_broken
        open_index(tmp_path / "t.rec").load_image(4)
    ix = open_index(tmp_path / "t.rec", skip_corrupt=True)
    assert ix.skipped == 1 and len(ix) == 4 and "rec/5" not in ix.paths
    for i in range(len(ix)):
        ix.load_image(i)


# ---------------------------------------------------------------------------------------------
# pack: round trip on real LFW, layout check by hand, bad input
# ---------------------------------------------------------------------------------------------
def test_pack_lfw_round_trip_byte_identical(lfw_train_dir: Path, tmp_path: Path):
    src = open_index(lfw_train_dir)
    summary = pack_index(src, tmp_path / "lfw" / "train", progress=False)
    assert summary["images"] == 840 and summary["identities"] == 84
    assert sorted(p.name for p in (tmp_path / "lfw").iterdir()) == ["property", "train.idx",
                                                                    "train.rec"]
    assert (tmp_path / "lfw" / "property").read_text().strip() == "84,250,250"
    rec = open_index(tmp_path / "lfw" / "train.rec")
    assert rec.layout == "arcface" and len(rec) == 840
    assert rec.identities == src.identities
    np.testing.assert_array_equal(rec.labels, src.labels)
    for i in range(len(src)):
        assert rec.read_bytes(i) == (lfw_train_dir / src.paths[i]).read_bytes()
    # insightface's reading of the header record, done by hand on the raw file
    raw = (tmp_path / "lfw" / "train.rec").read_bytes()
    idx = dict(tuple(map(int, line.split("\t"))) for line in
               (tmp_path / "lfw" / "train.idx").read_text().splitlines())
    assert raw[idx[0]:idx[0] + 4] == MAGIC
    flag, _, _, _, first_id, end_id = struct.unpack_from("<IfQQff", raw, idx[0] + 8)
    assert (flag, first_id, end_id) == (2, 841.0, 925.0)
    # identity record of label 3: its image range holds exactly that identity's images
    flag, _, _, _, a, b = struct.unpack_from("<IfQQff", raw, idx[841 + 3] + 8)
    assert b - a == 10
    for key in range(int(a), int(b)):
        f, lab = struct.unpack_from("<If", raw, idx[key] + 8)
        assert f == 0 and lab == 3.0


def test_pack_cli_ok_and_bad_input(tiny_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert cli_main(["pack", str(tiny_folder), "--out", str(out / "train")]) == 0
    assert len(open_index(out / "train.rec")) == 4
    # the deprecated positional form; deterministic bytes
    assert cli_main(["pack", str(tiny_folder), str(out / "again")]) == 0
    for ext in (".rec", ".idx"):
        assert (out / f"again{ext}").read_bytes() == (out / f"train{ext}").read_bytes()
    # bad inputs: exit status 2, one-line error naming the input, no output file at all
    (tmp_path / "empty").mkdir()
    (tiny_folder / "bob" / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cases = [(tmp_path / "missing", "missing"), (tmp_path / "empty", "empty"),
             (tiny_folder, "c_broken.png")]
    for k, (src, named) in enumerate(cases):
        dest = tmp_path / f"bad{k}"
        capsys.readouterr()
        assert cli_main(["pack", str(src), "--out", str(dest / "train")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("noisyfr pack: error:") and named in err and "\n" not in err
        assert _no_partial_files(dest) == []
    dest = tmp_path / "skipping"
    assert cli_main(["pack", "--skip-corrupt", str(tiny_folder), "--out", str(dest / "train")]) == 0
    assert "skipped 1 corrupt" in capsys.readouterr().out
    assert len(open_index(dest / "train.rec")) == 4


def test_pack_entry_point_subprocess(tmp_path: Path):
    exe = Path(sys.executable).with_name("noisyfr")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "noisyfr"]
    proc = subprocess.run(cmd + ["pack", str(tmp_path / "nothing"), "--out", str(tmp_path / "o" / "t")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "nothing" in proc.stderr
    assert not (tmp_path / "o").exists() or _no_partial_files(tmp_path / "o") == []


# ---------------------------------------------------------------------------------------------
# damaged RecordIO files
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def packed(tiny_folder: Path, tmp_path: Path) -> Path:
    pack_index(open_index(tiny_folder), tmp_path / "p" / "train", progress=False)
    return tmp_path / "p"


def test_truncated_rec_is_refused(packed: Path, capsys):
    rec = packed / "train.rec"
    whole = rec.read_bytes()
    rec.write_bytes(whole[:len(whole) // 2])  # cut inside the images: later offsets dangle
    with pytest.raises(NoisyFRError, match=r"train\.idx: offset .* past the end .*truncated"):
        open_index(rec)
    rec.write_bytes(whole[:-6])  # cut inside the last record
    with pytest.raises(NoisyFRError, match=r"train\.rec: truncated"):
        open_index(rec)
    out = packed.parent / "repacked"
    assert cli_main(["pack", str(rec), "--out", str(out / "x")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert _no_partial_files(out) == []


def test_idx_offset_past_end_is_refused(packed: Path):
    rec = packed / "train.rec"
    size = rec.stat().st_size
    lines = (packed / "train.idx").read_text().splitlines()
    lines[2] = f"2\t{size + 100}"
    (packed / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(NoisyFRError, match=r"train\.idx: offset .* past the end"):
        open_index(rec)


def test_idx_pointing_inside_a_record_is_refused(packed: Path):
    lines = (packed / "train.idx").read_text().splitlines()
    key, off = lines[1].split("\t")
    lines[1] = f"{key}\t{int(off) + 4}"
    (packed / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(NoisyFRError, match="not the start of a record"):
        open_index(packed / "train.rec")


@pytest.mark.parametrize("text, needle", [
    ("2000000000,112,112", "claims 2000000000 classes, but the records' labels and identity records show 2"),
    ("3,112,112", "claims 3 classes"),
    ("inf,112,112", "num_classes: expected an integer, got 'inf'"),
    ("nan,112,112", "num_classes: expected an integer, got 'nan'"),
    ("2,0,112", "height: must be >= 1, got 0"),
    ("2," + "9" * 5000, "expected 'num_classes,height,width'"),
])
def test_property_is_checked_against_the_labels(packed: Path, capsys, text, needle):
    prop = packed / "property"
    assert prop.read_text().split(",")[0] == "2"  # the packed tiny folder: 2 identities
    prop.write_text(text + "\n")
    with pytest.raises(NoisyFRError) as info:
        open_index(packed / "train.rec")
    assert str(info.value).startswith(f"{prop}: ") and needle in str(info.value)
    assert len(str(info.value)) < 300
    out = packed.parent / "repacked"
    assert cli_main(["pack", str(packed / "train.rec"), "--out", str(out / "x")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(prop) in err
    assert _no_partial_files(out) == []


def test_property_may_claim_fewer_classes_than_the_labels(packed: Path):
    (packed / "property").write_text("1,7,9\n")  # stale metadata: the labels decide
    ix = open_index(packed / "train.rec")
    assert ix.num_identities == 2 and ix.property == (1, 7, 9)


def test_record_label_beyond_any_dataset_is_refused(tmp_path: Path):
    recs = {k: _rec_bytes(_ir(0, lab, k) + _png(k)) for k, lab in enumerate([0.0, 3e9])}
    _write_rec(tmp_path / "huge", recs)
    with pytest.raises(NoisyFRError, match=r"huge\.rec: record 1 has label 3e\+09, beyond the limit of "
                                           r"16777216 identities"):
        open_index(tmp_path / "huge.rec")


def test_garbage_rec_and_idx(tmp_path: Path):
    (tmp_path / "g.rec").write_bytes(b"\x00" * 64)
    (tmp_path / "g.idx").write_text("hello world\n")
    with pytest.raises(NoisyFRError, match=r"g\.idx"):
        open_index(tmp_path / "g.rec")
    (tmp_path / "g.idx").write_text("0\t0\n")
    with pytest.raises(NoisyFRError, match=r"g\.rec: no RecordIO magic at byte 0"):
        open_index(tmp_path / "g.rec")
    with pytest.raises(NoisyFRError, match="synthetic"):
        open_index(tmp_path / "nothing_here")
