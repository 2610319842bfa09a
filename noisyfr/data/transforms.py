"""Image preprocessing shared by training and evaluation.

Input: uint8 RGB tensor [3, H, W]. Output: float32 [3, S, S] in [-1, 1] ((x/255 - 0.5) / 0.5, the
insightface convention). ``center_crop`` (a fraction of the shorter side, 1.0 = none) is the cheap
stand-in for alignment on unaligned photos such as LFW's 250x250 originals (about 0.6 keeps the face).
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def face_transform(image_size: int = 112, center_crop: float = 1.0, train: bool = False,
                   flip: bool = True, crop_jitter: float = 0.0) -> v2.Compose:
    """Preprocessing for a backbone that takes ``image_size`` x ``image_size`` inputs.

    ``train=True`` adds a random horizontal flip (when ``flip``) and, with ``crop_jitter`` > 0, a
    random square crop of the (centre-cropped) image whose side is a uniform fraction in
    [1 - crop_jitter, 1] of the full side, at a random position; evaluation is deterministic.
    """
    if not 0.0 < center_crop <= 1.0:
        raise ValueError(f"center_crop: must be in (0, 1], got {center_crop}")
    if not 0.0 <= crop_jitter < 1.0:
        raise ValueError(f"crop_jitter: must be in [0, 1), got {crop_jitter}")
    steps: list = []
    if center_crop < 1.0:
        steps.append(_CenterFraction(center_crop))
    if train and crop_jitter > 0:
        steps.append(_RandomSquareCrop(1.0 - crop_jitter))
    steps.append(v2.Resize((image_size, image_size), antialias=True))
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    return v2.Compose(steps)


class _CenterFraction(torch.nn.Module):
    def __init__(self, fraction: float):
        super().__init__()
        self.fraction = fraction

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        side = max(1, int(round(min(h, w) * self.fraction)))
        return v2.functional.center_crop(img, [side, side])


class _RandomSquareCrop(torch.nn.Module):
    """A square crop whose side is a uniform fraction in [min_fraction, 1] of the shorter side, at a
    uniform position (drawn from torch's global generator, seeded per epoch by the trainer)."""

    def __init__(self, min_fraction: float):
        super().__init__()
        self.min_fraction = min_fraction

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        u = torch.rand(3).tolist()
        frac = self.min_fraction + (1.0 - self.min_fraction) * u[0]
        side = max(1, int(round(min(h, w) * frac)))
        top, left = int(u[1] * (h - side + 1)), int(u[2] * (w - side + 1))
        return v2.functional.crop(img, top, left, side, side)
