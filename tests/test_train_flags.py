"""Speed flags on CPU: bf16 autocast (and fp16 refused), channels-last, torch.compile (and the
errors where it cannot run)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml

from noisyfr.cli import main as cli_main
from noisyfr.errors import NoisyFRError
from noisyfr.losses import MarginHead, build_loss
from noisyfr.models import create_backbone
from noisyfr.train import load_config, parallel, train
from noisyfr.train.step import Stepper

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(out, **over) -> dict:
    raw = {"data": {"train": "synthetic:ids=4,per_id=4,size=32,seed=0", "image_size": 32},
           "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.25},
           "loss": {"name": "arcface", "s": 16.0},
           "optim": {"epochs": 1, "batch_size": 8, "lr": 0.05}, "device": "cpu",
           "output_dir": str(out)}
    return load_config(raw, list(over.items()))


def _step(model, images, labels, **kw):
    """One SGD step of ``model`` (a copy) + a seeded head: the loss and the updated weights."""
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    head = MarginHead(16, 4, build_loss("arcface", s=16.0))
    params = list(model.parameters()) + list(head.parameters())
    call = kw.pop("call", None)
    stepper = Stepper(call(model) if call else model, head,
                      torch.optim.SGD(params, lr=0.1), **kw)
    loss = stepper.step(images, labels, torch.arange(len(labels)))[0]
    return loss, [p.detach().clone() for p in params]


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = create_backbone("small_cnn", embedding_dim=16, image_size=32, width=0.25)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)


def test_bf16_autocast_runs_the_backbone_in_bf16_on_cpu(problem, tmp_path):
    model, images, labels = problem
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images).dtype == torch.bfloat16          # autocast is active on CPU
    ref, ref_params = _step(model, images, labels)
    got, got_params = _step(model, images, labels, amp_dtype=torch.bfloat16)
    assert got != ref and got == pytest.approx(ref, rel=3e-2)  # bf16 rounding, same step
    assert all(p.dtype == torch.float32 for p in got_params)  # weights stay float32
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    n = start.numel()  # the backbone's update: the same direction up to bf16 rounding
    d_got = torch.cat([p.reshape(-1) for p in got_params])[:n] - start
    d_ref = torch.cat([p.reshape(-1) for p in ref_params])[:n] - start
    assert float(torch.nn.functional.cosine_similarity(d_got, d_ref, dim=0)) > 0.98
    assert float(d_got.norm() / d_ref.norm()) == pytest.approx(1.0, abs=0.05)
    result = train(_cfg(tmp_path / "bf16", **{"optim.amp": "bf16"}))
    assert math.isfinite(result["loss"])


def test_fp16_on_cpu_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "fp16"
    with pytest.raises(NoisyFRError, match="config key 'optim.amp': fp16 needs CUDA"):
        train(_cfg(out, **{"optim.amp": "fp16"}))
    assert not out.exists()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_cfg(out)))
    assert cli_main(["train", str(path), "optim.amp=fp16"]) == 2
    assert "noisyfr train: error: config key 'optim.amp': fp16 needs CUDA" in capsys.readouterr().err


def test_channels_last_gives_the_same_step(problem, tmp_path):
    model, images, labels = problem
    ref, ref_params = _step(model, images, labels)

    def to_channels_last(m):
        parallel.wrap(m, None, {"model": {"channels_last": True, "compile": False}},
                      torch.device("cpu"), world=1)
        return m

    got, got_params = _step(model, images, labels, channels_last=True, call=to_channels_last)
    conv = next(p for p in got_params if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    assert got == pytest.approx(ref, rel=1e-5)
    for p, q in zip(got_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert math.isfinite(train(_cfg(tmp_path / "cl", **{"model.channels_last": True}))["loss"])


def test_compile_gives_the_same_step(problem):
    model, images, labels = problem
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 16),
                               torch.nn.BatchNorm1d(16))
    parallel.check_compile(torch.device("cpu"))              # this machine has g++
    ref, ref_params = _step(tiny, images, labels)
    got, got_params = _step(tiny, images, labels, call=lambda m: parallel.wrap(
        m, None, {"model": {"channels_last": False, "compile": True}}, torch.device("cpu"), 1)[0])
    assert got == pytest.approx(ref, rel=1e-5)
    for p, q in zip(got_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_compile_errors_name_the_key_where_it_cannot_run(monkeypatch):
    import torch._dynamo as dynamo
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-compiler-xyz",))
    with pytest.raises(NoisyFRError, match=r"config key 'model.compile': torch.compile on cpu "
                                           r"needs a C\+\+ compiler \(no-such-compiler-xyz\)"):
        parallel.check_compile(torch.device("cpu"))
    monkeypatch.setattr(dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(NoisyFRError, match="config key 'model.compile': torch.compile is not "
                                           "supported on this platform"):
        parallel.check_compile(torch.device("cpu"))
