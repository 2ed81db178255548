"""ImageFolder reading: counts, skipped and hidden files, and every failure a site can hit."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_trees import make_image
from edge_client import exit_codes as X
from edge_client.dataset import (IMAGE_EXTENSIONS, ImageFolderDataset, label_name, load_image_folder,
                                 open_image)
from edge_client.errors import DatasetError, EmptyDataset, UnreadableImage


def test_happy_path_counts_classes_and_files(site_tree: Path) -> None:
    ds = load_image_folder(site_tree)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == ("benign", "malignant")
    assert ds.counts() == {"benign": 3, "malignant": 3}
    assert len(ds) == 6
    names = {(p.name, i) for p, i in ds.files}
    assert names == {("a.png", 0), ("b.JPG", 0), ("c.tif", 0), ("d.bmp", 1), ("e.TIFF", 1), ("f.jpeg", 1)}
    assert sorted(p.name for p in ds.skipped) == ["README.txt", "notes.txt"]
    # hidden files and folders are neither read nor reported
    assert not any(part.startswith(".") for p, _ in ds.files for part in p.relative_to(site_tree).parts)
    assert not any(p.name.startswith(".") for p in ds.skipped)


def test_dataset_is_frozen_and_deterministic(site_tree: Path) -> None:
    a, b = load_image_folder(site_tree), load_image_folder(site_tree, check_images=False)
    assert a == b
    with pytest.raises(Exception):
        a.classes = ("x",)  # type: ignore[misc]


def test_progress_bar_runs(site_tree: Path) -> None:
    assert len(load_image_folder(site_tree, progress=True)) == 6


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS))
def test_every_extension_in_any_case_is_read(tmp_path: Path, ext: str) -> None:
    make_image(tmp_path / "cls" / f"x{ext}")
    assert load_image_folder(tmp_path).counts() == {"cls": 1}


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as info:
        load_image_folder(missing)
    assert str(missing) in str(info.value)
    assert info.value.exit_code == X.DATASET


def test_root_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file.png"
    make_image(f)
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_image_folder(f)


def test_empty_root_has_no_class_folders(tmp_path: Path) -> None:
    with pytest.raises(EmptyDataset, match="no class folders"):
        load_image_folder(tmp_path)


def test_images_directly_in_root_are_explained(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    with pytest.raises(EmptyDataset, match=r"found 1 image\(s\) directly in it"):
        load_image_folder(tmp_path)


def test_only_hidden_folders_is_empty(tmp_path: Path) -> None:
    make_image(tmp_path / ".trash" / "a.png")
    with pytest.raises(EmptyDataset):
        load_image_folder(tmp_path)


def test_class_folder_without_images_names_folder_and_extensions(tmp_path: Path) -> None:
    make_image(tmp_path / "good" / "a.png")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "readme.txt").write_text("x")
    with pytest.raises(EmptyDataset) as info:
        load_image_folder(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "empty_class") in msg
    assert "only 1 other file(s)" in msg
    for ext in IMAGE_EXTENSIONS:
        assert ext in msg
    assert info.value.exit_code == X.DATASET


def test_corrupt_image_names_the_file_and_reason(tmp_path: Path) -> None:
    make_image(tmp_path / "a" / "ok.png")
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(UnreadableImage) as info:
        load_image_folder(tmp_path)
    msg = str(info.value)
    assert str(bad) in msg
    assert "UnidentifiedImageError" in msg
    assert "ok.png" not in msg
    # the check can be skipped; the file is then listed like any other image
    assert load_image_folder(tmp_path, check_images=False).counts() == {"a": 2}


def test_truncated_png_is_unreadable(tmp_path: Path) -> None:
    good = make_image(tmp_path / "a" / "t.png", size=(64, 64))
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(UnreadableImage, match="t.png"):
        load_image_folder(tmp_path)


def test_many_corrupt_images_are_listed_with_a_count(tmp_path: Path) -> None:
    for i in range(8):
        (tmp_path / "a" ).mkdir(exist_ok=True)
        (tmp_path / "a" / f"bad{i}.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(UnreadableImage, match=r"8 image file\(s\) cannot be read.*and 3 more"):
        load_image_folder(tmp_path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_inside_a_class_does_not_hang(tmp_path: Path) -> None:
    make_image(tmp_path / "a" / "x.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert load_image_folder(tmp_path).counts() == {"a": 1}


def test_nfd_folder_name_becomes_nfc_class_id(tmp_path: Path) -> None:
    make_image(tmp_path / "cafe\u0301" / "x.png")  # NFD spelling of "café"
    assert load_image_folder(tmp_path).classes == ("caf\u00e9",)


@pytest.mark.parametrize("folder, expected", [
    ("golden_retriever", "golden retriever"),
    ("golden-retriever", "golden retriever"),
    ("basal__cell-carcinoma_", "basal cell carcinoma"),
    ("melanoma", "melanoma"),
])
def test_label_name(folder: str, expected: str) -> None:
    assert label_name(folder) == expected


def test_open_image_converts_and_closes(site_tree: Path) -> None:
    im = open_image(site_tree / "malignant" / "d.bmp")
    assert im.mode == "RGB" and im.size == (8, 6)
    assert open_image(site_tree / "benign" / "a.png", mode=None).mode == "RGB"
    assert open_image(site_tree / "benign" / "a.png", mode="L").mode == "L"


def test_open_image_rescales_16_bit(tmp_path: Path) -> None:
    arr = np.array([[1000, 3000], [2000, 4000]], dtype=np.uint16)
    path = tmp_path / "ct.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(open_image(path))
    assert out.shape == (2, 2, 3)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and 0 < out[0, 1, 0] < 255


def test_open_image_on_garbage_raises_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(UnreadableImage, match="x.png"):
        open_image(bad)
