"""Training: the synthetic set -> one global classifier, exported to ONNX for the sites.

Importing this package does not import torch; ``train_classifier``, ``export_onnx`` and the other
torch-backed names are loaded on first use.

Typical use by the daemon's training worker::

    from server_daemon.training import train_classifier

    result = train_classifier(synthesis_out_dir, train_out_dir, arch="resnet18", image_size=224,
                              epochs=120, batch_size=128, val_fraction=0.1, seed=0,
                              on_epoch_end=lambda m: store.add_epoch(job, m) or job_cancelled())
    # result.onnx_path -> sign it and offer it to the sites; result.curves_path -> the report

Rerunning the same call after a crash resumes after the last finished epoch.

API
---
- ``train_classifier(source, out_dir, *, arch="resnet18"|"tiny", image_size=224, epochs=120,
  batch_size=128, lr=0.01, momentum=0.9, weight_decay=2e-4, val_fraction=0.1, seed=0,
  lr_schedule="constant"|"cosine", augment=True, device=None, labels=None, amp=None,
  channels_last=None, num_workers=0, cache="auto", resume=True, progress=True, on_epoch_end=None,
  on_progress=None, export=True) -> TrainingResult`` (out_dir, labels, history, best_epoch,
  best_val_acc, completed, model, metrics_path, curves_path, model_dir, onnx_path). Defaults are
  FGL's; selection on a held-out synthetic split, never a test set. Files: ``checkpoint.pt``,
  ``metrics.json``, ``curves.png``, ``model/``, ``model.onnx``.
- ``load_trained(out_dir)``: the selected model back from ``out_dir/model``.
- ``export_onnx(model, path, image_size, labels, *, arch=None, metadata=None, verify=True,
  atol=1e-4) -> Path``: input ``pixel_values`` (float32 RGB NCHW in [0, 1], normalisation inside),
  output ``logits``, dynamic batch, BatchNormalization kept, labels as JSON in
  ``metadata_props["osfl.labels"]``; ``read_metadata(path)``, ``run_onnx(path, pixels)``,
  ``count_batchnorm(path)``.
- ``write_curves(history, out_png, title="")``: Pillow line plots (no torch).
- ``load_dataset(source, labels=None)``, ``split_samples(samples, val_fraction, seed)``,
  ``random_resized_crop_flip(images, out_size, generator)``: the data pipeline pieces.
- errors: ``TrainingError`` > ``DatasetError``, ``CheckpointError``, ``ExportError``.

Not here yet: FedLMG's distillation variants (CE + KD from the site models), multi-round FedAvg,
DDP across GPUs.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import CheckpointError, DatasetError, ExportError, TrainingError

_LAZY = {
    "train_classifier": "train", "TrainingResult": "train", "TrainConfig": "train", "load_trained": "train",
    "export_onnx": "export", "read_metadata": "export", "run_onnx": "export", "count_batchnorm": "export",
    "write_curves": "curves", "load_dataset": "data", "split_samples": "data",
    "random_resized_crop_flip": "data",
}

__all__ = ["CheckpointError", "DatasetError", "ExportError", "TrainingError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
