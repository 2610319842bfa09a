"""Pretrained face models for ``noisyfr features``: each turns encoded images into embeddings.

A model has ``info`` (a dict naming it: kind, file, its SHA-256, versions), ``preprocessing``
(a dict: every setting that changes a number), ``dim`` and ``embed(images) -> (embeddings, miss)``,
where ``images`` is a list of ``(name, uint8 RGB array [H, W, 3])``, ``embeddings`` float32
[n, dim] as the model gave them (not normalised) and ``miss`` bool [n] (no face found: the
fallback box was used). The same images give the same numbers, one by one or in any batch: every
image is embedded alone (dlib) or in the fixed chunks of :mod:`noisyfr.features.extract`.

- ``dlib``: dlib's ResNet face descriptor (128-d) of the ``face_recognition_models`` package, the
  optional extra ``noisyfr[dlib]``. Detection with dlib's HOG frontal-face detector on the image
  upsampled once, the detection nearest the image centre kept; on a miss, the centre box
  :data:`FALLBACK_BOX`. Then the 5-point shape predictor inside the box, ``dlib.get_face_chip``
  (150 px, padding 0.25) and ``compute_face_descriptor`` (no jitter unless asked).
- a noisyfr checkpoint or an insightface ``backbone.pth`` (``--backbone``): the checkpoint's own
  preprocessing (``data.image_size``, ``data.center_crop``), ``model(x) + model(flip(x))``.
- an ONNX model (``.onnx``, the ``onnx`` extra): input ``[N, 3, S, S]`` read from the model,
  the image centre-cropped by ``--center-crop`` and resized, scaled to [-1, 1], flip-summed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from noisyfr.errors import NoisyFRError

#: The centre box used where the detector finds no face, as fractions of the image's width and
#: height: (left, top, right, bottom). On a 250x250 LFW image it is the central 150 x 150 px
#: (50..200), where LFW's labelled face sits.
FALLBACK_BOX = (0.2, 0.2, 0.8, 0.8)
#: One line for a missing dlib extra.
DLIB_MISSING = ("the dlib model needs the optional extra: pip install 'noisyfr[dlib]' "
                "(dlib-bin and face-recognition-models)")
#: One line for a missing onnxruntime.
ONNX_MISSING = "an ONNX model needs onnxruntime: pip install 'noisyfr[onnx]'"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _box(rect) -> tuple[int, int, int, int]:
    return rect.left(), rect.top(), rect.right(), rect.bottom()


def fallback_box(width: int, height: int) -> tuple[int, int, int, int]:
    """:data:`FALLBACK_BOX` in pixels of a ``width`` x ``height`` image (left, top, right, bottom)."""
    left, top, right, bottom = FALLBACK_BOX
    return (int(round(left * width)), int(round(top * height)),
            int(round(right * width)) - 1, int(round(bottom * height)) - 1)


def central(boxes: list[tuple[int, int, int, int]], width: int, height: int) -> int:
    """Position of the box whose centre lies nearest the image centre (the first on a tie)."""
    cx, cy = width / 2.0, height / 2.0
    dist = [((x0 + x1) / 2.0 - cx) ** 2 + ((y0 + y1) / 2.0 - cy) ** 2 for x0, y0, x1, y1 in boxes]
    return int(np.argmin(dist))


class DlibModel:
    """dlib's face descriptor with its own detection and 5-point alignment (module docstring)."""

    CHIP_SIZE, PADDING = 150, 0.25

    def __init__(self, upsample: int = 1, jitter: int = 0):
        try:
            import dlib
        except ImportError:
            raise NoisyFRError(DLIB_MISSING) from None
        spec = importlib.util.find_spec("face_recognition_models")
        # located, not imported: the package imports pkg_resources, gone from new setuptools
        if spec is None or not spec.submodule_search_locations:
            raise NoisyFRError(DLIB_MISSING)
        folder = Path(list(spec.submodule_search_locations)[0]) / "models"
        files = {"shape_predictor": folder / "shape_predictor_5_face_landmarks.dat",
                 "descriptor": folder / "dlib_face_recognition_resnet_model_v1.dat"}
        for f in files.values():
            if not f.is_file():
                raise NoisyFRError(f"{f}: missing from face_recognition_models ({DLIB_MISSING})")
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(files["shape_predictor"]))
        self.descriptor = dlib.face_recognition_model_v1(str(files["descriptor"]))
        self.upsample, self.jitter, self.dim = int(upsample), int(jitter), 128
        self.info = {"kind": "dlib", "name": "dlib_face_recognition_resnet_model_v1",
                     "dlib": dlib.__version__,
                     **{k: {"file": f.name, "sha256": file_sha256(f)} for k, f in files.items()}}
        self.preprocessing = {
            "decode": "PIL, RGB uint8",
            "detector": "dlib.get_frontal_face_detector (HOG)", "upsample": self.upsample,
            "choice": "the detection nearest the image centre",
            "fallback_box": {"fractions": list(FALLBACK_BOX), "of": "width, height",
                             "order": "left, top, right, bottom"},
            "landmarks": "shape_predictor_5_face_landmarks",
            "chip": {"size": self.CHIP_SIZE, "padding": self.PADDING, "by": "dlib.get_face_chip"},
            "jitter": self.jitter}

    def locate(self, image: np.ndarray) -> tuple[tuple[int, int, int, int], bool]:
        """(face box, missed): the detection nearest the centre, or the fallback box."""
        h, w = image.shape[:2]
        boxes = [_box(r) for r in self.detector(image, self.upsample)]
        if boxes:
            return boxes[central(boxes, w, h)], False
        return fallback_box(w, h), True

    def embed_one(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        box, missed = self.locate(image)
        shape = self.predictor(image, self.dlib.rectangle(*box))
        chip = self.dlib.get_face_chip(image, shape, size=self.CHIP_SIZE, padding=self.PADDING)
        if self.jitter:
            vec = self.descriptor.compute_face_descriptor(chip, self.jitter)
        else:
            vec = self.descriptor.compute_face_descriptor(chip)
        return np.asarray(vec, dtype=np.float32), missed

    def embed(self, images: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        out = [self.embed_one(img) for _, img in images]
        return (np.stack([e for e, _ in out]).astype(np.float32),
                np.asarray([m for _, m in out], dtype=bool))


def _to_tensor_batch(images, size: int, crop: float):
    """uint8 [H, W, 3] arrays -> float32 [n, 3, size, size] in [-1, 1] (noisyfr's eval transform)."""
    import torch

    from noisyfr.data.transforms import face_transform

    transform = face_transform(size, crop)
    return torch.stack([transform(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))
                        for _, img in images])


class CheckpointModel:
    """A noisyfr checkpoint or a bare (insightface) state dict, run on the CPU."""

    def __init__(self, path: str, backbone: str | None = None, embedding_dim: int | None = None,
                 center_crop: float | None = None, flip: bool = True):
        import torch

        from noisyfr.dotted import get_dotted
        from noisyfr.eval.checkpoint import load_backbone

        self.torch = torch
        self.model, ckpt = load_backbone(path, device="cpu", backbone=backbone,
                                         embedding_dim=embedding_dim)
        cfg = ckpt["config"]
        self.size = int(get_dotted(cfg, "data.image_size", 112))
        self.crop = float(center_crop if center_crop is not None else get_dotted(cfg, "data.center_crop", 1.0))
        self.flip, self.dim = bool(flip), int(get_dotted(cfg, "model.embedding_dim", 512))
        self.info = {"kind": "checkpoint", "file": Path(path).name, "sha256": file_sha256(path),
                     "backbone": get_dotted(cfg, "model.backbone"), "embedding_dim": self.dim,
                     **({"epoch": int(ckpt["epoch"])} if "epoch" in ckpt else {})}
        self.preprocessing = {"decode": "PIL, RGB uint8", "center_crop": self.crop,
                              "resize": [self.size, self.size], "antialias": True,
                              "scale": "x / 255 * 2 - 1", "flip_sum": self.flip}

    def embed(self, images):
        from noisyfr.eval.embed import embed_dataset

        x = _to_tensor_batch(images, self.size, self.crop)
        emb, _ = embed_dataset(self.model, list(x), flip=self.flip, normalize=False,
                               batch_size=max(1, len(images)), device="cpu", desc="embed")
        return emb, np.zeros(len(images), dtype=bool)


class OnnxModel:
    """An ONNX face model: one float input [N, 3, S, S], one output [N, d]."""

    def __init__(self, path: str, center_crop: float | None = None, flip: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise NoisyFRError(ONNX_MISSING) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise NoisyFRError(f"--model {path}: cannot load ONNX model "
                               f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        inp, outs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inp[0].shape) if inp else []
        if len(inp) != 1 or len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]) \
                or shape[1] != 3 or shape[2] != shape[3]:
            raise NoisyFRError(f"--model {path}: expected one input [N, 3, S, S], got "
                               f"{[(i.name, i.shape) for i in inp]}")
        out_shape = list(outs[0].shape)
        if len(out_shape) != 2 or not isinstance(out_shape[1], int):
            raise NoisyFRError(f"--model {path}: expected an output [N, d], got {out_shape}")
        self.input, self.size, self.dim = inp[0].name, int(shape[2]), int(out_shape[1])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.crop, self.flip = float(1.0 if center_crop is None else center_crop), bool(flip)
        import onnxruntime

        self.info = {"kind": "onnx", "file": Path(path).name, "sha256": file_sha256(path),
                     "onnxruntime": onnxruntime.__version__, "input": self.input, "dim": self.dim}
        self.preprocessing = {"decode": "PIL, RGB uint8", "center_crop": self.crop,
                              "resize": [self.size, self.size], "antialias": True,
                              "scale": "x / 255 * 2 - 1", "flip_sum": self.flip, "layout": "NCHW"}

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None:
            return self.session.run(None, {self.input: x})[0]
        return np.concatenate([self.session.run(None, {self.input: x[i:i + 1]})[0]
                               for i in range(len(x))])

    def embed(self, images):
        x = _to_tensor_batch(images, self.size, self.crop).numpy().astype(np.float32)
        emb = self._run(x)
        if self.flip:
            emb = emb + self._run(np.ascontiguousarray(x[..., ::-1]))
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape != (len(images), self.dim):
            raise NoisyFRError(f"ONNX model gave output of shape {emb.shape}, expected "
                               f"({len(images)}, {self.dim})")
        return emb, np.zeros(len(images), dtype=bool)


def load_model(model: str, *, backbone: str | None = None, embedding_dim: int | None = None,
               center_crop: float | None = None, flip: bool = True, upsample: int = 1,
               jitter: int = 0):
    """The model named by ``--model``: ``dlib``, a ``.onnx`` file or a checkpoint file."""
    if model == "dlib":
        return DlibModel(upsample=upsample, jitter=jitter)
    path = Path(model)
    if not path.is_file():
        raise NoisyFRError(f"--model {model}: not 'dlib' nor a checkpoint or .onnx file")
    if path.suffix.lower() == ".onnx":
        return OnnxModel(model, center_crop=center_crop, flip=flip)
    return CheckpointModel(model, backbone=backbone, embedding_dim=embedding_dim,
                           center_crop=center_crop, flip=flip)
