"""ONNX export of the global classifier: BN kept, names, dynamic batch, metadata, ORT == torch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from server_daemon.training.models import build_resnet
from server_daemon.training import ExportError, count_batchnorm, export_onnx, read_metadata, run_onnx
from server_daemon.training.export import NormalizedClassifier

LABELS = ["benign", "malignant", "normal ünïcode"]


def _with_bn_stats(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("size, image_size", [("tiny", 32), ("resnet18", 32)])
def test_export_keeps_batchnorm_and_matches_torch(tmp_path, size, image_size):
    model = _with_bn_stats(build_resnet(3, size, LABELS, seed=1))
    path = export_onnx(model, tmp_path / "m.onnx", image_size, LABELS, arch=size)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert count_batchnorm(path) == n_bn > 0
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 5):
        x = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = NormalizedClassifier(model).eval()(x).numpy()
        got = run_onnx(path, x.numpy())
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_metadata(tmp_path):
    model = build_resnet(3, "tiny", LABELS)
    path = export_onnx(model, tmp_path / "m.onnx", 16, LABELS, metadata={"osfl.federation": "fed-1"})
    meta = read_metadata(path)
    assert json.loads(meta["osfl.labels"]) == LABELS
    assert meta["osfl.image_size"] == "16" and meta["osfl.federation"] == "fed-1"
    assert "[0,1]" in meta["osfl.input"] and json.loads(meta["osfl.mean"]) == [0.485, 0.456, 0.406]
    assert model.training is False


def test_label_count_mismatch(tmp_path):
    with pytest.raises(ExportError, match="3 outputs but 2 label names"):
        export_onnx(build_resnet(3, "tiny"), tmp_path / "m.onnx", 16, LABELS[:2])
    assert not (tmp_path / "m.onnx").exists()


def test_export_restores_training_mode(tmp_path):
    model = build_resnet(3, "tiny", LABELS).train()
    export_onnx(model, tmp_path / "m.onnx", 16, LABELS)
    assert model.training is True
