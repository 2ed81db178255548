"""The captioning side of the edge stays light: onnxruntime, tokenizers, numpy, Pillow; never torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys
import edge_client.cli, edge_client.captioning, edge_client.bundle, edge_client.scrub, edge_client.dicom
import onnxruntime, tokenizers  # what Captioner loads
heavy = sorted(m for m in sys.modules
               if m.split('.')[0] in {'torch', 'diffusers', 'transformers', 'onnx', 'server_daemon'})
print(repr(heavy))
"""


def test_captioning_modules_do_not_import_heavy_packages() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
