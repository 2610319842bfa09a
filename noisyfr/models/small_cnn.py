"""A small CNN for fast CPU runs and tests (about 1.2M parameters at d=512, width 1).

Stem conv3x3 (32) at full resolution, then four stride-2 stages of conv-BN-PReLU blocks
(64, 128, 256, 256 channels), so an SxS input ends at S/16 x S/16. Head in the insightface
style: BN2d - global depthwise conv (S/16 x S/16, one weight map per channel) - Dropout -
FC(256 -> d) - BN1d. Works for any S that is a multiple of 16 and at least 32. ``width``
multiplies every channel count (0.5: 16, 32, 64, 128, 128 channels, about 4x fewer operations).
"""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout)]


class SmallCNN(nn.Module):
    """Small conv net mapping [B, 3, S, S] -> [B, embedding_dim] (S a multiple of 16, >= 32)."""

    def __init__(self, embedding_dim: int = 512, image_size: int = 112, dropout: float = 0.0,
                 width: float = 1.0):
        super().__init__()
        side = image_size // 16
        c1, c2, c3, c4 = (max(4, int(round(c * width))) for c in (32, 64, 128, 256))
        self.body = nn.Sequential(
            *_block(3, c1, 1),
            *_block(c1, c2, 2), *_block(c2, c2, 1),
            *_block(c2, c3, 2), *_block(c3, c3, 1),
            *_block(c3, c4, 2),
            *_block(c4, c4, 2),
        )
        self.bn = nn.BatchNorm2d(c4)
        self.gdconv = nn.Conv2d(c4, c4, side, groups=c4, bias=False)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(c4, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gdconv(self.bn(self.body(x)))
        return self.features(self.fc(self.dropout(torch.flatten(x, 1))))
