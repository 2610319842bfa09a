"""Face-recognition backbones by name, behind one registry.

``create_backbone(name, embedding_dim=512, image_size=112, dropout=0.0, width=1.0)`` returns an
``nn.Module`` mapping a float batch [B, 3, S, S] (values in [-1, 1]) to embeddings [B, d].
Built-in names: ``iresnet18``, ``iresnet34``, ``iresnet50``, ``iresnet100`` and ``mobilefacenet``
(112x112 input only) and ``small_cnn`` (any S that is a multiple of 16 and at least 32; its
channel counts scale with ``width``). ``linear`` and ``mlp`` take vectors instead of images
(a frozen model's embeddings [B, input_dim], :mod:`noisyfr.models.vector`): they are built with
``input_dim`` and ``depth`` and refuse image sizes. :func:`register_backbone` adds more; ``BACKBONE_SPECS``
maps each registered name to its :class:`BackboneSpec` and ``BACKBONES`` lists the names (a live
view of it, in registration order).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from torch import nn

from noisyfr.errors import NoisyFRError

__all__ = ["BACKBONES", "BACKBONE_SPECS", "BackboneSpec", "register_backbone", "create_backbone",
           "check_backbone_args"]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its builder and the inputs it accepts.

    ``build(embedding_dim=, image_size=, dropout=)`` (plus ``width=`` when ``width`` is True)
    returns the module. Accepted image sizes: the sizes in ``image_sizes``, or, when
    ``multiple_of`` is set, every multiple of it that is at least ``min_image_size``. A backbone
    with ``vectors`` takes embeddings [B, input_dim] instead: it is built with ``input_dim=`` and
    ``depth=`` (in ``depths``, inclusive bounds; default ``default_depth``), not ``image_size=``.
    """

    name: str
    build: Callable[..., nn.Module]
    image_sizes: tuple[int, ...] = (112,)
    multiple_of: int | None = None
    min_image_size: int = 1
    width: bool = False
    vectors: bool = False
    depths: tuple[int, int] = (1, 1)
    default_depth: int = 1

    def check_image_size(self, image_size: int) -> None:
        """NoisyFRError naming ``image_size`` when this backbone cannot take it."""
        if self.multiple_of is not None:
            if image_size < self.min_image_size or image_size % self.multiple_of:
                raise NoisyFRError(f"image_size: {self.name} needs a multiple of "
                                   f"{self.multiple_of} that is >= {self.min_image_size}, "
                                   f"got {image_size}")
        elif image_size not in self.image_sizes:
            sizes = " or ".join(f"{s}x{s}" for s in self.image_sizes)
            raise NoisyFRError(f"image_size: {self.name} needs {sizes} input, got {image_size}")


#: Registry: backbone name -> :class:`BackboneSpec`. Filled by :func:`register_backbone`.
BACKBONE_SPECS: dict[str, BackboneSpec] = {}
#: The registered backbone names, in registration order (a live view of the registry).
BACKBONES = BACKBONE_SPECS.keys()


def _positive_int(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NoisyFRError(f"register_backbone: {what} must be a positive integer, got {value!r}")
    return value


def register_backbone(name: str, build: Callable[..., nn.Module] | None = None, *,
                      image_sizes: Sequence[int] | None = None, multiple_of: int | None = None,
                      min_image_size: int | None = None, width: bool = False,
                      vectors: bool = False, depths: tuple[int, int] = (1, 1),
                      default_depth: int | None = None):
    """Register the backbone builder ``build`` under ``name``; returns ``build``.

    Without ``build`` it is a decorator: ``@register_backbone("mynet", image_sizes=(64,))``.
    The builder is called with ``embedding_dim``, ``image_size`` and ``dropout`` keywords, plus
    ``width`` when ``width=True`` (else only width 1 is accepted). Accepted image sizes: the
    sequence ``image_sizes`` (default 112 alone), or with ``multiple_of=k`` every multiple of k
    that is at least ``min_image_size`` (default k); give one of the two. ``vectors=True``
    declares a backbone over vectors (embeddings of a ``features:`` dataset): its builder takes
    ``embedding_dim``, ``input_dim``, ``dropout``, ``width`` and ``depth`` (``depths``: the
    accepted range, ``default_depth`` its default, the lower bound unless given). A later
    registration under the same name replaces the earlier one.
    """
    if not isinstance(name, str) or not name:
        raise NoisyFRError(f"register_backbone: name must be a non-empty string, got {name!r}")
    if multiple_of is not None and image_sizes is not None:
        raise NoisyFRError(f"register_backbone: {name}: give image_sizes or multiple_of, not both")
    if multiple_of is None and min_image_size is not None:
        raise NoisyFRError(f"register_backbone: {name}: min_image_size needs multiple_of")
    if isinstance(image_sizes, (int, str)) or (image_sizes is not None and not image_sizes):
        raise NoisyFRError(f"register_backbone: {name}: image_sizes must be a non-empty sequence "
                           f"of sizes, got {image_sizes!r}")
    sizes = tuple(_positive_int("image_sizes", s) for s in (image_sizes or (112,)))
    step = None if multiple_of is None else _positive_int("multiple_of", multiple_of)
    least = 1 if step is None else _positive_int(
        "min_image_size", step if min_image_size is None else min_image_size)

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise NoisyFRError(f"register_backbone: {name}: builder must be callable, got {fn!r}")
        lo, hi = (_positive_int("depths", d) for d in depths)
        BACKBONE_SPECS[name] = BackboneSpec(name, fn, sizes, step, least, bool(width), bool(vectors),
                                            (lo, hi), lo if default_depth is None else default_depth)
        return fn

    return deco if build is None else deco(build)


def _spec(name: str) -> BackboneSpec:
    if not isinstance(name, str) or name not in BACKBONE_SPECS:
        raise NoisyFRError(f"backbone: unknown name {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONE_SPECS[name]


def input_kind(vectors: bool) -> str:
    return "vectors (a features: dataset)" if vectors else "images"


def check_backbone_args(name: str, embedding_dim: int = 512, image_size: int = 112,
                        dropout: float = 0.0, width: float = 1.0, *, depth: int | None = None,
                        input_dim: int | None = None, vectors: bool | None = None) -> None:
    """Validate backbone arguments without building anything; NoisyFRError naming the bad one.
    ``vectors``: whether the data are vectors (None: not checked); ``depth`` and ``input_dim``
    belong to vector backbones."""
    spec = _spec(name)
    if vectors is not None and bool(vectors) != spec.vectors:
        takers = [s.name for s in BACKBONE_SPECS.values() if s.vectors == bool(vectors)]
        raise NoisyFRError(f"backbone: {name} takes {input_kind(spec.vectors)}, the data are "
                           f"{input_kind(bool(vectors))}: use {', '.join(takers) or 'another'}")
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise NoisyFRError(f"depth: must be an integer, got {depth!r}")
        lo, hi = spec.depths
        if not spec.vectors:
            raise NoisyFRError(f"depth: only the vector backbones take a depth; {name} has none")
        if not lo <= depth <= hi:
            raise NoisyFRError(f"depth: {name} takes {lo}..{hi} layers, got {depth}")
    if input_dim is not None and (isinstance(input_dim, bool) or not isinstance(input_dim, int)
                                  or input_dim < 1):
        raise NoisyFRError(f"input_dim: must be a positive integer, got {input_dim!r}")
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise NoisyFRError(f"embedding_dim: must be a positive integer, got {embedding_dim!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise NoisyFRError(f"image_size: must be an integer, got {image_size!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise NoisyFRError(f"dropout: must be a number in [0, 1), got {dropout!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.0 < width <= 4.0:
        raise NoisyFRError(f"width: must be a number in (0, 4], got {width!r}")
    if not spec.width and width != 1.0:
        takers = [s.name for s in BACKBONE_SPECS.values() if s.width]
        have = "has" if len(takers) == 1 else "have"
        raise NoisyFRError(f"width: only {', '.join(takers) or 'no backbone'} {have} a width "
                           f"multiplier; {name} needs 1, got {width!r}")
    if not spec.vectors:
        spec.check_image_size(image_size)


def create_backbone(name: str, embedding_dim: int = 512, image_size: int = 112,
                    dropout: float = 0.0, width: float = 1.0, *, depth: int | None = None,
                    input_dim: int | None = None) -> nn.Module:
    """Build the registered backbone ``name``: [B, 3, image_size, image_size] -> [B, embedding_dim].

    ``dropout`` is the dropout probability before the embedding layer. Raises NoisyFRError (see
    :func:`check_backbone_args`) for an unknown name, a non-positive ``embedding_dim`` or an
    image size the backbone cannot take (iresnet*/mobilefacenet: 112 only; small_cnn: multiples
    of 16 from 32). Weights are drawn from torch's global generator: call ``torch.manual_seed``
    first for reproducible initialisation. A vector backbone (``linear``, ``mlp``) needs
    ``input_dim`` (the dimension of the vectors it takes) and takes ``depth``.
    """
    check_backbone_args(name, embedding_dim, image_size, dropout, width, depth=depth,
                        input_dim=input_dim)
    spec = BACKBONE_SPECS[name]
    if spec.vectors:
        if input_dim is None:
            raise NoisyFRError(f"input_dim: {name} takes vectors and needs their dimension")
        return spec.build(embedding_dim=embedding_dim, input_dim=input_dim, dropout=dropout,
                          width=float(width), depth=spec.default_depth if depth is None else depth)
    kwargs = {"embedding_dim": embedding_dim, "image_size": image_size, "dropout": dropout}
    if spec.width:
        kwargs["width"] = float(width)
    return spec.build(**kwargs)


# ---- built-in backbones (modules imported on first build) --------------------------------------
def _iresnet(depth: int, embedding_dim: int, image_size: int, dropout: float) -> nn.Module:
    from noisyfr.models.iresnet import iresnet

    return iresnet(depth, embedding_dim=embedding_dim, dropout=dropout)


def _mobilefacenet(embedding_dim: int, image_size: int, dropout: float) -> nn.Module:
    from noisyfr.models.mobilefacenet import MobileFaceNet

    return MobileFaceNet(embedding_dim=embedding_dim, dropout=dropout)


def _small_cnn(embedding_dim: int, image_size: int, dropout: float, width: float) -> nn.Module:
    from noisyfr.models.small_cnn import SmallCNN

    return SmallCNN(embedding_dim=embedding_dim, image_size=image_size, dropout=dropout,
                    width=width)


def _vector(kind: str, **kwargs) -> nn.Module:
    from noisyfr.models import vector

    return getattr(vector, f"build_{kind}")(**kwargs)


for _depth in (18, 34, 50, 100):
    register_backbone(f"iresnet{_depth}", partial(_iresnet, _depth), image_sizes=(112,))
register_backbone("mobilefacenet", _mobilefacenet, image_sizes=(112,))
register_backbone("small_cnn", _small_cnn, multiple_of=16, min_image_size=32, width=True)
register_backbone("linear", partial(_vector, "linear"), vectors=True, depths=(1, 1))
register_backbone("mlp", partial(_vector, "mlp"), vectors=True, depths=(2, 8), width=True)
del _depth
