"""insightface weights: a state dict of an IResNet written here in arcface_torch's layout (an
independent definition, randomly filled) loads into noisyfr's iresnet18 and gives the same output;
``eval``/``embed`` take it with ``--backbone``; ``train`` starts from it with ``model.init``; a
state dict for another architecture is refused with the keys named."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from noisyfr.cli import main
from noisyfr.errors import NoisyFRError
from noisyfr.eval import load_backbone
from noisyfr.models import create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- arcface_torch's IResNet, from its description
class RefBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class RefIResNet(nn.Module):
    def __init__(self, layers, num_features=512):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._layer(64, layers[0])
        self.layer2 = self._layer(128, layers[1])
        self.layer3 = self._layer(256, layers[2])
        self.layer4 = self._layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def _layer(self, planes, blocks):
        down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
                             nn.BatchNorm2d(planes, eps=1e-05))
        mods = [RefBasicBlock(self.inplanes, planes, 2, down)]
        self.inplanes = planes
        mods += [RefBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.prelu(self.bn1(self.conv1(x)))))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic drawn at random: nothing matches by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() > 1:                                   # conv / linear: He-like scale
                p.copy_(noise * (2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("bias"):
                p.copy_(noise * 0.1)
            else:                                             # BatchNorm scales, PReLU slopes
                p.copy_((0.25 if "prelu" in name else 1.0) + noise * 0.1)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def insightface_r18(tmp_path_factory):
    """(reference model, path of its DDP-style state dict with 'module.' prefixes)."""
    ref = randomised(RefIResNet((2, 2, 2, 2)), seed=7)
    path = tmp_path_factory.mktemp("insightface") / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)
    return ref, path


def test_state_dict_loads_and_gives_the_same_output(insightface_r18, tmp_path):
    ref, path = insightface_r18
    model, ckpt = load_backbone(path, backbone="iresnet18")
    assert ckpt["config"]["model"] == {"backbone": "iresnet18", "embedding_dim": 512, "width": 1.0}
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert want.abs().mean() > 0.1                      # a real signal, not zeros
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # without the prefix and without the BatchNorm counters (older files): the same weights
    bare = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(bare, tmp_path / "old.pth")
    model2, _ = load_backbone(tmp_path / "old.pth", backbone="iresnet18")
    with torch.no_grad():
        torch.testing.assert_close(model2(x), want, rtol=1e-5, atol=1e-5)
    # arcface_torch's training checkpoint holds the backbone under state_dict_backbone
    torch.save({"epoch": 3, "state_dict_backbone": bare, "state_dict_softmax_fc": {}}, tmp_path / "ck.pt")
    model3, _ = load_backbone(tmp_path / "ck.pt", backbone="iresnet18")
    with torch.no_grad():
        torch.testing.assert_close(model3(x), want, rtol=1e-5, atol=1e-5)


def test_embed_and_eval_take_a_bare_state_dict(insightface_r18, tmp_path, capsys):
    from noisyfr.data import SyntheticIndex

    ref, path = insightface_r18
    out = tmp_path / "emb.npy"
    data = "synthetic:ids=2,per_id=2,size=112,seed=4"
    assert main(["embed", str(path), data, "--backbone", "iresnet18", "--out", str(out),
                 "--device", "cpu", "--batch-size", "3"]) == 0
    emb = np.load(out)
    index = SyntheticIndex.from_spec(data)
    x = torch.stack([index.load_image(i) for i in range(4)]).float()
    x = (x / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        raw = ref(x) + ref(torch.flip(x, dims=[3]))
    np.testing.assert_allclose(emb, (raw / raw.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    table = pd.read_parquet(out.with_suffix(".parquet"))
    assert table["path"].tolist() == list(index.paths)
    assert table["identity"].tolist() == ["id0000", "id0000", "id0001", "id0001"]
    np.testing.assert_allclose(table["norm"], raw.norm(dim=1).numpy(), rtol=1e-5)
    rc = main(["eval", "--checkpoint", str(path), "--backbone", "iresnet18", "--device", "cpu",
               "--val", "synthetic-pairs:ids=4,per_id=2,pairs=8,size=112", "--folds", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and "iresnet18, bare state dict, d=512" in text and "synthetic-pairs" in text


def test_other_architectures_are_refused_with_the_keys_named(insightface_r18, tmp_path, capsys):
    ref, path = insightface_r18

    def fails(args, *matches):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("noisyfr"), err
        for m in matches:
            assert m in err, err

    torch.manual_seed(0)
    mfn = tmp_path / "mobilefacenet.pth"
    torch.save(create_backbone("mobilefacenet", 128).state_dict(), mfn)
    out = tmp_path / "e.npy"
    fails(["eval", "--checkpoint", str(mfn), "--backbone", "iresnet18", "--val", "x.bin"],
          "x.bin")  # inputs are opened before the weights
    fails(["embed", str(mfn), "synthetic:ids=1,per_id=1,size=112", "--backbone", "iresnet18",
           "--out", str(out)], "weights do not fit iresnet18", "missing keys: conv1.weight",
          "unexpected keys:", "(+")
    fails(["embed", str(path), "synthetic:ids=1,per_id=1,size=112", "--backbone", "iresnet34",
           "--out", str(out)], "missing keys: layer1.2.bn1.weight")
    fails(["embed", str(path), "synthetic:ids=1,per_id=1,size=112", "--backbone", "iresnet18",
           "--embedding-dim", "128", "--out", str(out)],
          "shape mismatches (file vs model): fc.weight [512, 25088] vs [128, 25088]")
    fails(["embed", str(path), "synthetic:ids=1,per_id=1,size=112", "--out", str(out)],
          "bare state dict", "give --backbone NAME")
    fails(["embed", str(path), "synthetic:ids=1,per_id=1,size=112", "--backbone", "vgg", "--out",
           str(out)], "unknown name 'vgg'")
    assert not out.exists() and not out.with_suffix(".parquet").exists()
    assert not list(tmp_path.glob(".e.*"))


def test_train_starts_from_model_init(tmp_path):
    from noisyfr.io import load_checkpoint
    from noisyfr.train import load_config, train

    torch.manual_seed(11)
    init = create_backbone("small_cnn", 32, image_size=32)
    path = tmp_path / "init.pth"
    torch.save({f"module.{k}": v for k, v in init.state_dict().items()}, path)
    base = {"data": {"train": "synthetic:ids=4,per_id=4,size=32,seed=0", "image_size": 32},
            "model": {"backbone": "small_cnn", "embedding_dim": 32, "init": str(path)},
            "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-12, "momentum": 0.0,
                      "weight_decay": 0.0},
            "seed": 3, "device": "cpu", "track": {"angles": False}}
    train(load_config({**base, "output_dir": str(tmp_path / "run")}))
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    weights = [k for k, v in init.state_dict().items() if k.endswith("weight") and v.dim() > 1]
    assert len(weights) > 5
    for k in weights:  # lr 1e-12: one epoch leaves the initial weights as they were
        torch.testing.assert_close(trained[k], init.state_dict()[k], rtol=0, atol=1e-9)
    # without model.init the seed draws other weights
    plain = create_backbone("small_cnn", 32, image_size=32)
    assert not torch.allclose(plain.state_dict()[weights[0]], init.state_dict()[weights[0]])
    # weights for another backbone: refused before the run directory is written
    bad = dict(base, model={"backbone": "small_cnn", "embedding_dim": 16, "init": str(path)})
    with pytest.raises(NoisyFRError, match="config key 'model.init': checkpoint .*init.pth: weights do "
                                           "not fit the backbone: .* shape mismatches"):
        train(load_config({**bad, "output_dir": str(tmp_path / "bad")}))
    assert not (tmp_path / "bad" / "config.yaml").exists()
    with pytest.raises(NoisyFRError, match="model.init"):
        load_config({**base, "model": {"init": 5}})


def test_fit_state_dict_reports():
    from noisyfr.models.weights import fit_state_dict

    model = nn.Sequential(nn.Linear(2, 3))
    good = {"module._orig_mod.0.weight": torch.zeros(3, 2), "module._orig_mod.0.bias": torch.zeros(3)}
    assert sorted(fit_state_dict(good, model, "w")) == ["0.bias", "0.weight"]
    with pytest.raises(NoisyFRError, match="w: not a state dict"):
        fit_state_dict({"0.weight": [1, 2]}, model, "w")
    with pytest.raises(NoisyFRError, match=r"w: 1 missing keys: 0.bias; 1 unexpected keys: 0.b$"):
        fit_state_dict({"0.weight": torch.zeros(3, 2), "0.b": torch.zeros(3)}, model, "w")
