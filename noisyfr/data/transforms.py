"""Image preprocessing shared by training and evaluation.

Input: uint8 RGB tensor [3, H, W]. Output: float32 [3, S, S] in [-1, 1] ((x/255 - 0.5) / 0.5, the
insightface convention). ``center_crop`` (a fraction of the shorter side, 1.0 = none) is the cheap
stand-in for alignment on unaligned photos such as LFW's 250x250 originals (about 0.6 keeps the face).
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def face_transform(image_size: int = 112, center_crop: float = 1.0, train: bool = False,
                   flip: bool = True) -> v2.Compose:
    """Preprocessing for a backbone that takes ``image_size`` x ``image_size`` inputs.

    ``train=True`` adds a random horizontal flip (when ``flip``); evaluation is deterministic.
    """
    if not 0.0 < center_crop <= 1.0:
        raise ValueError(f"center_crop: must be in (0, 1], got {center_crop}")
    steps: list = []
    if center_crop < 1.0:
        steps.append(_CenterFraction(center_crop))
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
