"""The verification-set interface: images plus pairs of them with same/different labels.

Implemented by the file loaders of :mod:`noisyfr.data.pairs` (LFW ``pairs.txt``, insightface
``.bin``) and by :class:`~noisyfr.data.synthetic_pairs.SyntheticPairs`.
"""
from __future__ import annotations

import numpy as np
import torch

from noisyfr.data.index import decode_image


class VerificationSet:
    """Images plus pairs of them: ``pairs`` int64 [P, 2] (indices into the images) and
    ``issame`` bool [P]. Subclasses implement :meth:`read_bytes`."""

    name: str
    source: str
    pairs: np.ndarray
    issame: np.ndarray

    @property
    def num_images(self) -> int:
        raise NotImplementedError  # pragma: no cover

    @property
    def num_pairs(self) -> int:
        """Number of pairs P."""
        return int(len(self.issame))

    def read_bytes(self, i: int) -> bytes:  # pragma: no cover - abstract
        """The encoded image ``i``."""
        raise NotImplementedError

    def image_name(self, i: int) -> str:
        """A human-readable name of image ``i`` for error messages."""
        return f"{self.source}[{i}]"

    def image_identity(self, i: int) -> str | None:
        """The identity shown in image ``i`` when the set records it (None for a ``.bin``)."""
        return None

    def load_image(self, i: int) -> torch.Tensor:
        """Image ``i`` as a uint8 RGB tensor [3, H, W]."""
        return decode_image(self.read_bytes(i), name=self.image_name(i))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, images={self.num_images}, "
                f"pairs={self.num_pairs}, same={int(self.issame.sum())})")
