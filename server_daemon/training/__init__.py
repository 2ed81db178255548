"""Training: the synthetic set -> one global classifier, exported to ONNX for the sites.

Importing this package does not import torch; ``train_classifier``, ``export_onnx`` and the other
torch-backed names are loaded on first use. ``TrainingRecipe`` is the one description of how to
train: the server config's ``[training]`` table (so it is defined, torch-free, in
``server_daemon.ingest.config``), the argument of ``train_classifier`` and the recipe of the
simulator's baselines.

Typical use, as the daemon's training job (``server_daemon.jobs.training``) does::

    from server_daemon.training import train_classifier

    result = train_classifier(synthesis_out_dir, train_out_dir, cfg.training, labels=classes,
                              on_epoch_end=lambda m: show_progress(m) or job_cancelled())
    # result.onnx_path -> sign it and offer it to the sites; result.curves_path -> the report

Rerunning the same call after a crash resumes after the last finished epoch.

API
---
- ``TrainingRecipe(arch="resnet18"|"cnn"|"tiny", image_size=224, epochs=120, batch_size=128, lr=0.01,
  momentum=0.9, weight_decay=2e-4, val_fraction=0.1, seed=0, device="auto", augment=True,
  augmentation="rrc-flip"|"shift-flip"|"shift", lr_schedule="constant"|"cosine")``:
  FGL's defaults; ``problem()`` names the first setting out of range.
- ``train_classifier(source, out_dir, recipe=None, *, device=None, labels=None,
  lr_schedule=None, amp=None, channels_last=None, num_workers=0, cache="auto",
  resume=True, progress=True, on_epoch_end=None, on_progress=None, export=True, **settings)
  -> TrainingResult`` (out_dir, labels, history, best_epoch, best_val_acc, completed, model,
  metrics_path, curves_path, model_dir, onnx_path); ``settings`` replace recipe fields
  (``arch="tiny", epochs=3``). Selection on a held-out synthetic split, never a test set. Files:
  ``checkpoint.pt``, ``metrics.json``, ``curves.png``, ``model/``, ``model.onnx``.
- ``train_epoch(model, optimizer, scaler, batches, recipe, generator, policy)``: one epoch of
  SGD, the step the one-shot run and the baselines share (with ``Batches``, ``DevicePolicy``,
  ``new_classifier``, ``new_optimizer``).
- ``build_classifier(arch, num_labels, labels=None, seed=0, image_size=32)``, ``build_resnet``,
  ``build_cnn`` and ``load_classifier(dir)`` (:mod:`.models`).
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
from ..ingest.config import TrainingRecipe  # torch-free: the [training] table is the recipe

_LAZY = {
    "train_classifier": "train", "TrainingResult": "train", "load_trained": "train", "train_epoch": "train",
    "Batches": "train", "DevicePolicy": "train", "new_classifier": "train", "new_optimizer": "train",
    "build_resnet": "models", "resnet_config": "models", "build_classifier": "models", "build_cnn": "models",
    "load_classifier": "models", "lr_at": "train",
    "export_onnx": "export", "read_metadata": "export", "run_onnx": "export", "count_batchnorm": "export",
    "write_curves": "curves", "load_dataset": "data", "split_samples": "data",
    "random_resized_crop_flip": "data", "random_shift_flip": "data", "augment_batch": "data",
}

__all__ = ["CheckpointError", "DatasetError", "ExportError", "TrainingError", "TrainingRecipe", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
