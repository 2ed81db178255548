"""Results of a simulation: a Markdown table, a JSON file and plots drawn with Pillow.

Rows are dicts with at least ``method``, ``setting``, ``accuracy``; optional ``per_class``,
``upload_bytes_per_site``, ``download_bytes_per_site``, ``wall_s``, ``stages``, ``note``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


def markdown_table(rows: Sequence[dict], classes: Sequence[str] | None = None, per_class: bool = True) -> str:
    head = "| method | setting | test accuracy | upload / site | download / site | wall time |"
    out = [head, "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['method']} | {r.get('setting', '')} | {r['accuracy']:.3f} | "
                   f"{human_bytes(r.get('upload_bytes_per_site'))} | {human_bytes(r.get('download_bytes_per_site'))} | "
                   f"{r['wall_s']:.0f} s |" if r.get("wall_s") is not None else
                   f"| {r['method']} | {r.get('setting', '')} | {r['accuracy']:.3f} | "
                   f"{human_bytes(r.get('upload_bytes_per_site'))} | {human_bytes(r.get('download_bytes_per_site'))} | - |")
    if per_class and classes and any(r.get("per_class") for r in rows):
        out += ["", "Per-class test accuracy:", "",
                "| method | setting | " + " | ".join(classes) + " |",
                "|---|---|" + "---:|" * len(classes)]
        for r in rows:
            pc = r.get("per_class") or []
            cells = ["-" if v is None else f"{v:.2f}" for v in pc]
            out.append(f"| {r['method']} | {r.get('setting', '')} | " + " | ".join(cells) + " |")
    stages = [r for r in rows if r.get("stages")]
    if stages:
        out += ["", "Wall time per stage (s):", "", "| method | setting | stages |", "|---|---|---|"]
        for r in stages:
            out.append(f"| {r['method']} | {r.get('setting', '')} | "
                       + ", ".join(f"{k} {v}" for k, v in r["stages"].items() if v is not None) + " |")
    return "\n".join(out) + "\n"


def write_results(out_dir: Path, meta: dict, rows: Sequence[dict]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=2, default=str) + "\n")
    title = meta.get("title", "Simulation results")
    header = [f"# {title}", "", meta.get("description", ""), ""]
    paths["md"].write_text("\n".join(header) + markdown_table(rows, meta.get("classes")))
    paths["accuracy_png"] = bar_plot(out_dir / "accuracy.png", [f"{r['method']} {r.get('setting', '')}".strip()
                                                                 for r in rows], [r["accuracy"] for r in rows],
                                     title=f"{title}: test accuracy", chance=meta.get("chance"))
    ipc = [r for r in rows if r.get("images_per_class") is not None]
    if len({r["images_per_class"] for r in ipc}) > 1:
        paths["ipc_png"] = line_plot(out_dir / "accuracy_vs_images.png",
                                     [(r["images_per_class"], r["accuracy"]) for r in ipc],
                                     title="one-shot: accuracy vs synthetic images per class",
                                     xlabel="synthetic images per class")
    return paths


def _font():
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def bar_plot(path: Path, labels: Sequence[str], values: Sequence[float], title: str = "",
             chance: float | None = None) -> Path:
    """Horizontal bars, values in [0, 1]."""
    font = _font()
    left, right, bar_h, gap, top = 260, 80, 22, 8, 40
    width = 820
    height = top + len(values) * (bar_h + gap) + 40
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 10), title, fill="black", font=font)
    span = width - left - right
    for k in range(0, 11, 2):
        x = left + span * k / 10
        d.line([(x, top - 5), (x, height - 30)], fill=(225, 225, 225))
        d.text((x - 8, height - 25), f"{k / 10:.1f}", fill="black", font=font)
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = top + i * (bar_h + gap)
        d.text((10, y + 4), lab[:40], fill="black", font=font)
        d.rectangle([left, y, left + span * max(0.0, min(1.0, v)), y + bar_h], fill=COLOURS[i % len(COLOURS)])
        d.text((left + span * max(0.0, min(1.0, v)) + 5, y + 4), f"{v:.3f}", fill="black", font=font)
    if chance is not None:
        x = left + span * chance
        d.line([(x, top - 5), (x, height - 30)], fill=(200, 0, 0), width=2)
        d.text((x + 3, top - 18), "chance", fill=(200, 0, 0), font=font)
    im.save(path)
    return path


def line_plot(path: Path, points: Sequence[tuple[float, float]], title: str = "", xlabel: str = "") -> Path:
    """Accuracy (y in [0, 1]) against x, one polyline through the points sorted by x."""
    font = _font()
    width, height, ml, mr, mt, mb = 640, 400, 60, 20, 40, 50
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 10), title, fill="black", font=font)
    pts = sorted(points)
    xs = [p[0] for p in pts]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1

    def xy(x, y):
        return ml + (width - ml - mr) * (x - x0) / (x1 - x0), height - mb - (height - mt - mb) * y

    d.rectangle([ml, mt, width - mr, height - mb], outline="black")
    for k in range(0, 11, 2):
        _, y = xy(x0, k / 10)
        d.line([(ml, y), (width - mr, y)], fill=(225, 225, 225))
        d.text((ml - 30, y - 7), f"{k / 10:.1f}", fill="black", font=font)
    for x in sorted(set(xs)):
        px, _ = xy(x, 0)
        d.text((px - 10, height - mb + 5), f"{x:g}", fill="black", font=font)
    d.text((width // 2 - 80, height - 22), xlabel, fill="black", font=font)
    d.line([xy(x, y) for x, y in pts], fill=COLOURS[0], width=2)
    for x, y in pts:
        px, py = xy(x, y)
        d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=COLOURS[0])
        d.text((px + 5 if px < width - mr - 50 else px - 45, py - 16), f"{y:.3f}", fill="black", font=font)
    im.save(path)
    return path
