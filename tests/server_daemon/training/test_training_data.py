"""The training data pipeline: reading shards, the held-out split, decoding, augmentation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from server_daemon.training import DatasetError, load_dataset, random_resized_crop_flip, split_samples
from server_daemon.training.data import Sample, center_resize, decode_image, normalize


def test_load_dataset(colour_set):
    data = load_dataset(colour_set)
    assert data.labels == ("red", "green", "blue")
    assert data.counts() == [20, 20, 20]
    assert all(s.file.is_file() for s in data.samples)
    # the manifest path works too, and gives the same dataset
    assert load_dataset(colour_set / "manifest.jsonl").fingerprint() == data.fingerprint()


def test_load_dataset_without_stored_labels(colour_set, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    lines = (colour_set / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    for r in recs:
        r["file"] = str(colour_set / r["file"])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert load_dataset(manifest).labels == ("red", "green", "blue")
    assert load_dataset(manifest, labels=["R", "G", "B"]).labels == ("R", "G", "B")
    with pytest.raises(DatasetError, match="outside the 2 labels"):
        load_dataset(manifest, labels=["R", "G"])


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="neither"):
        load_dataset(tmp_path / "missing")


def samples(n_per_class=10, classes=3):
    return [Sample(Path(f"/d/shard_00000/{c}_{i:03d}.png"), c) for c in range(classes) for i in range(n_per_class)]


def test_split_is_stratified_seeded_and_order_free():
    s = samples()
    train, val = split_samples(s, 0.2, seed=1)
    assert len(val) == 6 and len(train) == 24
    assert sorted(x.label_index for x in val) == [0, 0, 1, 1, 2, 2]
    assert not set(train) & set(val)
    assert split_samples(list(reversed(s)), 0.2, seed=1) == (train, val)
    assert split_samples(s, 0.2, seed=2)[1] != val
    assert split_samples(s, 0.0, seed=1) == (sorted(s, key=lambda x: str(x.file)), [])


def test_split_keeps_one_training_image_per_class():
    train, val = split_samples(samples(n_per_class=1), 0.5)
    assert len(train) == 3 and val == []


@pytest.mark.parametrize("frac", [-0.1, 1.0, 2])
def test_split_bad_fraction(frac):
    with pytest.raises(DatasetError, match="val_fraction"):
        split_samples(samples(), frac)


def test_decode_resizes_and_reports_broken_files(colour_set, tmp_path):
    f = next(colour_set.glob("shard_00000/*.png"))
    x = decode_image(f, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read training image"):
        decode_image(bad, 16)


def test_random_resized_crop_flip():
    x = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    a = random_resized_crop_flip(x, 12, torch.Generator().manual_seed(0))
    b = random_resized_crop_flip(x, 12, torch.Generator().manual_seed(0))
    c = random_resized_crop_flip(x, 12, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 12, 12) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_crop_is_identity_or_mirror():
    x = torch.rand(16, 3, 8, 8)
    y = random_resized_crop_flip(x, 8, torch.Generator().manual_seed(3), scale=(1, 1), ratio=(1, 1))
    flipped = 0
    for i in range(16):
        if torch.allclose(y[i], x[i], atol=1e-5):
            continue
        torch.testing.assert_close(y[i], x[i].flip(-1), atol=1e-5, rtol=0)
        flipped += 1
    assert 0 < flipped < 16


def test_eval_transform_and_normalize():
    x = torch.full((2, 3, 10, 10), 255, dtype=torch.uint8)
    y = center_resize(x, 6)
    assert y.shape == (2, 3, 6, 6) and torch.allclose(y, torch.ones_like(y))
    z = normalize(torch.stack([torch.full((3, 2, 2), v) for v in (0.485, 0.456)]))
    assert abs(float(z[0, 0].mean())) < 1e-6
