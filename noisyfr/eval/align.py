"""Face alignment from 5 landmarks: the similarity transform onto insightface's arcface template.

Landmarks are ``[5, 2]`` pixel coordinates ``(x, y)`` of the left eye, right eye, nose tip, left
and right mouth corners (image left/right), pixel centres at integer coordinates. The transform
is the least-squares similarity (rotation, uniform scale, translation; Umeyama) from the
landmarks to :data:`ARCFACE_TEMPLATE`, estimated by scikit-image; the crop is the image warped by
it with bilinear interpolation and black outside the image, as insightface's ``norm_crop``.
"""
from __future__ import annotations

import numpy as np

from noisyfr.errors import NoisyFRError

#: insightface's arcface landmark template for a 112x112 crop (x, y)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963],
                             [73.5318, 51.5014],
                             [56.0252, 71.7366],
                             [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)


def template(size: int = 112) -> np.ndarray:
    """The arcface template for a ``size`` x ``size`` crop (scaled from 112)."""
    return ARCFACE_TEMPLATE * (size / 112.0)


def similarity_matrix(landmarks: np.ndarray, size: int = 112, where: str = "landmarks") -> np.ndarray:
    """3x3 matrix of the similarity transform taking ``landmarks`` [5, 2] onto the template.

    NoisyFRError naming ``where`` for landmarks that are not 5 finite points or from which no
    similarity can be estimated (all points equal).
    """
    from skimage.transform import SimilarityTransform

    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise NoisyFRError(f"{where}: need 5 finite (x, y) landmarks, got {pts.tolist()}")
    dst = template(size)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(pts, dst)
        ok = bool(tform)
    else:  # pragma: no cover - older scikit-image
        tform = SimilarityTransform()
        ok = tform.estimate(pts, dst)
    matrix = np.asarray(getattr(tform, "params", np.full((3, 3), np.nan)), dtype=np.float64)
    if not ok or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise NoisyFRError(f"{where}: no similarity transform fits these landmarks (degenerate points)")
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112,
               where: str = "landmarks") -> np.ndarray:
    """The aligned ``size`` x ``size`` crop (uint8 [size, size, 3]) of an RGB uint8 image [H, W, 3]."""
    from skimage.transform import AffineTransform, warp

    matrix = similarity_matrix(landmarks, size, where)
    inverse = AffineTransform(matrix=np.linalg.inv(matrix))
    out = warp(np.asarray(image), inverse, output_shape=(size, size), order=1, mode="constant",
               cval=0.0, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
