"""Fixtures for the edge-client tests: small ImageFolder trees built with Pillow."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_trees import make_image


@pytest.fixture
def site_tree(tmp_path: Path) -> Path:
    """root/benign: 3 images (PNG, upper-case JPG, nested TIFF); root/malignant: 3 (BMP, upper-case TIFF, JPEG).

    Plus hidden files and folders (ignored) and two text files (skipped).
    """
    root = tmp_path / "site"
    make_image(root / "benign" / "a.png")
    make_image(root / "benign" / "b.JPG")
    make_image(root / "benign" / "2024" / "c.tif")
    make_image(root / "malignant" / "d.bmp")
    make_image(root / "malignant" / "e.TIFF")
    make_image(root / "malignant" / "f.jpeg")
    (root / "benign" / ".hidden.png").write_bytes(b"not an image, but hidden")
    (root / "benign" / "notes.txt").write_text("skip me")
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(b"junk")
    (root / ".cache_class").mkdir()
    make_image(root / ".cache_class" / "g.png")
    (root / "README.txt").write_text("site images")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root
