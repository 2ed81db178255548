"""Train the global classifier on the synthetic set; resumable; curves; ONNX export.

FGL's recipe by default (``TrainingRecipe``, the server config's [training] table, defined in
:mod:`server_daemon.ingest.config`): ResNet-18 (transformers' ``ResNetForImageClassification``,
:mod:`.models`) from scratch, SGD lr 0.01, momentum 0.9, weight decay 2e-4, batch 128, constant
learning rate, RandomResizedCrop + horizontal flip. Model selection uses a held-out split of the *synthetic*
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

Device policy (:class:`DevicePolicy`): CUDA -> automatic mixed precision (bf16 where supported,
else fp16 with a gradient scaler) and channels_last; CPU -> fp32.

The step itself (:func:`train_epoch` over :class:`Batches`, with :func:`new_classifier` and
:func:`new_optimizer`) is also what the simulator's centralized and FedAvg baselines train with,
so the one-shot model and the baselines differ only in their data.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from protocol.files import atomic_write, atomic_writer

from .curves import write_curves
from .data import (Dataset, ImageFiles, Sample, augment_batch, center_resize, load_dataset, normalize, preload,
                   split_samples)
from .errors import CheckpointError, TrainingError
from .models import build_classifier, load_classifier
from ..ingest.config import TrainingRecipe

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVES = "curves.png"
MODEL_DIR = "model"
ONNX_FILE = "model.onnx"
#: preload the decoded images when they take less than this (uint8 bytes)
CACHE_LIMIT = 4 << 30
#: permission bits of the files written here (what a plain open() under umask 022 gives)
FILE_MODE = 0o644


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


# ---- the pieces every classifier training uses (one-shot here, the simulator's baselines) -------

@dataclass(frozen=True)
class DevicePolicy:
    """Where the steps run and how: CUDA -> automatic mixed precision (bf16 where supported, else
    fp16 with a gradient scaler) and channels_last; the CPU -> fp32."""

    device: torch.device
    amp: bool = False
    amp_dtype: torch.dtype = torch.float16
    channels_last: bool = False

    @classmethod
    def choose(cls, device: str | torch.device | None = None, amp: bool | None = None,
               channels_last: bool | None = None) -> "DevicePolicy":
        """``device`` None picks CUDA when torch sees a GPU; ``amp`` and ``channels_last`` None follow it."""
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"device {dev} was requested but torch sees no CUDA GPU; use device 'cpu'")
        use_amp = (dev.type == "cuda") if amp is None else bool(amp and dev.type == "cuda")
        use_cl = (dev.type == "cuda") if channels_last is None else bool(channels_last)
        amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
        return cls(dev, use_amp, amp_dtype, use_cl)

    def scaler(self) -> torch.amp.GradScaler:
        """The gradient scaler: enabled only for fp16 autocast (bf16 and fp32 need none)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

    def inputs(self, x: torch.Tensor, image_size: int, augment: torch.Generator | None = None,
               augmentation: str = "rrc-flip") -> torch.Tensor:
        """uint8 images -> the model's input on this device: the ``augmentation`` drawn from
        ``augment`` (or, without one, a plain resize), ImageNet normalisation, the memory format."""
        x = x.to(self.device, non_blocking=True)
        x = augment_batch(x, image_size, augment, augmentation) if augment is not None else center_resize(x, image_size)
        x = normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return model(pixel_values=x).logits


def new_classifier(num_labels: int, recipe: TrainingRecipe, labels: Sequence[str] | None = None):
    """A freshly initialised classifier of ``recipe.arch``, seeded with ``recipe.seed``."""
    return build_classifier(recipe.arch, num_labels, labels, seed=recipe.seed, image_size=recipe.image_size)


def new_optimizer(model: torch.nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    """SGD with the recipe's learning rate, momentum and weight decay."""
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


class Batches:
    """Yields (uint8 images, labels) for index batches, from memory or by decoding files."""

    def __init__(self, samples: Sequence[Sample], size: int, cache: bool, num_workers: int, pin: bool):
        self.samples, self.size, self.num_workers, self.pin = list(samples), size, num_workers, pin
        self.images = self.labels = None
        if cache and self.samples:
            self.images, self.labels = preload(self.samples, size, num_workers)
        self.count = len(self.samples)

    @classmethod
    def of_tensors(cls, images: torch.Tensor, labels: torch.Tensor) -> "Batches":
        """Batches of images already in memory: uint8 (N, 3, H, W) and int64 labels (N,)."""
        data = cls([], 0, False, 0, False)
        data.images, data.labels, data.count = images, labels, len(labels)
        return data

    def __len__(self) -> int:
        return self.count

    def iterate(self, batches: list[list[int]]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
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
    if batches and len(batches[-1]) == 1:
        batches.pop()  # a batch of one breaks BatchNorm statistics
    return batches


@dataclass
class EpochStats:
    """What one epoch of :func:`train_epoch` saw: summed loss, correct predictions, images."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                data: Batches, recipe: TrainingRecipe, gen: torch.Generator, policy: DevicePolicy,
                on_step: Callable[[int], None] | None = None,
                extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None) -> EpochStats:
    """One epoch of SGD on ``data``, in place: the order and the augmentation are drawn from ``gen``.

    ``on_step(step)`` is called after each optimiser step (0-based); ``extra_loss(model)`` is added
    to each batch's cross-entropy (FedProx's proximal term). Leaves the model in train mode.
    """
    order = torch.randperm(len(data), generator=gen)
    model.train()
    stats = EpochStats()
    for step, (x, y) in enumerate(data.iterate(_index_batches(len(data), recipe.batch_size, order))):
        x = policy.inputs(x, recipe.image_size, gen if recipe.augment else None, recipe.augmentation)
        y = y.to(policy.device, non_blocking=True)
        logits = policy.logits(model, x)
        loss = F.cross_entropy(logits.float(), y)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = y.shape[0]
        stats.loss_sum += float(loss.detach()) * n
        stats.correct += int((logits.argmax(1) == y).sum())
        stats.seen += n
        if on_step:
            on_step(step)
    return stats


# ---- the one-shot training run -------------------------------------------------------------------

def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    digest = hashlib.sha256(f"osfl-train\0{seed}\0{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & ((1 << 63) - 1))


def lr_at(recipe: TrainingRecipe, epoch: int, lr_schedule: str | None = None) -> float:
    """The learning rate of 0-based ``epoch`` under the recipe's schedule (or ``lr_schedule``)."""
    if (lr_schedule or recipe.lr_schedule) == "cosine":
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
    return recipe.lr


def _save_checkpoint(obj: Any, path: Path) -> None:
    with atomic_writer(path, mode=FILE_MODE) as fh:
        torch.save(obj, fh)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_classifier(
    source: str | os.PathLike | Dataset,
    out_dir: str | os.PathLike,
    recipe: TrainingRecipe | None = None,
    *,
    device: str | torch.device | None = None,
    labels: Sequence[str] | None = None,
    lr_schedule: str | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    num_workers: int = 0,
    cache: bool | str = "auto",
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: EpochFn | None = None,
    on_progress: ProgressFn | None = None,
    export: bool = True,
    **settings: Any,
) -> TrainingResult:
    """Train a classifier on the synthetic images in ``source`` and write the outputs to ``out_dir``.

    ``source`` is a synthesis output directory, its ``manifest.jsonl`` or a loaded
    :class:`~.data.Dataset`. ``recipe`` (default: FGL's :class:`~server_daemon.ingest.config.TrainingRecipe`) says how
    to train; keyword ``settings`` named like its fields (``arch=``, ``epochs=``, ...) replace
    those fields. ``device`` overrides ``recipe.device``; ``lr_schedule`` ("constant", FGL's, or
    "cosine") overrides the recipe's. ``on_epoch_end(metrics)`` is called after each epoch's checkpoint is written;
    returning True stops the run there (the daemon's cancel; the run can be resumed).
    ``on_progress(done_steps, total_steps)`` follows the optimiser steps. ``amp`` and
    ``channels_last`` default to on for CUDA, off for the CPU. ``cache`` "auto" keeps the decoded
    images in memory when they take less than 4 GiB.
    """
    cfg = (recipe or TrainingRecipe()).replace(**settings)
    if lr_schedule is not None:
        cfg = cfg.replace(lr_schedule=lr_schedule)
    problem = cfg.problem()
    if problem:
        raise TrainingError(problem)
    if device is None and cfg.device not in ("", "auto"):
        device = cfg.device
    policy = DevicePolicy.choose(device, amp, channels_last)
    dev = policy.device

    data = source if isinstance(source, Dataset) else load_dataset(source, labels)
    label_names = list(data.labels)
    train_samples, val_samples = split_samples(data.samples, cfg.val_fraction, cfg.seed)
    if len(train_samples) < 2:
        raise TrainingError(f"only {len(train_samples)} training image(s); synthesise more images per class")
    if cache == "auto":
        cache = len(data.samples) * 3 * cfg.image_size ** 2 < CACHE_LIMIT
    pin = dev.type == "cuda"
    train_data = Batches(train_samples, cfg.image_size, bool(cache), num_workers, pin)
    val_data = Batches(val_samples, cfg.image_size, bool(cache), num_workers, pin)

    model = new_classifier(len(label_names), cfg, label_names)
    model.to(dev)
    if policy.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = new_optimizer(model, cfg)
    scaler = policy.scaler()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_config = cfg.run_settings()
    run_key = {"config": run_config, "dataset": data.fingerprint()}
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
            raise CheckpointError(f"cannot read {ckpt_path} ({type(exc).__name__}); delete it to start over") from exc
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
            lr_now = lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr_now

            def on_step(step: int, epoch: int = epoch) -> None:
                bar.update(1)
                if on_progress:
                    on_progress(epoch * steps_per_epoch + step + 1, total_steps)

            stats = train_epoch(model, optimizer, scaler, train_data, cfg, _epoch_generator(cfg.seed, epoch),
                                policy, on_step)
            train_seconds = time.monotonic() - t0
            val_loss, val_acc = _evaluate(model, val_data, cfg, policy)
            record = {
                "epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.accuracy,
                "val_loss": val_loss, "val_acc": val_acc, "lr": lr_now, "seconds": time.monotonic() - t0,
                "images_per_s": stats.seen / train_seconds if train_seconds > 0 else 0.0,
            }
            history.append(record)
            if val_acc is None or best_val is None or val_acc > best_val:
                best_val, best_epoch = val_acc, epoch + 1
                best_state = _cpu_state(model)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                            val_acc="-" if val_acc is None else f"{val_acc:.3f}")
            _save_checkpoint({"epoch": epoch + 1, "run_key": run_key, "model": _cpu_state(model),
                              "optimizer": optimizer.state_dict(),
                              "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                              "history": history, "best_val": best_val, "best_epoch": best_epoch,
                              "best_state": best_state}, ckpt_path)
            _write_metrics(out, run_config, cfg.val_fraction, label_names, data, history, best_epoch, best_val,
                           dev, policy.amp, completed=epoch + 1 == cfg.epochs)
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
def _evaluate(model, data: Batches, recipe: TrainingRecipe, policy: DevicePolicy):
    if len(data) == 0:
        return None, None
    model.eval()
    loss_sum, correct = 0.0, 0
    n, bs = len(data), recipe.batch_size
    for x, y in data.iterate([list(range(k, min(k + bs, n))) for k in range(0, n, bs)]):
        logits = policy.logits(model, policy.inputs(x, recipe.image_size)).float()
        y = y.to(policy.device)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / n, correct / n


def _write_metrics(out: Path, run_config: dict, val_fraction: float, labels, data: Dataset, history, best_epoch,
                   best_val, dev, use_amp, completed: bool) -> None:
    atomic_write(out / METRICS, json.dumps({
        "config": run_config, "labels": labels, "dataset": str(data.root),
        "dataset_counts": data.counts(), "device": str(dev), "amp": use_amp,
        "selection": "held-out synthetic split" if val_fraction > 0 else "last epoch",
        "best_epoch": best_epoch, "best_val_acc": best_val, "completed": completed, "epochs": history,
    }, indent=2, ensure_ascii=False), mode=FILE_MODE)


def load_trained(out_dir: str | os.PathLike):
    """The selected model saved by :func:`train_classifier` (a ResNet or the cnn)."""
    path = Path(out_dir) / MODEL_DIR
    if not (path / "config.json").is_file():
        raise TrainingError(f"{path} holds no trained model; run train_classifier to the end first")
    return load_classifier(path)
