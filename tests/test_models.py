"""Backbones: layouts, parameter counts (closed form + published values), shapes, errors, seeding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisyfr.errors import NoisyFRError
from noisyfr.models import BACKBONE_SPECS, BACKBONES, check_backbone_args, create_backbone, register_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def iresnet_params_closed_form(depth: int, d: int) -> int:
    """Parameter count of the insightface IResNet layout, written out by hand."""
    bn = lambda c: 2 * c  # noqa: E731  (weight + bias)
    total = 3 * 64 * 9 + bn(64) + 64  # stem conv, BN, PReLU
    cin = 64
    for n, w in zip(STAGES[depth], (64, 128, 256, 512)):
        for i in range(n):
            c_in = cin if i == 0 else w
            total += bn(c_in) + c_in * w * 9 + bn(w) + w + w * w * 9 + bn(w)
            if i == 0:  # stride-2 shortcut: 1x1 conv + BN
                total += c_in * w + bn(w)
        cin = w
    total += bn(512) + 512 * 7 * 7 * d + d + bn(d)  # BN2d, FC, BN1d
    return total


@pytest.mark.parametrize("depth", [18, 34, 50, 100])
def test_iresnet_parameter_count_and_shape_meta(depth):
    # the meta device builds and runs the graph without allocating or computing anything
    with torch.device("meta"):
        model = create_backbone(f"iresnet{depth}", embedding_dim=256)
        out = model(torch.empty(2, 3, 112, 112))
    assert out.shape == (2, 256)
    assert n_params(model) == iresnet_params_closed_form(depth, 256)
    blocks = [sum(1 for _ in getattr(model, f"layer{k}")) for k in range(1, 5)]
    assert tuple(blocks) == STAGES[depth]


@pytest.mark.parametrize("depth,published_m", [(50, 43.6), (100, 65.2)])
def test_iresnet_matches_published_size(depth, published_m):
    # insightface model zoo: r50 ~43.6M, r100 ~65.2M parameters at d=512
    with torch.device("meta"):
        model = create_backbone(f"iresnet{depth}", 512)
    assert abs(n_params(model) / 1e6 - published_m) / published_m < 0.005


def test_iresnet_layout_details():
    with torch.device("meta"):
        m = create_backbone("iresnet50", 512, dropout=0.4)
    assert (m.conv1.kernel_size, m.conv1.stride, m.conv1.out_channels) == ((3, 3), (1, 1), 64)
    assert isinstance(m.bn2, nn.BatchNorm2d) and m.bn2.num_features == 512
    assert m.fc.in_features == 512 * 7 * 7 and m.fc.out_features == 512
    assert isinstance(m.features, nn.BatchNorm1d) and not m.features.weight.requires_grad
    assert m.dropout.p == pytest.approx(0.4)
    # each stage halves the resolution in its first block
    for k in range(1, 5):
        assert getattr(m, f"layer{k}")[0].conv2.stride == (2, 2)


def test_iresnet18_forward_real_and_deterministic():
    torch.manual_seed(0)
    a = create_backbone("iresnet18", 64)
    torch.manual_seed(0)
    b = create_backbone("iresnet18", 64)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = a(x)  # train mode: BN1d with batch 2
    assert y.shape == (2, 64) and torch.isfinite(y).all()


def test_mobilefacenet_size_and_forward():
    torch.manual_seed(0)
    m = create_backbone("mobilefacenet", 128)
    # Chen et al. 2018 report 0.99M parameters for the 128-d MobileFaceNet
    assert 0.95e6 < n_params(m) < 1.05e6
    depthwise = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups == c.in_channels > 1]
    assert depthwise[-1].kernel_size == (7, 7)  # global depthwise (GDConv) head
    with torch.no_grad():
        y = m.eval()(torch.randn(1, 3, 112, 112))
    assert y.shape == (1, 128) and torch.isfinite(y).all()


@pytest.mark.parametrize("size", [32, 48, 64, 96, 112])
def test_small_cnn_sizes(size):
    torch.manual_seed(0)
    m = create_backbone("small_cnn", 512, image_size=size)
    assert 0.5e6 <= n_params(m) <= 2e6
    y = m(torch.randn(2, 3, size, size))
    assert y.shape == (2, 512)


def test_small_cnn_trains():
    torch.manual_seed(0)
    m = create_backbone("small_cnn", 32, image_size=32, dropout=0.1)
    x = torch.randn(4, 3, 32, 32)
    m(x).pow(2).sum().backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_error_messages():
    with pytest.raises(NoisyFRError, match=r"^image_size: iresnet50 needs 112x112 input, got 64$"):
        create_backbone("iresnet50", 512, image_size=64)
    with pytest.raises(NoisyFRError, match="image_size: mobilefacenet needs 112x112 input, got 96"):
        create_backbone("mobilefacenet", 128, image_size=96)
    with pytest.raises(NoisyFRError, match="small_cnn needs a multiple of 16"):
        create_backbone("small_cnn", 128, image_size=40)
    with pytest.raises(NoisyFRError, match="small_cnn needs a multiple of 16"):
        create_backbone("small_cnn", 128, image_size=16)
    with pytest.raises(NoisyFRError) as exc:
        create_backbone("resnet50")
    msg = str(exc.value)
    assert "'resnet50'" in msg and "\n" not in msg
    assert all(name in msg for name in BACKBONES)
    with pytest.raises(NoisyFRError, match="embedding_dim"):
        create_backbone("small_cnn", 0, image_size=32)
    with pytest.raises(NoisyFRError, match="dropout"):
        create_backbone("small_cnn", 8, image_size=32, dropout=1.0)


# ---------------------------------------------------------------- user backbones
@pytest.fixture
def restore_backbones():
    """Put the backbone registry back as it was after a test that registers its own."""
    saved = dict(BACKBONE_SPECS)
    yield
    BACKBONE_SPECS.clear()
    BACKBONE_SPECS.update(saved)


class _Flat(nn.Module):
    """A user backbone: one linear layer over the flattened image."""

    def __init__(self, embedding_dim: int, image_size: int, dropout: float):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                nn.Linear(3 * image_size * image_size, embedding_dim))

    def forward(self, x):
        return self.fc(x)


def test_registered_backbone_builds_by_name(restore_backbones):
    assert register_backbone("test_flat", _Flat, image_sizes=(8, 16)) is _Flat
    assert "test_flat" in BACKBONES
    check_backbone_args("test_flat", 4, image_size=16, dropout=0.1)
    m = create_backbone("test_flat", 4, image_size=8, dropout=0.1)
    assert isinstance(m, _Flat) and m(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(NoisyFRError, match=r"^image_size: test_flat needs 8x8 or 16x16 input, got 32$"):
        create_backbone("test_flat", 4, image_size=32)
    with pytest.raises(NoisyFRError, match=r"^width: only small_cnn, mlp have a width multiplier; test_flat"):
        check_backbone_args("test_flat", 4, image_size=8, width=0.5)
    with pytest.raises(NoisyFRError, match="test_flat") as exc:
        create_backbone("test_flt", 4, image_size=8)
    assert str(exc.value).startswith("backbone: unknown name 'test_flt'")


def test_registered_backbone_by_decorator_with_a_size_rule(restore_backbones):
    built = []

    @register_backbone("test_scaled", multiple_of=8, min_image_size=24, width=True)
    def scaled(embedding_dim, image_size, dropout, width):
        built.append((embedding_dim, image_size, dropout, width))
        return nn.Linear(3, embedding_dim)

    check_backbone_args("test_scaled", 8, image_size=40, width=2.0)  # validates, builds nothing
    assert built == []
    create_backbone("test_scaled", 8, image_size=24, width=0.5)
    assert built == [(8, 24, 0.0, 0.5)]
    for bad in (16, 36):
        with pytest.raises(NoisyFRError, match=r"^image_size: test_scaled needs a multiple of 8 "
                                               r"that is >= 24, got"):
            check_backbone_args("test_scaled", 8, image_size=bad)
    with pytest.raises(NoisyFRError, match="only small_cnn, mlp, test_scaled have a width multiplier"):
        check_backbone_args("iresnet18", 8, width=0.5)


@pytest.mark.parametrize("kwargs,word", [
    ({"image_sizes": (112,), "multiple_of": 16}, "not both"), ({"min_image_size": 32}, "multiple_of"),
    ({"image_sizes": ()}, "image_sizes"), ({"image_sizes": 64}, "image_sizes"),
    ({"image_sizes": (0,)}, "image_sizes"), ({"multiple_of": 1.5}, "multiple_of"),
])
def test_register_backbone_rejects_bad_rules(restore_backbones, kwargs, word):
    with pytest.raises(NoisyFRError, match=word):
        register_backbone("test_bad", _Flat, **kwargs)
    assert "test_bad" not in BACKBONES
