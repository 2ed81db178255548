"""The edge client must stay light: importing its modules never pulls in torch, diffusers,
transformers or the server daemon (asserted in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys
import edge_client.dataset, edge_client.payloads, edge_client.inspect, edge_client.errors, edge_client.exit_codes
heavy = sorted(m for m in sys.modules
               if m.split('.')[0] in {'torch', 'diffusers', 'transformers', 'server_daemon'})
print(repr(heavy))
"""


def test_edge_modules_do_not_import_heavy_packages() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
