"""Training curves as a PNG, drawn with Pillow (matplotlib is not a dependency).

Two panels side by side: loss per epoch (train, and validation when there is a held-out split)
and accuracy per epoch (train and validation), each with its axis range written on the axes and a
small legend. ``history`` is the list of per-epoch dicts that :mod:`.train` writes to
``metrics.json``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from protocol.files import atomic_writer

from PIL import Image, ImageDraw, ImageFont

COLORS = {"train": (31, 119, 180), "val": (214, 39, 40)}
PANEL_W, PANEL_H, MARGIN = 360, 240, 44


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _panel(draw: ImageDraw.ImageDraw, x0: int, title: str, series: Mapping[str, Sequence[float | None]],
           epochs: Sequence[int], fixed: tuple[float, float] | None = None) -> None:
    font = _font()
    left, top = x0 + MARGIN, MARGIN // 2 + 8
    right, bottom = x0 + PANEL_W - 12, PANEL_H - MARGIN + 8
    draw.text((left, 4), title, fill=(0, 0, 0), font=_font(13))
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    values = [v for s in series.values() for v in s if v is not None]
    if not values or not epochs:
        draw.text((left + 8, top + 8), "no data yet", fill=(90, 90, 90), font=font)
        return
    lo, hi = fixed if fixed else (min(values), max(values))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    e_lo, e_hi = min(epochs), max(epochs)
    span = max(e_hi - e_lo, 1)

    def xy(e: int, v: float) -> tuple[float, float]:
        return (left + (e - e_lo) / span * (right - left),
                bottom - (v - lo) / (hi - lo) * (bottom - top))

    for frac in (0.25, 0.5, 0.75):  # light grid
        y = bottom - frac * (bottom - top)
        draw.line([left, y, right, y], fill=(225, 225, 225))
    draw.text((x0 + 4, top - 6), _fmt(hi), fill=(0, 0, 0), font=font)
    draw.text((x0 + 4, bottom - 6), _fmt(lo), fill=(0, 0, 0), font=font)
    draw.text((left, bottom + 4), str(e_lo), fill=(0, 0, 0), font=font)
    draw.text((right - 14, bottom + 4), str(e_hi), fill=(0, 0, 0), font=font)
    draw.text(((left + right) // 2 - 14, bottom + 4), "epoch", fill=(0, 0, 0), font=font)
    legend_y = bottom - 4 - 14 * len(series) if fixed else top + 4  # accuracy rises: legend low
    draw.rectangle([right - 68, legend_y - 2, right - 4, legend_y + 14 * len(series)], fill=(255, 255, 255),
                   outline=(200, 200, 200))
    for name, seq in series.items():
        pts = [xy(e, v) for e, v in zip(epochs, seq) if v is not None]
        if not pts:
            continue
        color = COLORS.get(name, (0, 0, 0))
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        draw.line([right - 64, legend_y + 6, right - 50, legend_y + 6], fill=color, width=2)
        draw.text((right - 46, legend_y), name, fill=color, font=font)
        legend_y += 14


def write_curves(history: Sequence[Mapping[str, Any]], out_png: str | os.PathLike, title: str = "") -> Path:
    """Draw loss and accuracy per epoch from ``history``; return the PNG path."""
    epochs = [int(h["epoch"]) for h in history]
    img = Image.new("RGB", (2 * PANEL_W, PANEL_H + (18 if title else 0)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    loss = {"train": [h.get("train_loss") for h in history]}
    acc = {"train": [h.get("train_acc") for h in history]}
    if any(h.get("val_acc") is not None for h in history):
        loss["val"] = [h.get("val_loss") for h in history]
        acc["val"] = [h.get("val_acc") for h in history]
    _panel(draw, 0, "loss", loss, epochs)
    _panel(draw, PANEL_W, "accuracy", acc, epochs, fixed=(0.0, 1.0))
    if title:
        draw.text((8, PANEL_H + 2), title, fill=(0, 0, 0), font=_font())
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out, mode=0o644) as fh:
        img.save(fh, format="PNG")
    return out
