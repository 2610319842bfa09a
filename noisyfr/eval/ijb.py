"""IJB-B / IJB-C 1:1 template verification under insightface's protocol.

1. every face of ``<t>_name_5pts_score.txt`` is aligned to a 112x112 crop from its 5 landmarks
   (:func:`noisyfr.eval.align.align_face`) and embedded; with ``flip`` (default) its feature is
   ``model(x) + model(flip(x))``;
2. ``norm_score`` (default) keeps the feature's norm, otherwise the feature is L2-normalised;
   ``detector_score`` (default) multiplies it by the face's detector score;
3. media pooling: the mean feature of each (template, media); template pooling: the sum of its
   media features, L2-normalised;
4. the score of a template pair is the cosine of its template features;
5. ROC over the pair list (``sklearn.metrics.roc_curve`` with ``drop_intermediate=True``, as
   insightface calls it: the points in the middle of straight runs are dropped, corners kept),
   AUC, and TAR at FAR 1e-6 ... 1e-1 as insightface reads it: the TPR of the kept ROC point whose
   FPR is nearest to the target (among equally near points, the largest TPR). The point read can
   lie above the target, and, as the middle of a run of impostors is dropped, it can be the corner
   at the run's end rather than the point nearest on the full curve. With N impostor pairs FARs
   below 1/N are out of resolution and read the ROC point at FPR 0.

The defaults are insightface's (``use_flip_test``, ``use_norm_score``, ``use_detector_score`` all on).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from noisyfr.errors import NoisyFRError
from noisyfr.eval.ijb_meta import IJBMeta

#: the FAR targets of the IJB table
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class AlignedFaces(Dataset):
    """The faces of an IJB target as aligned, normalised tensors [3, S, S] in [-1, 1]."""

    def __init__(self, meta: IJBMeta, image_size: int = 112):
        self.meta, self.image_size = meta, int(image_size)

    def __len__(self) -> int:
        return self.meta.num_faces

    def __getitem__(self, i: int) -> torch.Tensor:
        from noisyfr.data.index import IMAGE_ERRORS, image_error, open_image
        from noisyfr.eval.align import align_face

        path = self.meta.image_dir / self.meta.names[i]
        try:
            with open_image(path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except IMAGE_ERRORS as exc:
            raise image_error(str(path), exc) from None
        crop = align_face(rgb, self.meta.landmarks[i], self.image_size, where=str(path))
        x = torch.from_numpy(crop).permute(2, 0, 1).float()
        return (x / 255.0 - 0.5) / 0.5


def face_features(model: torch.nn.Module, meta: IJBMeta, *, image_size: int = 112,
                  flip: bool = True, norm_score: bool = True, detector_score: bool = True,
                  batch_size: int = 64, device: str | torch.device = "cpu",
                  num_workers: int = 0) -> np.ndarray:
    """float32 [N, d]: the feature of every face, before pooling (steps 1-2 of the protocol)."""
    from noisyfr.eval.embed import embed_dataset

    feats, _ = embed_dataset(model, AlignedFaces(meta, image_size), flip=flip, normalize=not norm_score,
                             batch_size=batch_size, device=device, num_workers=num_workers,
                             desc=f"embed {meta.target}")
    if detector_score:
        feats = feats * meta.scores[:, None].astype(np.float32)
    return feats


def pool_templates(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                   chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids, features)``: sorted unique template ids and their L2-normalised features,
    each the sum over the template's media of the mean feature of that media's faces."""
    feats = np.asarray(feats)
    keys = np.stack([np.asarray(templates, np.int64), np.asarray(medias, np.int64)], axis=1)
    pairs, face_to_media = np.unique(keys, axis=0, return_inverse=True)
    face_to_media = torch.from_numpy(face_to_media.reshape(-1))
    media = torch.zeros(len(pairs), feats.shape[1], dtype=torch.float64)
    for s in range(0, len(feats), chunk):  # float64 sums without a float64 copy of every face
        media.index_add_(0, face_to_media[s:s + chunk], torch.from_numpy(feats[s:s + chunk]).double())
    media /= torch.bincount(face_to_media, minlength=len(pairs)).unsqueeze(1).double()
    tids, media_to_template = np.unique(pairs[:, 0], return_inverse=True)
    tfeat = torch.zeros(len(tids), feats.shape[1], dtype=torch.float64).index_add_(
        0, torch.from_numpy(media_to_template.reshape(-1)), media)
    tfeat = torch.nn.functional.normalize(tfeat, dim=1)
    return tids, tfeat.numpy()


def pair_scores(tids: np.ndarray, tfeats: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                chunk: int = 1 << 16) -> np.ndarray:
    """float64 [P]: the cosine of the template features of each pair (``tids`` sorted)."""
    i1, i2 = np.searchsorted(tids, t1), np.searchsorted(tids, t2)
    out = np.empty(len(t1), dtype=np.float64)
    for s in range(0, len(t1), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", tfeats[i1[s:s + chunk]], tfeats[i2[s:s + chunk]])
    return out


def tar_at_fars(labels: np.ndarray, scores: np.ndarray, fars=IJB_FARS) -> dict[str, Any]:
    """ROC (``fpr``, ``tpr``), ``auc`` and ``tar`` (one per target FAR, insightface's reading)."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores), drop_intermediate=True)
    tars = []
    for far in fars:
        dist = np.abs(fpr - far)
        near = np.flatnonzero(dist == dist.min())
        tars.append(float(tpr[near].max()))
    return {"fpr": fpr, "tpr": tpr, "auc": float(auc(fpr, tpr)), "far": list(fars), "tar": tars}


@dataclass
class IJBResult:
    """What an IJB evaluation measured."""

    target: str
    far: list[float]
    tar: list[float]
    auc: float
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    counts: dict[str, int] = field(default_factory=dict)
    mode: dict[str, bool] = field(default_factory=dict)

    def table(self) -> str:
        """The TAR@FAR row as text (percent)."""
        head = "  ".join(f"{f:>7.0e}" for f in self.far)
        row = "  ".join(f"{100 * t:>7.2f}" for t in self.tar)
        return (f"{self.target} TAR@FAR %   {head}   AUC\n"
                f"{' ' * len(self.target)}              {row}   {self.auc:.4f}")


def evaluate_ijb(model: torch.nn.Module, meta: IJBMeta, *, image_size: int = 112, flip: bool = True,
                 norm_score: bool = True, detector_score: bool = True, batch_size: int = 64,
                 device: str | torch.device = "cpu", num_workers: int = 0) -> IJBResult:
    """The whole protocol on one target (``meta`` from :func:`noisyfr.eval.ijb_meta.read_ijb_meta`)."""
    feats = face_features(model, meta, image_size=image_size, flip=flip, norm_score=norm_score,
                          detector_score=detector_score, batch_size=batch_size, device=device,
                          num_workers=num_workers)
    if not np.isfinite(feats).all():
        raise NoisyFRError(f"{meta.target}: the backbone gave NaN or infinite features")
    tids, tfeats = pool_templates(feats, meta.templates, meta.medias)
    scores = pair_scores(tids, tfeats, meta.pair_t1, meta.pair_t2)
    roc = tar_at_fars(meta.labels, scores)
    counts = {"faces": meta.num_faces, "templates": int(len(tids)), "pairs": int(len(scores)),
              "genuine": int(meta.labels.sum()), "impostor": int(len(scores) - meta.labels.sum())}
    mode = {"flip": flip, "norm_score": norm_score, "detector_score": detector_score}
    return IJBResult(meta.target, roc["far"], roc["tar"], roc["auc"], roc["fpr"], roc["tpr"], scores,
                     counts, mode)


def _draw_roc(result: IJBResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    try:
        ax.plot(np.maximum(result.fpr, 1e-7), result.tpr, lw=1.2,
                label=f"{result.target} (AUC = {100 * result.auc:.2f} %)")
        ax.plot(result.far, result.tar, "o", ms=4, label="TAR at the target FARs")
        ax.set_xscale("log")
        ax.set_xlim(1e-6, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(f"ROC on {result.target} 1:1 ({result.counts.get('pairs', 0)} template pairs)")
        ax.grid(True, which="both", ls="--", lw=0.5)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120, format="png")
    finally:
        plt.close(fig)


def write_ijb(result: IJBResult, out_dir: str | os.PathLike, extra: dict | None = None) -> dict[str, Path]:
    """Write ``ijb_<t>.csv`` (columns ``far``, ``tar``), ``ijb_<t>_roc.png`` and ``ijb_<t>.json``
    (AUC, counts, mode, ``extra``) into ``out_dir``; all three are written to temporary files
    first and renamed together, so a failure leaves none. Returns the paths."""
    import pandas as pd

    from noisyfr.io import atomic_path

    out = Path(out_dir)
    stem = f"ijb_{result.target.lower()}"
    paths = {"csv": out / f"{stem}.csv", "roc": out / f"{stem}_roc.png", "json": out / f"{stem}.json"}
    summary = {"target": result.target, "auc": result.auc if math.isfinite(result.auc) else None,
               "tar_at_far": {f"{f:.0e}": t for f, t in zip(result.far, result.tar)},
               "counts": result.counts, "mode": result.mode, **(extra or {})}
    with atomic_path(paths["csv"]) as csv, atomic_path(paths["roc"]) as png, \
            atomic_path(paths["json"]) as js:
        pd.DataFrame({"far": result.far, "tar": result.tar}).to_csv(csv, index=False)
        _draw_roc(result, png)
        js.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return paths
