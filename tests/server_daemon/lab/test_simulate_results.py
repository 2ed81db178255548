"""Results: the Markdown table, JSON and the Pillow plots are written and say what was measured."""
from __future__ import annotations

import json

from PIL import Image

from server_daemon.lab.simulate.results import human_bytes, markdown_table, write_results

ROWS = [
    {"method": "one-shot class-prompts", "setting": "100 img/class", "images_per_class": 100, "accuracy": 0.61,
     "per_class": [0.5, 0.7], "upload_bytes_per_site": 214, "download_bytes_per_site": 37000, "wall_s": 150,
     "stages": {"synthesis": 90.0, "training": 12.5}},
    {"method": "one-shot class-prompts", "setting": "200 img/class", "images_per_class": 200, "accuracy": 0.66,
     "per_class": [0.6, 0.72], "upload_bytes_per_site": 214, "download_bytes_per_site": 37000, "wall_s": 200},
    {"method": "FedAvg", "setting": "50 rounds", "accuracy": 0.4, "per_class": [None, 0.8],
     "upload_bytes_per_site": 1_274_000, "download_bytes_per_site": 1_274_000, "wall_s": None},
]


def test_table_and_files(tmp_path):
    md = markdown_table(ROWS, ["a", "b"])
    assert "| one-shot class-prompts | 100 img/class | 0.610 | 214 B | 37.0 KB | 150 s |" in md
    assert "| FedAvg | 50 rounds | 0.400 | 1.3 MB | 1.3 MB | - |" in md
    assert "| FedAvg | 50 rounds | - | 0.80 |" in md
    assert "synthesis 90.0, training 12.5" in md
    paths = write_results(tmp_path, {"title": "t", "classes": ["a", "b"], "chance": 0.5}, ROWS)
    assert json.loads(paths["json"].read_text())["rows"][0]["accuracy"] == 0.61
    for key in ("accuracy_png", "ipc_png"):
        with Image.open(paths[key]) as im:
            assert im.size[0] > 300


def test_human_bytes():
    assert [human_bytes(v) for v in (None, 12, 1500, 2_500_000)] == ["-", "12 B", "1.5 KB", "2.5 MB"]
