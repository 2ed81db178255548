"""train_classifier on a small learnable synthetic set: it learns, writes metrics/curves/model/ONNX,
selects on the held-out synthetic split, and a stopped run resumes to the same weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from server_daemon.training import (CheckpointError, TrainingError, count_batchnorm, load_trained,
                                    read_metadata, run_onnx, train_classifier)

ARGS = dict(arch="tiny", image_size=16, epochs=3, batch_size=16, val_fraction=0.2, seed=0, progress=False)


@pytest.fixture(scope="module")
def full_run(colour_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "full"
    return train_classifier(colour_set, out, **ARGS, lr=0.05)


def test_it_learns_and_writes_everything(full_run):
    r = full_run
    assert r.completed and r.labels == ["red", "green", "blue"] and len(r.history) == 3
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.best_val_acc is not None and r.best_val_acc >= 0.75  # chance is 1/3
    metrics = json.loads(r.metrics_path.read_text())
    assert metrics["selection"] == "held-out synthetic split" and metrics["completed"]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"} <= set(metrics["epochs"][0])
    assert metrics["config"]["lr"] == 0.05 and metrics["config"]["momentum"] == 0.9
    assert metrics["config"]["weight_decay"] == 2e-4
    assert metrics["dataset_counts"] == [20, 20, 20]
    best = max(r.history, key=lambda h: h["val_acc"])
    assert r.best_val_acc == best["val_acc"] and r.best_epoch == metrics["best_epoch"]
    assert Image.open(r.curves_path).format == "PNG"


def test_saved_model_and_onnx_agree(full_run, colour_set):
    r = full_run
    model = load_trained(r.out_dir)
    assert model.config.id2label == {0: "red", 1: "green", 2: "blue"}
    for a, b in zip(model.state_dict().values(), r.model.state_dict().values()):
        assert torch.equal(a, b)
    meta = read_metadata(r.onnx_path)
    assert json.loads(meta["osfl.labels"]) == r.labels and meta["osfl.image_size"] == "16"
    assert meta["osfl.best_epoch"] == str(r.best_epoch)
    assert count_batchnorm(r.onnx_path) > 0
    # the exported model classifies the synthetic images as torch does
    files = sorted(colour_set.glob("shard_*/*.png"))[:12]
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
                  for f in files]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    logits = run_onnx(r.onnx_path, x)
    from server_daemon.training.export import NormalizedClassifier

    with torch.no_grad():
        expected = NormalizedClassifier(r.model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_stopped_run_resumes_to_the_same_weights(full_run, colour_set, tmp_path):
    out = tmp_path / "resumed"
    first = train_classifier(colour_set, out, **ARGS, lr=0.05, on_epoch_end=lambda m: m["epoch"] == 1)
    assert not first.completed and len(first.history) == 1 and first.onnx_path is None
    assert not (out / "model").exists()
    seen = []
    second = train_classifier(colour_set, out, **ARGS, lr=0.05, on_epoch_end=lambda m: seen.append(m["epoch"]))
    assert seen == [2, 3] and second.completed
    ckpt_full = torch.load(full_run.out_dir / "checkpoint.pt", weights_only=False)
    ckpt_resumed = torch.load(out / "checkpoint.pt", weights_only=False)
    for key, value in ckpt_full["model"].items():
        assert torch.equal(value, ckpt_resumed["model"][key]), key
    for a, b in zip(full_run.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in h]  # noqa: E731
    assert strip(second.history) == strip(full_run.history)
    # a finished run called again does nothing but rebuild the outputs
    again = train_classifier(colour_set, out, **ARGS, lr=0.05, export=False)
    assert len(again.history) == 3 and again.best_epoch == second.best_epoch


def test_checkpoint_of_other_settings_is_refused(full_run, colour_set):
    with pytest.raises(CheckpointError, match="other settings"):
        train_classifier(colour_set, full_run.out_dir, **{**ARGS, "epochs": 4}, lr=0.05)


def test_progress_and_last_epoch_selection(colour_set, tmp_path):
    calls = []
    r = train_classifier(colour_set, tmp_path / "noval", **{**ARGS, "epochs": 2, "val_fraction": 0.0},
                         lr_schedule="cosine", export=False, on_progress=lambda d, t: calls.append((d, t)))
    assert r.best_epoch == 2 and r.best_val_acc is None and r.onnx_path is None
    assert calls[-1][0] == calls[-1][1] == len(calls) and calls[0] == (1, calls[0][1])
    assert [h["lr"] for h in r.history] == [0.01, pytest.approx(0.005)]
    metrics = json.loads((tmp_path / "noval" / "metrics.json").read_text())
    assert metrics["selection"] == "last epoch"


def test_without_cache_gives_the_same_model(colour_set, tmp_path):
    a = train_classifier(colour_set, tmp_path / "a", **{**ARGS, "epochs": 1}, cache=True, export=False)
    b = train_classifier(colour_set, tmp_path / "b", **{**ARGS, "epochs": 1}, cache=False, export=False)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="vgg"), "unknown arch"), (dict(epochs=0), "epochs"), (dict(image_size=4), "image_size"),
    (dict(lr_schedule="step"), "unknown lr_schedule"), (dict(val_fraction=1.0), "val_fraction"),
    (dict(lr=0.0), "lr must be"), (dict(device="cuda:0"), "no CUDA GPU"),
])
def test_bad_settings(colour_set, tmp_path, kwargs, match):
    if kwargs.get("device") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TrainingError, match=match):
        train_classifier(colour_set, tmp_path / "x", **{**ARGS, **kwargs})
