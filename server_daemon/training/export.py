"""Export the global classifier to ONNX for the sites, with BatchNorm kept and labels embedded.

The exported graph takes ``pixel_values``: float32 RGB, NCHW, values in [0, 1], resized to
``image_size`` x ``image_size``; ImageNet normalisation is part of the graph, so a site needs only
Pillow and numpy to prepare an image. The output is ``logits`` (batch, classes). The batch axis is
dynamic. BatchNormalization nodes stay in the graph (no constant folding, no Conv+BN fusion):
FedLMG's guidance reads BN statistics, and a site can check them.

Metadata (``metadata_props``, all strings): ``osfl.labels`` (JSON list), ``osfl.image_size``,
``osfl.input`` (the contract above in words), ``osfl.mean``/``osfl.std`` (JSON, already applied
inside), ``osfl.arch``, plus any extra keys given. Signing is the daemon's job.

:func:`write_classifier_graph` is the one classifier export of the server: the sites' model
bundle (``server_daemon.edge_models.export.export_classifier``) writes its classifier with it
too, adding a ``features`` output; :func:`export_graph` is the exporter call every graph uses.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from protocol.files import atomic_write

from .data import MEAN, STD, normalize
from .errors import ExportError

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"
OPSET = 17
INPUT_CONTRACT = "RGB float32 NCHW in [0,1], resized to image_size x image_size; normalisation is inside the model"
#: permission bits of the exported file (what a plain open() under umask 022 gives)
FILE_MODE = 0o644


def export_graph(module: torch.nn.Module, args: tuple, path: str | os.PathLike, *, input_names: Sequence[str],
                 output_names: Sequence[str], dynamic_axes: Mapping, constant_folding: bool = True,
                 opset: int = OPSET) -> None:
    """Trace ``module`` on ``args`` into an ONNX file with torch's legacy TorchScript exporter, in
    eval mode: how every graph the server ships (classifier, captioner, VAE encoder) is written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notes and tracer chatter
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dict(dynamic_axes), opset_version=opset,
                          do_constant_folding=constant_folding, training=torch.onnx.TrainingMode.EVAL)


class NormalizedClassifier(torch.nn.Module):
    """[0, 1] pixels -> ImageNet normalisation -> classifier -> logits (and, with ``features``,
    the pooled features the logits are computed from)."""

    def __init__(self, model: torch.nn.Module, features: bool = False):
        super().__init__()
        self.model = model
        self.features = features

    def forward(self, pixel_values: torch.Tensor):
        x = normalize(pixel_values)
        if not self.features:
            out = self.model(pixel_values=x)
            return out.logits if hasattr(out, "logits") else out
        base = getattr(self.model, getattr(self.model, "base_model_prefix", ""), None)
        head = getattr(self.model, "classifier", None)
        if base is not None and head is not None:
            # run the trunk once: pooled features, then the head (ResNet and alike)
            feats = base(pixel_values=x, return_dict=True).pooler_output
            return head(feats), torch.flatten(feats, 1)
        logits = self.model(pixel_values=x, return_dict=True).logits
        return logits, logits


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def write_classifier_graph(model: torch.nn.Module, path: str | os.PathLike, image_size: int, *,
                           features: bool = False) -> tuple[NormalizedClassifier, torch.Tensor]:
    """The classifier export both the global model (:func:`export_onnx`) and the sites' bundle
    (``server_daemon.edge_models.export.export_classifier``) use.

    Writes ``model`` behind :class:`NormalizedClassifier` (on the CPU, eval mode) to ``path``:
    input ``pixel_values``, output ``logits`` (and ``features``), dynamic batch, no constant
    folding so that BatchNormalization stays. Returns the wrapper and the seeded example batch of
    two it was traced on, for checking the file against torch.
    """
    wrapper = NormalizedClassifier(model, features).eval().cpu()
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    outputs = [OUTPUT_NAME, FEATURES_NAME] if features else [OUTPUT_NAME]
    with torch.no_grad():
        export_graph(wrapper, (example,), path, input_names=[INPUT_NAME], output_names=outputs,
                     dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)}, constant_folding=False)
    return wrapper, example


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, image_size: int, labels: Sequence[str], *,
                arch: str | None = None, metadata: Mapping[str, str] | None = None, verify: bool = True,
                atol: float = 1e-4) -> Path:
    """Write ``model`` (a ``ResNetForImageClassification`` or any module taking ``pixel_values``)
    to ``path`` as ONNX (opset 17, legacy TorchScript exporter, BN kept); return the path.

    With ``verify``: the file is checked with ``onnx.checker``, must still hold
    BatchNormalization nodes when the model has BN layers, and onnxruntime must match torch within
    ``atol`` on a seeded batch of two; otherwise :class:`ExportError`. The file is replaced
    atomically, and only once it passed.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if n_labels is not None and n_labels != len(labels):
        raise ExportError(f"the model has {n_labels} outputs but {len(labels)} label names were given")
    was_training = model.training
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            staged = Path(tmp) / path.name
            wrapper, example = write_classifier_graph(model, staged, image_size)
            proto = onnx.load(str(staged))
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
            onnx.save(proto, str(staged))
            if verify:
                _verify(wrapper, model, staged, example, atol)
            atomic_write(path, staged.read_bytes(), mode=FILE_MODE)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    return path


def _verify(wrapper, model, path: Path, example: torch.Tensor, atol: float) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    if has_batchnorm(model) and count_batchnorm(path) == 0:
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
