"""The import rules of docs/architecture.md, checked statically over every module of the three packages."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "diffusers", "transformers", "accelerate", "onnx", "safetensors"}
#: server modules allowed to import the heavy ML stack (lazily, inside the server only)
HEAVY_OK = ("server_daemon/synthesis/", "server_daemon/training/", "server_daemon/jobs/",
            "server_daemon/edge_models/", "server_daemon/lab/")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("protocol"), ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_imports_nothing_of_ours(path):
    assert not imports(path) & {"edge_client", "server_daemon"} | (imports(path) & HEAVY)


@pytest.mark.parametrize("path", modules("edge_client"), ids=lambda p: str(p.relative_to(ROOT)))
def test_edge_client_never_imports_the_server_or_torch(path):
    bad = imports(path) & ({"server_daemon"} | HEAVY)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", modules("server_daemon"), ids=lambda p: str(p.relative_to(ROOT)))
def test_server_never_imports_the_edge_and_keeps_torch_in_its_place(path):
    rel = str(path.relative_to(ROOT))
    found = imports(path)
    assert "edge_client" not in found, f"{rel} imports edge_client"
    if not rel.startswith(HEAVY_OK):
        assert not found & HEAVY, f"{rel} imports {found & HEAVY}; only synthesis/training modules may"


#: server_daemon's layers, bottom first: a module may import its own layer and those below, never above
LAYERS = [("ingest",), ("jobs", "methods", "synthesis", "training", "edge_models"), ("lab",),
          ("cli", "cli_edge_models", "report", "__main__")]


def _server_imports(path: Path) -> set[str]:
    """The server_daemon sub-packages a module imports (absolute or relative)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT / "server_daemon").parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("server_daemon."):
                found.add(node.module.split(".")[1])
            elif node.level:
                base = list(rel[:-1])[: len(rel) - node.level]  # the package the import is relative to
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    found.add(parts[0])
                else:
                    found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("server_daemon.")}
    return found


def _layer(name: str) -> int | None:
    name = name.removesuffix(".py")
    return next((i for i, names in enumerate(LAYERS) if name in names), None)


@pytest.mark.parametrize("path", modules("server_daemon"), ids=lambda p: str(p.relative_to(ROOT)))
def test_server_layers_import_nothing_above_them(path):
    own = _layer(path.relative_to(ROOT / "server_daemon").parts[0])
    if own is None:
        return  # errors.py, __init__.py: the shared bottom
    above = [m for m in _server_imports(path) if (_layer(m) or 0) > own]
    assert not above, f"{path.relative_to(ROOT)} (layer {LAYERS[own]}) imports {above} from above it"
