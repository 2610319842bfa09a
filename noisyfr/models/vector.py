"""Backbones over vectors: a trained head on top of a frozen model's embeddings.

For datasets of features (``features:PATH``, ``synthetic-features:...``; see
:mod:`noisyfr.data.features`) the "backbone" maps a pretrained model's embedding [B, D] to the
embedding the margin head trains on [B, d]. Its input is L2-normalised first (a face model's
embedding direction is what it means; its norm is left to the feature file's ``norm`` column).

- ``linear``: each input dimension standardised (BatchNorm1d without affine parameters: batch
  statistics in training, running ones in evaluation), then one bias-free linear map D -> d
  (``depth`` 1): a projection, too small to memorise many wrong labels at C/d of 7 or more. The
  standardisation is needed: a face model's embeddings share a large common component (dlib's
  descriptors of different people have cosines near 0.9), and a plain projection of them
  collapsed (measured on LFW dlib features, 215 identities, closed-set noise 0.2: held-out
  accuracy 0.05 and verification at chance, against 0.91 and 0.97 with it);
- ``mlp``: ``depth`` linear layers (default 2) with ``round(width * D)`` hidden units, each
  hidden layer followed by BatchNorm1d and ReLU, ``dropout`` before the last layer. Large enough
  (``width`` 4 on dlib's 128-d features: 512 units) to fit every wrong label.

``D`` comes from the dataset (``model.input_dim``, filled in by the trainer from the feature file).
"""
from __future__ import annotations

import torch
from torch import nn

from noisyfr.labels import DEFAULT_DEPTH, head_label  # noqa: F401 (re-exported: without torch there)


class LinearHead(nn.Module):
    """x / |x| -> standardised per dimension (BatchNorm1d without affine) -> W x (bias-free,
    [B, D] -> [B, d]), dropout before W."""

    def __init__(self, input_dim: int, embedding_dim: int, dropout: float = 0.0):
        super().__init__()
        self.input_dim = input_dim
        self.norm = nn.BatchNorm1d(input_dim, affine=False)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(input_dim, embedding_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.norm(nn.functional.normalize(x.float(), dim=1))))


class MLPHead(nn.Module):
    """x / |x| -> (Linear - BN - ReLU) x (depth - 1) -> Dropout -> Linear: [B, D] -> [B, d]."""

    def __init__(self, input_dim: int, embedding_dim: int, depth: int = 2, hidden: int = 512,
                 dropout: float = 0.0):
        super().__init__()
        self.input_dim = input_dim
        layers: list[nn.Module] = []
        cin = input_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            cin = hidden
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.body(nn.functional.normalize(x.float(), dim=1))))


def build_linear(embedding_dim: int, input_dim: int, dropout: float, width: float,
                 depth: int) -> nn.Module:
    return LinearHead(input_dim, embedding_dim, dropout)


def build_mlp(embedding_dim: int, input_dim: int, dropout: float, width: float,
              depth: int) -> nn.Module:
    return MLPHead(input_dim, embedding_dim, depth=depth, hidden=max(1, round(width * input_dim)),
                   dropout=dropout)
