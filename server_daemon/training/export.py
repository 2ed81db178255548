"""Export the global classifier to ONNX for the sites, with BatchNorm kept and labels embedded.

The exported graph takes ``pixel_values``: float32 RGB, NCHW, values in [0, 1], resized to
``image_size`` x ``image_size``; ImageNet normalisation is part of the graph, so a site needs only
Pillow and numpy to prepare an image. The output is ``logits`` (batch, classes). The batch axis is
dynamic. BatchNormalization nodes stay in the graph (no constant folding, no Conv+BN fusion):
FedLMG's guidance reads BN statistics, and a site can check them.

Metadata (``metadata_props``, all strings): ``osfl.labels`` (JSON list), ``osfl.image_size``,
``osfl.input`` (the contract above in words), ``osfl.mean``/``osfl.std`` (JSON, already applied
inside), ``osfl.arch``, plus any extra keys given. Signing is the daemon's job.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .data import MEAN, STD, normalize
from .errors import ExportError

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
OPSET = 17
INPUT_CONTRACT = "RGB float32 NCHW in [0,1], resized to image_size x image_size; normalisation is inside the model"


class NormalizedClassifier(torch.nn.Module):
    """[0, 1] pixels -> ImageNet normalisation -> classifier -> logits tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=normalize(pixel_values))
        return out.logits if hasattr(out, "logits") else out


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, image_size: int, labels: Sequence[str], *,
                arch: str | None = None, metadata: Mapping[str, str] | None = None, verify: bool = True,
                atol: float = 1e-4) -> Path:
    """Write ``model`` (a ``ResNetForImageClassification`` or any module taking ``pixel_values``)
    to ``path`` as ONNX (opset 17, legacy TorchScript exporter, BN kept); return the path.

    With ``verify``: the file is checked with ``onnx.checker``, must still hold
    BatchNormalization nodes when the model has BN layers, and onnxruntime must match torch within
    ``atol`` on a seeded batch of two; otherwise :class:`ExportError`.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if n_labels is not None and n_labels != len(labels):
        raise ExportError(f"the model has {n_labels} outputs but {len(labels)} label names were given")
    was_training = model.training
    wrapper = NormalizedClassifier(model).eval().cpu()
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer chatter
            torch.onnx.export(
                wrapper, (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET, do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
        proto = onnx.load(str(tmp))
        props = {
            "osfl.labels": json.dumps(list(labels), ensure_ascii=False),
            "osfl.image_size": str(int(image_size)),
            "osfl.input": INPUT_CONTRACT,
            "osfl.mean": json.dumps(list(MEAN)),
            "osfl.std": json.dumps(list(STD)),
            "osfl.arch": arch or type(model).__name__,
        }
        props.update({str(k): str(v) for k, v in (metadata or {}).items()})
        del proto.metadata_props[:]
        for k, v in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
        if verify:
            _verify(wrapper, model, tmp, example, atol)
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def _verify(wrapper, model, path: Path, example: torch.Tensor, atol: float) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and count_batchnorm(path) == 0:
        raise ExportError(f"{path} has no BatchNormalization node although the model has BN layers; "
                          "BN was folded into Conv: export with do_constant_folding=False")
    with torch.no_grad():
        expected = wrapper(example).numpy()
    got = run_onnx(path, example.numpy())
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise ExportError(f"onnxruntime output differs from torch by {err:.2e} (allowed {atol:.0e})")


def count_batchnorm(path: str | os.PathLike) -> int:
    """Number of BatchNormalization nodes in the ONNX file."""
    import onnx

    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


def run_onnx(path: str | os.PathLike, pixel_values: np.ndarray) -> np.ndarray:
    """Logits from onnxruntime (CPU) for float32 ``pixel_values`` in [0, 1]."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values.astype(np.float32)})[0]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (labels stay JSON text)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
