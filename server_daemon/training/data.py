"""The synthetic dataset for training: read shard manifests, split, decode, augment (torch only).

- :func:`load_dataset` reads a synthesis output directory (or a ``manifest.jsonl``) written by
  :mod:`server_daemon.synthesis.shards` into a list of (file, label index) and the label names.
- :func:`split_samples` holds out a stratified, seeded fraction of the *synthetic* images for
  model selection. No test set is ever used for selection (FGL's script did; we do not).
- :class:`ImageFiles` decodes PNGs with Pillow and resizes them to the training size (uint8
  CHW tensors); :func:`preload` decodes a whole split once when it fits in memory.
- :func:`random_resized_crop_flip` is torchvision's RandomResizedCrop + horizontal flip done on
  a batch with ``affine_grid``/``grid_sample`` (torchvision has no usable build here), on the
  training device, with an explicit generator so every epoch's augmentation is reproducible.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import DatasetError

#: ImageNet statistics (the FGL classifiers normalise with them)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Sample:
    file: Path
    label_index: int


@dataclass(frozen=True)
class Dataset:
    root: Path
    labels: tuple[str, ...]
    samples: tuple[Sample, ...]

    def fingerprint(self) -> str:
        """SHA-256 over the labels and (file, label) list: ties checkpoints to this dataset."""
        h = hashlib.sha256(json.dumps(list(self.labels)).encode())
        for s in self.samples:
            h.update(f"{s.file.relative_to(self.root)}\0{s.label_index}\n".encode())
        return h.hexdigest()

    def counts(self) -> list[int]:
        out = [0] * len(self.labels)
        for s in self.samples:
            out[s.label_index] += 1
        return out


def load_dataset(source: str | os.PathLike, labels: Sequence[str] | None = None) -> Dataset:
    """The samples of a synthesis output directory or manifest, with the label names.

    ``labels`` default to those stored with the synthesis output (``dataset.json``/``plan.json``),
    else the label names found in the manifest, ordered by label index.
    """
    from server_daemon.synthesis.errors import ShardError
    from server_daemon.synthesis.shards import read_labels, read_manifest

    try:
        root, records = read_manifest(source)
    except ShardError as exc:
        raise DatasetError(str(exc)) from exc
    if labels is None:
        labels = read_labels(root)
    if labels is None:
        names: dict[int, str] = {}
        for r in records:
            names.setdefault(int(r["label_index"]), str(r["label"]))
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"the manifest in {root} has label indices {sorted(names)} with gaps; "
                               "pass the federation's labels explicitly")
        labels = [names[i] for i in range(len(names))]
    labels = tuple(labels)
    samples = []
    for r in records:
        li = int(r["label_index"])
        if not 0 <= li < len(labels):
            raise DatasetError(f"image {r.get('file')} has label_index {li}, outside the {len(labels)} labels")
        samples.append(Sample(root / r["file"], li))
    if not samples:
        raise DatasetError(f"{root} holds no images; run the synthesis first")
    return Dataset(root=root, labels=labels, samples=tuple(samples))


def split_samples(samples: Sequence[Sample], val_fraction: float, seed: int = 0
                  ) -> tuple[list[Sample], list[Sample]]:
    """(train, val): ``val_fraction`` of each class held out, chosen by a seeded hash of the file
    name, so the split does not depend on the order of the manifest. At least one image of each
    class stays in training."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label_index, []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for li in sorted(by_class):
        group = sorted(by_class[li], key=lambda s: hashlib.sha256(f"{seed}\0{s.file.name}\0{s.file.parent.name}".encode()).digest())
        k = min(int(round(len(group) * val_fraction)), len(group) - 1)
        val.extend(group[:k])
        train.extend(group[k:])
    key = lambda s: str(s.file)  # noqa: E731  (stable order for reproducible epochs)
    return sorted(train, key=key), sorted(val, key=key)


def decode_image(path: Path, size: int) -> torch.Tensor:
    """uint8 (3, size, size) tensor of the image at ``path`` (RGB, bilinear resize)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read training image {path} ({type(exc).__name__}); "
                           "regenerate its shard (rerun the synthesis job)") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageFiles(torch.utils.data.Dataset):
    """Decodes the samples lazily: item -> (uint8 (3, size, size), label index)."""

    def __init__(self, samples: Sequence[Sample], size: int):
        self.samples = list(samples)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        return decode_image(s.file, self.size), s.label_index


def preload(samples: Sequence[Sample], size: int, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every sample once: (uint8 images (N, 3, size, size), int64 labels (N,))."""
    if not samples:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    loader = torch.utils.data.DataLoader(ImageFiles(samples, size), batch_size=256, shuffle=False,
                                         num_workers=num_workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys).long()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def random_resized_crop_flip(images: torch.Tensor, out_size: int, generator: torch.Generator,
                             scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop + random horizontal flip of a batch, as floats in [0, 1].

    Per image: area fraction ~ U(scale), aspect ratio log-uniform in ``ratio`` (clipped so the
    crop fits), position uniform; bilinear resampling to ``out_size``. The random numbers are
    drawn from ``generator`` on the CPU, so results do not depend on the device.
    """
    n = images.shape[0]
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image width
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_shift_flip(images: torch.Tensor, out_size: int, generator: torch.Generator, flip: bool = True,
                      max_shift: float = 0.125) -> torch.Tensor:
    """Resize to ``out_size``, then shift each image by up to ``max_shift`` of its side in x and y
    (whole pixels, zero fill: the padded random crop of small-image training) and, with ``flip``,
    mirror half of them. Floats in [0, 1]; random numbers drawn from ``generator`` on the CPU."""
    x = center_resize(images, out_size)
    n = x.shape[0]
    pad = max(1, int(round(out_size * max_shift)))
    dx = torch.randint(-pad, pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(-pad, pad + 1, (n,), generator=generator).tolist()
    mirror = (torch.rand(n, generator=generator) < 0.5).tolist() if flip else [False] * n
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, pad + dy[i]:pad + dy[i] + out_size, pad + dx[i]:pad + dx[i] + out_size]
        out[i] = crop.flip(-1) if mirror[i] else crop
    return out


def augment_batch(images: torch.Tensor, out_size: int, generator: torch.Generator, augmentation: str) -> torch.Tensor:
    """The recipe's augmentation by name: "rrc-flip", "shift-flip" or "shift" (no flip)."""
    if augmentation == "rrc-flip":
        return random_resized_crop_flip(images, out_size, generator)
    if augmentation in ("shift-flip", "shift"):
        return random_shift_flip(images, out_size, generator, flip=augmentation == "shift-flip")
    raise ValueError(f"unknown augmentation {augmentation!r}; expected rrc-flip, shift-flip or shift")


def center_resize(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """Evaluation transform: floats in [0, 1], resized to ``out_size`` when needed."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != out_size or x.shape[-2] != out_size:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    return x
