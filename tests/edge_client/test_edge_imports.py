"""The edge client must stay light: importing its modules never pulls in torch, diffusers,
transformers or the server daemon (asserted in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import importlib, pkgutil, sys
import edge_client
# every module of the package, including the CLI, the transport and whatever is added later
for m in pkgutil.walk_packages(edge_client.__path__, "edge_client."):
    importlib.import_module(m.name)
from edge_client.cli import cli
heavy = sorted(m for m in sys.modules
               if m.split('.')[0] in {'torch', 'diffusers', 'transformers', 'server_daemon'})
print(repr(heavy))
"""


def test_edge_modules_do_not_import_heavy_packages() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
