"""A PNG grid of synthetic samples, one row per class, for the federation report.

Pillow only. Reads a synthesis output directory (or its ``manifest.jsonl``), takes the first
``per_class`` images of each class in manifest order (classes and sites are interleaved there),
and draws them as thumbnails with the class name and its image count at the left of each row.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .shards import read_labels, read_manifest

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MISSING = (230, 230, 230)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def write_sample_grid(source: str | os.PathLike, out_png: str | os.PathLike, per_class: int = 8,
                      thumb: int = 64, labels: Sequence[str] | None = None,
                      label_width: int = 140) -> Path:
    """Write the grid to ``out_png`` and return its path.

    ``labels`` default to the names stored with the synthesis output; a class without images
    gets an empty row, so a missing class is visible.
    """
    root, records = read_manifest(source)
    labels = list(labels) if labels is not None else (read_labels(root) or
                                                       sorted({r["label"] for r in records}))
    by_class: dict[int, list[dict]] = {i: [] for i in range(len(labels))}
    counts = [0] * len(labels)
    for rec in records:
        li = int(rec["label_index"])
        if 0 <= li < len(labels):
            counts[li] += 1
            if len(by_class[li]) < per_class:
                by_class[li].append(rec)
    pad = 4
    width = label_width + per_class * (thumb + pad) + pad
    height = max(1, len(labels)) * (thumb + pad) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for row, label in enumerate(labels):
        y = pad + row * (thumb + pad)
        name = label if len(label) <= 20 else label[:19] + "…"
        draw.text((pad, y + thumb // 2 - 12), name, fill=TEXT, font=font)
        draw.text((pad, y + thumb // 2 + 2), f"{counts[row]} images", fill=TEXT, font=font)
        for col in range(per_class):
            x = label_width + pad + col * (thumb + pad)
            recs = by_class[row]
            if col < len(recs):
                with Image.open(root / recs[col]["file"]) as im:
                    canvas.paste(im.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR), (x, y))
            else:
                draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=MISSING)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
