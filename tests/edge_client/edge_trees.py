"""Helpers that write tiny images with Pillow for the edge-client tests (imported by name)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def make_image(path: Path, size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 30, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=_FORMATS[path.suffix.lower()])
    return path
