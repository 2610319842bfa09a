"""IResNet backbones in the insightface ``arcface_torch`` layout.

Stem: 3x3 conv (64) + BN + PReLU at full resolution. Four stages of :class:`IBasicBlock`
(BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus a shortcut) with widths 64/128/256/512,
each stage starting with stride 2, so a 112x112 input ends at 7x7. Head: BN2d - Dropout -
flatten - FC(512*7*7 -> d) - BN1d (the BN1d scale is fixed at 1, as in insightface).
"""
from __future__ import annotations

import torch
from torch import nn

#: blocks per stage for each depth
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual block: BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet for 112x112 faces mapping [B, 3, 112, 112] -> [B, embedding_dim]."""

    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, ...], embedding_dim: int = 512, dropout: float = 0.0):
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        stages = []
        cin = 64
        for n_blocks, width in zip(layers, STAGE_WIDTHS):
            blocks = [IBasicBlock(cin, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.dropout(self.bn2(x)), 1)
        return self.features(self.fc(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.weight.requires_grad:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def iresnet(depth: int, embedding_dim: int = 512, dropout: float = 0.0) -> IResNet:
    """IResNet-``depth`` (18, 34, 50 or 100) with an ``embedding_dim`` output."""
    return IResNet(IRESNET_LAYERS[depth], embedding_dim=embedding_dim, dropout=dropout)
