"""Face-recognition backbones by name.

``create_backbone(name, embedding_dim=512, image_size=112, dropout=0.0, width=1.0)`` returns an
``nn.Module`` mapping a float batch [B, 3, S, S] (values in [-1, 1]) to embeddings [B, d].
Supported names: ``iresnet18``, ``iresnet34``, ``iresnet50``, ``iresnet100`` and ``mobilefacenet``
(112x112 input only) and ``small_cnn`` (any S that is a multiple of 16 and at least 32; its
channel counts scale with ``width``).
"""
from __future__ import annotations

from torch import nn

from noisyfr.errors import NoisyFRError

BACKBONES: tuple[str, ...] = ("iresnet18", "iresnet34", "iresnet50", "iresnet100",
                              "mobilefacenet", "small_cnn")

__all__ = ["BACKBONES", "create_backbone", "check_backbone_args"]


def check_backbone_args(name: str, embedding_dim: int = 512, image_size: int = 112,
                        dropout: float = 0.0, width: float = 1.0) -> None:
    """Validate backbone arguments without building anything; NoisyFRError naming the bad one."""
    if name not in BACKBONES:
        raise NoisyFRError(f"backbone: unknown name {name!r}; known: {', '.join(BACKBONES)}")
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise NoisyFRError(f"embedding_dim: must be a positive integer, got {embedding_dim!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise NoisyFRError(f"image_size: must be an integer, got {image_size!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise NoisyFRError(f"dropout: must be a number in [0, 1), got {dropout!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.0 < width <= 4.0:
        raise NoisyFRError(f"width: must be a number in (0, 4], got {width!r}")
    if name != "small_cnn" and width != 1.0:
        raise NoisyFRError(f"width: only small_cnn has a width multiplier; {name} needs 1, "
                           f"got {width!r}")
    if name == "small_cnn":
        if image_size < 32 or image_size % 16:
            raise NoisyFRError(f"image_size: small_cnn needs a multiple of 16 that is >= 32, "
                               f"got {image_size}")
    elif image_size != 112:
        raise NoisyFRError(f"image_size: {name} needs 112x112 input, got {image_size}")


def create_backbone(name: str, embedding_dim: int = 512, image_size: int = 112,
                    dropout: float = 0.0, width: float = 1.0) -> nn.Module:
    """Build the backbone ``name`` mapping [B, 3, image_size, image_size] -> [B, embedding_dim].

    ``dropout`` is the dropout probability before the embedding layer. Raises NoisyFRError for an
    unknown name, a non-positive ``embedding_dim`` or an image size the backbone cannot take
    (iresnet*/mobilefacenet: 112 only; small_cnn: multiples of 16 from 32). Weights are drawn from
    torch's global generator: call ``torch.manual_seed`` first for reproducible initialisation.
    """
    check_backbone_args(name, embedding_dim, image_size, dropout, width)
    if name.startswith("iresnet"):
        from noisyfr.models.iresnet import iresnet

        return iresnet(int(name[len("iresnet"):]), embedding_dim=embedding_dim, dropout=dropout)
    if name == "mobilefacenet":
        from noisyfr.models.mobilefacenet import MobileFaceNet

        return MobileFaceNet(embedding_dim=embedding_dim, dropout=dropout)
    from noisyfr.models.small_cnn import SmallCNN

    return SmallCNN(embedding_dim=embedding_dim, image_size=image_size, dropout=dropout,
                    width=float(width))
