"""MobileFaceNet (Chen et al., 2018) for 112x112 faces.

Layout (input 112x112x3), every conv followed by BN, PReLU unless marked linear:

=============================  ====  ======  ====  ======
operator                       t     c       n     stride
=============================  ====  ======  ====  ======
conv3x3                        -     64      1     2
depthwise conv3x3              -     64      1     1
bottleneck                     2     64      5     2
bottleneck                     4     128     1     2
bottleneck                     2     128     6     1
bottleneck                     4     128     1     2
bottleneck                     2     128     2     1
conv1x1                        -     512     1     1
linear GDConv7x7 (depthwise)   -     512     1     1
linear conv1x1                 -     d       1     1
=============================  ====  ======  ====  ======

A bottleneck is expand 1x1 (t*c) - depthwise 3x3 (stride) - linear project 1x1 (c), with a
residual connection when the stride is 1 and channels match. The embedding is BN-normalised.
"""
from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s)
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBlock(nn.Sequential):
    """Conv - BN (- PReLU unless ``linear``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, linear: bool = False):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if not linear:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1 - depthwise 3x3 - linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvBlock(cin, hidden),
            ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden),
            ConvBlock(hidden, cout, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet mapping [B, 3, 112, 112] -> [B, embedding_dim]."""

    def __init__(self, embedding_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [
            ConvBlock(3, 64, 3, 2, 1),
            ConvBlock(64, 64, 3, 1, 1, groups=64),
        ]
        cin = 64
        for t, c, n, s in BOTTLENECKS:
            for i in range(n):
                layers.append(Bottleneck(cin, c, t, s if i == 0 else 1))
                cin = c
        layers.append(ConvBlock(cin, 512))
        self.body = nn.Sequential(*layers)
        self.gdconv = ConvBlock(512, 512, 7, groups=512, linear=True)
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Conv2d(512, embedding_dim, 1, bias=False)
        self.features = nn.BatchNorm1d(embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.gdconv(self.body(x)))
        return self.features(torch.flatten(self.linear(x), 1))
