"""IJB-B/C 1:1 verification on a small IJB-format fixture built here from synthetic identities.

The fixture: each face is a rendered 112x112 synthetic image taken as aligned to the arcface
template, placed into a larger "loose crop" by a random similarity; its 5 landmarks are the
template points moved by that similarity (plus a little noise). Every number of ``noisyfr eval
--ijb`` is checked against a computation written here: alignment by a least-squares similarity
and scipy's bilinear sampling, features by plain forward passes, media/template pooling by
dictionaries, scores by dot products, TAR at FAR by walking the ROC point by point.
"""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage.transform import AffineTransform, warp

from noisyfr.cli import main
from noisyfr.data.render import render_image
from noisyfr.errors import NoisyFRError
from noisyfr.eval.align import ARCFACE_TEMPLATE, align_face, similarity_matrix
from noisyfr.models import create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOOSE = 220            # loose-crop side: the whole aligned window stays inside it
IDS, TEMPLATES_PER_ID, FACES_PER_TEMPLATE = 8, 3, 3
FARS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


# ---------------------------------------------------------------- the fixture
def similarity(scale: float, angle: float, shift) -> np.ndarray:
    """3x3 matrix: template frame -> loose-crop frame."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    centre = np.array([56.0, 56.0])
    t = np.array([LOOSE / 2, LOOSE / 2]) + np.asarray(shift) - np.array([[c, -s], [s, c]]) @ centre
    return np.array([[c, -s, t[0]], [s, c, t[1]], [0, 0, 1.0]])


def build_ijb(root: Path, target: str = "ijbc", seed: int = 0) -> dict:
    """Write an IJB folder; return the ground truth (faces, templates, medias, scores, pairs...)."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    faces = []  # (name, template, media, landmarks [5, 2], score)
    originals = {}
    tid = 0
    for ident in range(IDS):
        for _ in range(TEMPLATES_PER_ID):
            tid += 1
            for f in range(FACES_PER_TEMPLATE):
                k = len(originals)
                face = render_image(seed, ident, k, 112).permute(1, 2, 0).numpy()
                m = similarity(rng.uniform(1.0, 1.25), rng.uniform(-0.35, 0.35), rng.uniform(-8, 8, 2))
                loose = warp(face, AffineTransform(matrix=np.linalg.inv(m)), output_shape=(LOOSE, LOOSE),
                             order=1, preserve_range=True)
                name = f"{k}.png"
                Image.fromarray(np.rint(loose).astype(np.uint8)).save(root / "loose_crop" / name)
                marks = ARCFACE_TEMPLATE @ m[:2, :2].T + m[:2, 2] + rng.normal(0, 0.3, (5, 2))
                media = 1 + min(f, 1)          # faces 0 and 1 share media 1, face 2 is media 2:
                faces.append((name, tid, media, marks, float(rng.uniform(0.3, 1.0))))
                originals[name] = face         # media ids repeat across templates, on purpose
    # the first face of every identity also appears in its last template (as in IJB-C)
    for ident in range(IDS):
        first = faces[ident * TEMPLATES_PER_ID * FACES_PER_TEMPLATE]
        faces.append((first[0], (ident + 1) * TEMPLATES_PER_ID, 7, first[3], first[4]))
    tids = sorted({f[1] for f in faces})
    subject = {t: (t - 1) // TEMPLATES_PER_ID for t in tids}
    pairs = [(a, b, int(subject[a] == subject[b])) for i, a in enumerate(tids) for b in tids[i + 1:]]
    rng.shuffle(pairs)
    with open(root / "meta" / f"{target}_face_tid_mid.txt", "w") as fh:
        fh.writelines(f"{n} {t} {m}\n" for n, t, m, _, _ in faces)
    with open(root / "meta" / f"{target}_name_5pts_score.txt", "w") as fh:
        fh.writelines(f"{n} " + " ".join(f"{v:.4f}" for v in lm.ravel()) + f" {s:.6f}\n"
                      for n, _, _, lm, s in faces)
    with open(root / "meta" / f"{target}_template_pair_label.txt", "w") as fh:
        fh.writelines(f"{a} {b} {y}\n" for a, b, y in pairs)
    return {"faces": faces, "pairs": np.array(pairs), "originals": originals}


@pytest.fixture(scope="module")
def ijb(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    truth = build_ijb(root)
    ckpt = root.parent / "ijb_model.pt"
    torch.manual_seed(0)
    model = create_backbone("small_cnn", embedding_dim=32, image_size=112, width=0.25)
    config = {"model": {"backbone": "small_cnn", "embedding_dim": 32, "width": 0.25},
              "data": {"image_size": 112, "center_crop": 1.0}}
    torch.save({"config": config, "model": model.state_dict(), "epoch": 1}, ckpt)
    return root, truth, ckpt, model.eval()


# ---------------------------------------------------------------- independent computations
def lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """x' = a x - b y + tx, y' = b x + a y + ty fitted by least squares (4 unknowns)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty], [0, 0, 1.0]])


def crop_by_hand(image: np.ndarray, marks: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(lstsq_similarity(marks, ARCFACE_TEMPLATE))
    ys, xs = np.mgrid[0:112, 0:112].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    out = np.stack([ndimage.map_coordinates(image[..., c].astype(np.float64), [sy, sx], order=1,
                                            mode="grid-constant", cval=0.0) for c in range(3)], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def features_by_hand(model, crops: list[np.ndarray], scores, flip=True, norm=True, det=True):
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    x = (x / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        f = model(x) + (model(torch.flip(x, dims=[3])) if flip else 0)
    f = f.double().numpy()
    if not norm:
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
    if det:
        f = f * np.asarray(scores)[:, None]
    return f


def tar_table_by_hand(faces, feats, pairs) -> tuple[list[float], float]:
    media = defaultdict(list)
    for (_, t, m, _, _), f in zip(faces, feats):
        media[(t, m)].append(f)
    template = defaultdict(float)
    for (t, _), fs in media.items():
        template[t] = template[t] + np.mean(fs, axis=0)
    template = {t: v / np.linalg.norm(v) for t, v in template.items()}
    scores = np.array([float(np.dot(template[a], template[b])) for a, b, _ in pairs])
    labels = pairs[:, 2].astype(bool)
    # the ROC point by point: accept everything scoring >= each distinct score, highest first ...
    n_pos, n_neg = labels.sum(), (~labels).sum()
    walk = [(np.sum((scores >= s) & ~labels), np.sum((scores >= s) & labels))
            for s in sorted(set(scores.tolist()), reverse=True)]
    # ... keeping the corners only, as sklearn's roc_curve(drop_intermediate=True) that insightface
    # calls: a point stays when the step into it differs from the step out of it (first and last stay)
    step = [None] + [(b[0] - a[0], b[1] - a[1]) for a, b in zip(walk, walk[1:])]
    kept = [p for i, p in enumerate(walk) if i in (0, len(walk) - 1) or step[i] != step[i + 1]]
    points = [(0.0, 0.0)] + [(fp / n_neg, tp / n_pos) for fp, tp in kept]
    tars = []
    for far in FARS:
        best = min(abs(fpr - far) for fpr, _ in points)
        tars.append(max(tpr for fpr, tpr in points if abs(fpr - far) == best))
    pos, neg = scores[labels], scores[~labels]
    auc = float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
    return tars, auc


# ---------------------------------------------------------------- alignment
def test_alignment_puts_landmarks_on_the_template():
    """Bright dots drawn at 5 landmarks of a rotated, scaled, shifted face land on the template."""
    m = similarity(1.6, 0.4, (12, -9))
    marks = ARCFACE_TEMPLATE @ m[:2, :2].T + m[:2, 2]
    ys, xs = np.mgrid[0:LOOSE, 0:LOOSE]
    img = np.zeros((LOOSE, LOOSE, 3), np.uint8)
    for x, y in marks:
        img[..., 1] = np.maximum(img[..., 1], 255 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18.0))
    crop = align_face(img, marks).astype(np.float64)[..., 1]
    for x, y in ARCFACE_TEMPLATE:
        r0, c0 = int(round(y)), int(round(x))
        win = crop[r0 - 6:r0 + 7, c0 - 6:c0 + 7]
        wy, wx = np.mgrid[r0 - 6:r0 + 7, c0 - 6:c0 + 7]
        assert (wx * win).sum() / win.sum() == pytest.approx(x, abs=0.1)
        assert (wy * win).sum() / win.sum() == pytest.approx(y, abs=0.1)
    np.testing.assert_allclose(similarity_matrix(marks), np.linalg.inv(m), atol=1e-9)
    with pytest.raises(NoisyFRError, match="face.png: need 5 finite"):
        align_face(img, np.full((5, 2), np.nan), where="face.png")
    with pytest.raises(NoisyFRError, match="degenerate"):
        align_face(img, np.ones((5, 2)))


def test_fixture_crops_match_hand_alignment_and_recover_the_face(ijb):
    from noisyfr.eval.ijb import AlignedFaces
    from noisyfr.eval.ijb_meta import read_ijb_meta

    root, truth, _, _ = ijb
    meta = read_ijb_meta(root, "ijbc")
    assert meta.num_faces == len(truth["faces"]) and len(meta.labels) == len(truth["pairs"])
    faces = AlignedFaces(meta)
    for i in (0, 5, 40, len(truth["faces"]) - 1):
        name, _, _, marks, _ = truth["faces"][i]
        loose = np.asarray(Image.open(root / "loose_crop" / name).convert("RGB"))
        ours = np.rint((faces[i].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).astype(np.int64)
        by_hand = crop_by_hand(loose, marks).astype(np.int64)
        assert np.abs(ours - by_hand).max() <= 1 and np.mean(ours != by_hand) < 0.01
        # the alignment undoes the placement: the crop is the rendered face again, closer to it
        # than the face is to itself moved by 2 pixels (interpolation blurs, pixel noise remains)
        face = truth["originals"][name].astype(np.int64)
        inner = np.s_[8:104, 8:104]
        err = np.abs(ours[inner] - face[inner]).mean()
        moved = np.abs(np.roll(face, (2, 2), axis=(0, 1))[inner] - face[inner]).mean()
        assert err < 0.5 * moved


# ---------------------------------------------------------------- end to end
@pytest.mark.parametrize("flags", [[], ["--no-flip", "--no-norm-score", "--no-detector-score"]])
def test_ijb_cli_matches_independent_computation(ijb, tmp_path, flags, capsys):
    from noisyfr.eval.ijb import AlignedFaces
    from noisyfr.eval.ijb_meta import read_ijb_meta

    root, truth, ckpt, model = ijb
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", str(ckpt), "--ijb", str(root), "--target", "IJBC",
               "--out", str(out), "--device", "cpu", "--batch-size", "16", *flags])
    assert rc == 0, capsys.readouterr().err
    table = pd.read_csv(out / "ijb_ijbc.csv")
    assert list(table.columns) == ["far", "tar"] and table["far"].tolist() == pytest.approx(FARS)
    summary = json.loads((out / "ijb_ijbc.json").read_text())
    default = not flags
    assert summary["mode"] == {"flip": default, "norm_score": default, "detector_score": default}
    assert summary["counts"]["templates"] == IDS * TEMPLATES_PER_ID
    assert summary["counts"]["impostor"] == len(truth["pairs"]) - IDS * 3   # 3 pairs per identity
    with Image.open(out / "ijb_ijbc_roc.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    # independent: pooling, scores and the ROC reading by hand, on this library's crops ...
    faces = AlignedFaces(read_ijb_meta(root, "ijbc"))
    crops = [np.rint((faces[i].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).astype(np.uint8)
             for i in range(len(faces))]
    scores = [f[4] for f in truth["faces"]]
    feats = features_by_hand(model, crops, scores, flip=default, norm=default, det=default)
    tars, auc = tar_table_by_hand(truth["faces"], feats, truth["pairs"])
    assert table["tar"].tolist() == pytest.approx(tars, abs=1e-12)
    assert summary["auc"] == pytest.approx(auc, abs=1e-9)
    # ... and on crops aligned by hand (differ by at most one grey level here and there)
    hand = [crop_by_hand(np.asarray(Image.open(root / "loose_crop" / f[0]).convert("RGB")), f[3])
            for f in truth["faces"]]
    _, auc2 = tar_table_by_hand(truth["faces"], features_by_hand(
        model, hand, scores, flip=default, norm=default, det=default), truth["pairs"])
    assert auc2 == pytest.approx(auc, abs=2e-3)
    assert 0.5 < auc < 1.0 and len(set(tars)) > 1          # the fixture separates, imperfectly
    text = capsys.readouterr().out
    assert "IJBC TAR@FAR" in text and "1e-06" in text


def test_tar_reads_the_nearest_roc_point():
    """insightface's reading: the ROC point whose FPR is nearest the target, even above it."""
    from noisyfr.eval.ijb import tar_at_fars

    pos = [0.9, 0.7, 0.5, 0.3]
    neg = [0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01]
    labels = np.r_[np.ones(4, int), np.zeros(10, int)]
    res = tar_at_fars(labels, np.r_[pos, neg], fars=(1e-6, 0.12, 0.18, 0.5))
    # ROC: (0, .25) (.1, .25) (.1, .5) (.2, .5) (.2, .75) (.3, .75) (.3, 1) ...
    assert res["tar"] == [0.25, 0.5, 0.75, 1.0]       # 0.18 -> FPR 0.2 (TPR 0.75), not 0.1
    assert res["auc"] == pytest.approx(np.mean([[p > n for n in neg] for p in pos]))
    # a run of impostors keeps its corners only: (0, .5) [(.25, .5) (.5, .5) dropped] (.75, .5)
    # (.75, 1) (1, 1), so FAR 0.6 reads FPR 0.75 and its largest TPR, 1.0 (the full curve: 0.5)
    res = tar_at_fars(np.array([1, 1, 0, 0, 0, 0]), np.array([0.9, 0.5, 0.8, 0.7, 0.6, 0.4]),
                      fars=(0.3, 0.6))
    assert res["tar"] == [0.5, 1.0]


def copy_ijb(root: Path, dest: Path) -> Path:
    shutil.copytree(root / "meta", dest / "meta")
    (dest / "loose_crop").symlink_to(root / "loose_crop")
    return dest


def edit_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case, match", [
    ("no_pairs", "ijbc_template_pair_label.txt: no such IJB meta file"),
    ("columns", "ijbc_face_tid_mid.txt:3: expected 3 columns"),
    ("no_faces", "template 999 has no faces in ijbc_face_tid_mid.txt"),
    ("nan", "ijbc_name_5pts_score.txt: face 2 (1.png): landmark or detector score is NaN"),
    ("not_int", "ijbc_template_pair_label.txt:1: column 3 is 'x'"),
    ("image", "1.png does not exist"),
    ("order", "face 1 is '0.png', but face 1 of ijbc_face_tid_mid.txt is '1.png'"),
])
def test_ijb_bad_meta_is_one_line_exit_2_no_output(ijb, tmp_path, capsys, case, match):
    root, truth, ckpt, _ = ijb
    bad = copy_ijb(root, tmp_path / "bad")
    meta = bad / "meta"
    faces, marks = meta / "ijbc_face_tid_mid.txt", meta / "ijbc_name_5pts_score.txt"
    pairs = meta / "ijbc_template_pair_label.txt"
    if case == "no_pairs":
        pairs.unlink()
    elif case == "columns":
        edit_line(faces, 3, "2.png 1")
    elif case == "no_faces":
        edit_line(pairs, 5, "1 999 0")
    elif case == "nan":
        line = marks.read_text().splitlines()[1].split()
        edit_line(marks, 2, " ".join(line[:3] + ["nan"] + line[4:]))
    elif case == "not_int":
        edit_line(pairs, 1, "1 2 x")
    elif case == "image":
        (bad / "loose_crop").unlink()
        (bad / "loose_crop").mkdir()
        (bad / "loose_crop" / "0.png").symlink_to(root / "loose_crop" / "0.png")
    elif case == "order":
        edit_line(faces, 1, "1.png 1 1")
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", str(ckpt), "--ijb", str(bad), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("noisyfr eval: error:") and "\n" not in err, err
    assert match in err
    assert not out.exists()


def test_ijb_needs_out_and_a_known_target(ijb, tmp_path, capsys):
    root, _, ckpt, _ = ijb
    assert main(["eval", "--checkpoint", str(ckpt), "--ijb", str(root), "--device", "cpu"]) == 2
    assert "--ijb: needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", str(ckpt), "--ijb", str(root), "--target", "IJBA", "--out",
              str(tmp_path / "o")])
    assert exc.value.code == 2
    # IJBB reads the ijbb_* files, which this folder does not have
    assert main(["eval", "--checkpoint", str(ckpt), "--ijb", str(root), "--target", "ijbb", "--out",
                 str(tmp_path / "o")]) == 2
    assert "ijbb_face_tid_mid.txt: no such IJB meta file" in capsys.readouterr().err


def test_ijb_corrupt_image_in_a_worker_is_named(ijb, tmp_path, capsys):
    root, _, ckpt, _ = ijb
    bad = copy_ijb(root, tmp_path / "bad")
    (bad / "loose_crop").unlink()
    shutil.copytree(root / "loose_crop", bad / "loose_crop")
    (bad / "loose_crop" / "3.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", str(ckpt), "--ijb", str(bad), "--out", str(out), "--device", "cpu",
               "--num-workers", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"{bad / 'loose_crop' / '3.png'}: corrupt or unreadable" in err, err
    assert not out.exists()
