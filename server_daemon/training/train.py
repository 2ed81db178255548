"""Train the global classifier on the synthetic set; resumable; curves; ONNX export.

FGL's recipe by default: ResNet-18 (transformers' ``ResNetForImageClassification``) from
scratch, SGD lr 0.01, momentum 0.9, weight decay 2e-4, batch 128, constant learning rate,
RandomResizedCrop + horizontal flip. Model selection uses a held-out split of the *synthetic*
images (``val_fraction``); with ``val_fraction=0`` the last epoch is the model. A test set is
never looked at here.

Output directory::

    checkpoint.pt     after every epoch (atomic): weights, optimizer, scaler, history, best weights
    metrics.json      per-epoch train loss/accuracy, val loss/accuracy, lr, images/s; best epoch
    curves.png        loss and accuracy per epoch (Pillow)
    model/            the selected model (transformers ``save_pretrained``, id2label = labels)
    model.onnx        the selected model for the sites (see :mod:`.export`), when ``export=True``

Resuming: a rerun with the same dataset and settings continues after the last finished epoch.
Every epoch draws its shuffling and augmentation from a generator seeded by (seed, epoch), so a
run stopped after epoch k and resumed ends with the same weights as an uninterrupted run (on the
CPU; GPU kernels are not bitwise deterministic). A checkpoint of other settings or another dataset
is refused with :class:`CheckpointError`.

Device policy: CUDA -> automatic mixed precision (bf16 where supported, else fp16 with a gradient
scaler) and channels_last; CPU -> fp32.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .curves import write_curves
from .data import (Dataset, ImageFiles, Sample, center_resize, load_dataset, normalize, preload,
                   random_resized_crop_flip, split_samples)
from .errors import CheckpointError, TrainingError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVES = "curves.png"
MODEL_DIR = "model"
ONNX_FILE = "model.onnx"
ARCHS = ("resnet18", "tiny")
LR_SCHEDULES = ("constant", "cosine")
#: preload the decoded images when they take less than this (uint8 bytes)
CACHE_LIMIT = 4 << 30


@dataclass(frozen=True)
class TrainConfig:
    """Settings that define a run; a checkpoint is resumed only under the same ones."""

    arch: str = "resnet18"
    image_size: int = 224
    epochs: int = 120
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    val_fraction: float = 0.1
    seed: int = 0
    lr_schedule: str = "constant"
    augment: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise TrainingError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"unknown lr_schedule {self.lr_schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
        for name in ("image_size", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise TrainingError(f"{name} must be a positive integer, got {v!r}")
        if self.image_size < 8:
            raise TrainingError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0:
            raise TrainingError("lr must be > 0, momentum and weight_decay >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainingError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class TrainingResult:
    """What :func:`train_classifier` produced."""

    out_dir: Path
    labels: list[str]
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_acc: float | None
    completed: bool
    model: torch.nn.Module = field(repr=False)
    metrics_path: Path = field(default=Path())
    curves_path: Path = field(default=Path())
    model_dir: Path | None = None
    onnx_path: Path | None = None


EpochFn = Callable[[dict], "bool | None"]
ProgressFn = Callable[[int, int], None]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    digest = hashlib.sha256(f"osfl-train\0{seed}\0{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & ((1 << 63) - 1))


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _Batches:
    """Yields (uint8 images, labels) for index batches, from memory or by decoding files."""

    def __init__(self, samples: Sequence[Sample], size: int, cache: bool, num_workers: int, pin: bool):
        self.samples, self.size, self.num_workers, self.pin = list(samples), size, num_workers, pin
        self.images = self.labels = None
        if cache and self.samples:
            self.images, self.labels = preload(self.samples, size, num_workers)

    def __len__(self) -> int:
        return len(self.samples)

    def iterate(self, batches: list[list[int]]):
        if self.images is not None:
            for idx in batches:
                t = torch.tensor(idx)
                yield self.images[t], self.labels[t]
            return
        loader = torch.utils.data.DataLoader(ImageFiles(self.samples, self.size), batch_sampler=batches,
                                             num_workers=self.num_workers, pin_memory=self.pin)
        yield from loader


def _index_batches(n: int, batch_size: int, order: torch.Tensor | None) -> list[list[int]]:
    idx = order.tolist() if order is not None else list(range(n))
    batches = [idx[k:k + batch_size] for k in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()  # a batch of one breaks BatchNorm statistics
    return batches


def train_classifier(
    source: str | os.PathLike | Dataset,
    out_dir: str | os.PathLike,
    *,
    arch: str = "resnet18",
    image_size: int = 224,
    epochs: int = 120,
    batch_size: int = 128,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 2e-4,
    val_fraction: float = 0.1,
    seed: int = 0,
    lr_schedule: str = "constant",
    augment: bool = True,
    device: str | torch.device | None = None,
    labels: Sequence[str] | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    num_workers: int = 0,
    cache: bool | str = "auto",
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: EpochFn | None = None,
    on_progress: ProgressFn | None = None,
    export: bool = True,
) -> TrainingResult:
    """Train a classifier on the synthetic images in ``source`` and write the outputs to ``out_dir``.

    ``source`` is a synthesis output directory, its ``manifest.jsonl`` or a loaded
    :class:`~.data.Dataset`. ``on_epoch_end(metrics)`` is called after each epoch's checkpoint
    is written; returning True stops the run there (the daemon's cancel; the run can be resumed).
    ``on_progress(done_steps, total_steps)`` follows the optimiser steps. ``amp`` and
    ``channels_last`` default to on for CUDA, off for the CPU. ``cache`` "auto" keeps the decoded
    images in memory when they take less than 4 GiB.
    """
    cfg = TrainConfig(arch=arch, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                      momentum=momentum, weight_decay=weight_decay, val_fraction=val_fraction, seed=seed,
                      lr_schedule=lr_schedule, augment=augment)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {dev} was requested but torch sees no CUDA GPU; use device 'cpu'")
    use_amp = (dev.type == "cuda") if amp is None else bool(amp and dev.type == "cuda")
    use_cl = (dev.type == "cuda") if channels_last is None else bool(channels_last)
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16

    data = source if isinstance(source, Dataset) else load_dataset(source, labels)
    label_names = list(data.labels)
    train_samples, val_samples = split_samples(data.samples, cfg.val_fraction, cfg.seed)
    if len(train_samples) < 2:
        raise TrainingError(f"only {len(train_samples)} training image(s); synthesise more images per class")
    if cache == "auto":
        cache = len(data.samples) * 3 * cfg.image_size ** 2 < CACHE_LIMIT
    pin = dev.type == "cuda"
    train_data = _Batches(train_samples, cfg.image_size, bool(cache), num_workers, pin)
    val_data = _Batches(val_samples, cfg.image_size, bool(cache), num_workers, pin)

    from server_daemon.tinymodels import build_resnet

    model = build_resnet(len(label_names), "tiny" if cfg.arch == "tiny" else "resnet18", label_names, seed=cfg.seed)
    model.to(dev)
    if use_cl:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_key = {"config": dataclasses.asdict(cfg), "dataset": data.fingerprint()}
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_val: float | None = None
    best_epoch = 0
    start = 0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.exists():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"cannot read {ckpt_path} ({type(exc).__name__}); delete it to start over") from None
        if ckpt.get("run_key") != run_key:
            raise CheckpointError(f"{ckpt_path} belongs to a run with other settings or another dataset; "
                                  "use a new output directory, pass resume=False, or delete the checkpoint")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        history, best_val, best_epoch = ckpt["history"], ckpt["best_val"], ckpt["best_epoch"]
        best_state = ckpt["best_state"]
        start = ckpt["epoch"]
        log.info("resuming training in %s after epoch %d of %d", out, start, cfg.epochs)

    steps_per_epoch = len(_index_batches(len(train_data), cfg.batch_size, None))
    total_steps = steps_per_epoch * cfg.epochs
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start * steps_per_epoch, unit="step", desc="training",
               disable=not progress)
    stopped = False
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.monotonic()
            gen = _epoch_generator(cfg.seed, epoch)
            lr_now = _lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            order = torch.randperm(len(train_data), generator=gen)
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for step, (x, y) in enumerate(train_data.iterate(_index_batches(len(train_data), cfg.batch_size, order))):
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if cfg.augment:
                    x = random_resized_crop_flip(x, cfg.image_size, gen)
                else:
                    x = center_resize(x, cfg.image_size)
                x = normalize(x)
                if use_cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(pixel_values=x).logits
                    loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                n = y.shape[0]
                loss_sum += float(loss.detach()) * n
                correct += int((logits.argmax(1) == y).sum())
                seen += n
                bar.update(1)
                if on_progress:
                    on_progress(epoch * steps_per_epoch + step + 1, total_steps)
            train_seconds = time.monotonic() - t0
            val_loss, val_acc = _evaluate(model, val_data, cfg, dev, use_amp, amp_dtype, use_cl)
            record = {
                "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                "val_loss": val_loss, "val_acc": val_acc, "lr": lr_now,
                "seconds": time.monotonic() - t0, "images_per_s": seen / train_seconds if train_seconds > 0 else 0.0,
            }
            history.append(record)
            if val_acc is None or best_val is None or val_acc > best_val:
                best_val, best_epoch = val_acc, epoch + 1
                best_state = _cpu_state(model)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                            val_acc="-" if val_acc is None else f"{val_acc:.3f}")
            _atomic_save({"epoch": epoch + 1, "run_key": run_key, "model": _cpu_state(model),
                          "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                          "history": history, "best_val": best_val, "best_epoch": best_epoch,
                          "best_state": best_state}, ckpt_path)
            _write_metrics(out, cfg, label_names, data, history, best_epoch, best_val, dev, use_amp,
                           completed=epoch + 1 == cfg.epochs)
            write_curves(history, out / CURVES, title=f"{cfg.arch}, {len(train_samples)} train / "
                                                      f"{len(val_samples)} val synthetic images")
            log.info("epoch %d/%d: train loss %.4f, val acc %s", epoch + 1, cfg.epochs, record["train_loss"],
                     "-" if val_acc is None else f"{val_acc:.4f}")
            if on_epoch_end and on_epoch_end(dict(record)) and epoch + 1 < cfg.epochs:
                stopped = True
                break
    finally:
        bar.close()

    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    result = TrainingResult(out_dir=out, labels=label_names, history=history, best_epoch=best_epoch,
                            best_val_acc=best_val, completed=not stopped, model=model,
                            metrics_path=out / METRICS, curves_path=out / CURVES)
    if stopped:
        return result
    model.save_pretrained(out / MODEL_DIR)
    result.model_dir = out / MODEL_DIR
    if export:
        from .export import export_onnx

        result.onnx_path = export_onnx(model, out / ONNX_FILE, cfg.image_size, label_names, arch=cfg.arch,
                                       metadata={"osfl.best_epoch": str(best_epoch)})
    return result


@torch.no_grad()
def _evaluate(model, data: _Batches, cfg: TrainConfig, dev, use_amp, amp_dtype, use_cl):
    if len(data) == 0:
        return None, None
    model.eval()
    loss_sum, correct = 0.0, 0
    n = len(data)
    for x, y in data.iterate([list(range(k, min(k + cfg.batch_size, n))) for k in range(0, n, cfg.batch_size)]):
        x = normalize(center_resize(x.to(dev), cfg.image_size))
        if use_cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(dev)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            logits = model(pixel_values=x).logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / n, correct / n


def _write_metrics(out: Path, cfg: TrainConfig, labels, data: Dataset, history, best_epoch, best_val, dev,
                   use_amp, completed: bool) -> None:
    _atomic_json({
        "config": dataclasses.asdict(cfg), "labels": labels, "dataset": str(data.root),
        "dataset_counts": data.counts(), "device": str(dev), "amp": use_amp,
        "selection": "held-out synthetic split" if cfg.val_fraction > 0 else "last epoch",
        "best_epoch": best_epoch, "best_val_acc": best_val, "completed": completed, "epochs": history,
    }, out / METRICS)


def load_trained(out_dir: str | os.PathLike):
    """The selected model saved by :func:`train_classifier` (transformers ``from_pretrained``)."""
    from transformers import ResNetForImageClassification

    path = Path(out_dir) / MODEL_DIR
    if not (path / "config.json").is_file():
        raise TrainingError(f"{path} holds no trained model; run train_classifier to the end first")
    return ResNetForImageClassification.from_pretrained(path).eval()
