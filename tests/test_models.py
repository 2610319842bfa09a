"""Backbones: layouts, parameter counts (closed form + published values), shapes, errors, seeding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisyfr.errors import NoisyFRError
from noisyfr.models import BACKBONES, create_backbone

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
