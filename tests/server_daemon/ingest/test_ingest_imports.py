"""Importing the ingest side loads no numpy, PIL or torch, and `osfl-server run` never loads the lab."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "PIL", "torch", "diffusers", "transformers")


def _loaded(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(m for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return out.split()


def test_ingest_loads_no_numpy_pil_or_torch():
    mods = _loaded("import server_daemon.ingest, server_daemon.ingest.daemon, server_daemon.ingest.handlers, "
                   "server_daemon.ingest.supervisor, server_daemon.ingest.store, server_daemon.ingest.metrics, "
                   "server_daemon.ingest.config, server_daemon.ingest.layout, server_daemon.ingest.systemd")
    bad = [m for m in mods if m.split(".")[0] in HEAVY]
    assert not bad, f"importing ingest loaded {bad[:10]}"


def test_the_run_command_does_not_import_the_lab_or_the_workers():
    mods = _loaded("import server_daemon.cli as c\n"
                   "cmd = c.cli.get_command(None, 'run')\n"
                   "import server_daemon.ingest.daemon")
    assert not [m for m in mods if m.startswith(("server_daemon.lab", "server_daemon.jobs", "server_daemon.training",
                                                 "server_daemon.synthesis"))]
    assert not [m for m in mods if m.split(".")[0] in HEAVY]
