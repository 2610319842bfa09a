"""``noisyfr export CHECKPOINT --out model.onnx``: the backbone as ONNX, with a dynamic batch axis.

Input ``input`` float32 [batch, 3, S, S] (values in [-1, 1], as in training), output ``embedding``
float32 [batch, d] (not normalised). The graph comes from ``torch.onnx.export(dynamo=True)``
(``torch.export``); unless ``--no-check``, onnxruntime then runs it on a seeded random batch of
another size than the one exported with and the export is refused, nothing written, when it
differs from PyTorch by more than 1e-4 (relative to the output scale). That check is what catches a
backbone whose Python code cannot be captured faithfully (data-dependent branches, numpy calls).
``onnx``/``onnxscript`` (export) and ``onnxruntime`` (check) are the optional extra
``noisyfr[onnx]``.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from noisyfr.errors import NoisyFRError

EXTRA = "pip install 'noisyfr[onnx]'"
#: largest accepted |onnx - torch| relative to max(1, max |torch|)
TOLERANCE = 1e-4


def require(*modules: str, what: str) -> None:
    """NoisyFRError naming the ``[onnx]`` extra when one of ``modules`` is not importable."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise NoisyFRError(f"{what} needs the optional packages of the [onnx] extra (missing: "
                           f"{', '.join(missing)}): {EXTRA}")


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    return f"{type(cause).__name__}: {text[:240]}"


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines and graph dumps (stdout, stderr) and torch's warnings while
    tracing (logging, warnings) are not the user's business: the outcome is reported in one line."""
    before = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, image_size: int, *, name: str,
                opset: int | None = None, check: bool = True, seed: int = 0) -> float | None:
    """Write ``model`` (eval mode, on CPU) to ``path`` as ONNX; returns the checked max |difference|
    (None without ``check``). NoisyFRError naming ``name`` when the export or the check fails, with
    nothing written."""
    require("onnx", "onnxscript", what="ONNX export")
    if check:
        require("onnxruntime", what="the ONNX check (--no-check skips it)")
    from noisyfr.io import atomic_path

    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, image_size, image_size, generator=gen)
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=["input"],
                                        output_names=["embedding"], dynamic_shapes=({0: batch},),
                                        opset_version=opset, external_data=False, verbose=False)
    except Exception as exc:  # torch.export / translation failures of any kind
        raise NoisyFRError(f"{name}: the backbone cannot be exported to ONNX ({_first_line(exc)})") from None
    with atomic_path(path) as tmp:
        program.save(str(tmp))
        diff = _check(tmp, model, image_size, gen, name) if check else None
    return diff


def _check(onnx_path: Path, model: torch.nn.Module, image_size: int, gen: torch.Generator,
           name: str) -> float:
    import onnxruntime as ort

    x = torch.randn(3, 3, image_size, image_size, generator=gen)
    with torch.no_grad():
        ref = model(x).numpy()
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
    except Exception as exc:  # onnxruntime refuses the graph
        raise NoisyFRError(f"{name}: the exported ONNX model does not run in onnxruntime "
                           f"({_first_line(exc)})") from None
    if got.shape != ref.shape:
        raise NoisyFRError(f"{name}: the exported ONNX model gives shape {list(got.shape)} for a batch "
                           f"of 3, PyTorch {list(ref.shape)} (the batch axis is not dynamic)")
    diff = float(np.max(np.abs(got - ref)))
    if not diff <= TOLERANCE * max(1.0, float(np.max(np.abs(ref)))):
        raise NoisyFRError(f"{name}: the exported ONNX model differs from PyTorch by {diff:.3g} on a "
                           f"random batch: the backbone cannot be traced faithfully (data-dependent "
                           f"Python code?)")
    return diff
