"""The layering rule: ``protocol`` imports nothing of ours and nothing heavy (docs/architecture.md, "Layers")."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import protocol

PACKAGE = Path(protocol.__file__).parent
FORBIDDEN = ("edge_client", "server_daemon", "torch", "diffusers", "transformers")
#: what protocol may import at all (SPEC.md, docs/architecture.md: stdlib + msgpack + pyzmq + cryptography)
THIRD_PARTY_ALLOWED = {"msgpack", "zmq", "cryptography"}


def test_importing_protocol_pulls_in_nothing_forbidden():
    code = (
        "import sys, json\n"
        "import protocol, protocol.envelope, protocol.keys, protocol.payloads, protocol.errors\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent, timeout=60)
    modules = json.loads(out.stdout)
    assert "protocol.envelope" in modules
    bad = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    assert bad == [], f"importing protocol imported {bad}"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_protocol_file_imports_our_other_packages_or_heavy_ones():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 6
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{path.name} imports {name}"
            assert top in THIRD_PARTY_ALLOWED or top in sys.stdlib_module_names or top == "__future__", \
                f"{path.name} imports {name}, which is neither stdlib nor msgpack, pyzmq, cryptography"
