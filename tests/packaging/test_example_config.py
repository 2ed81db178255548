"""The example configs in packaging/ never drift from what the code writes and reads."""
from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import fields
from pathlib import Path

from protocol.keys import KeyPair, encode_server_key
from server_daemon.ingest.config import _SECTIONS, load_config, render_config

from edge_client.config import init_home, load_config as load_edge_config

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
SERVER_EXAMPLE = PACKAGING / "server.example.toml"
EDGE_EXAMPLE = PACKAGING / "edge.example.toml"

# How packaging/server.example.toml was generated (regenerate after changing render_config):
#   python -c "from server_daemon.ingest.config import render_config as r; \
#     open('packaging/server.example.toml','w').write(r('tcp://0.0.0.0:7878', '/var/lib/osfl'))"
EXAMPLE_ARGS = ("tcp://0.0.0.0:7878", "/var/lib/osfl")


def keys_of(text: str) -> set[tuple[str, str]]:
    return {(s, k) for s, table in tomllib.loads(text).items() for k in table}


def assert_every_key_commented(text: str, name: str) -> None:
    """Every `key = value` line has a comment line somewhere in the block just above it."""
    block_has_comment = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("["):
            block_has_comment = False
        elif stripped.startswith("#"):
            block_has_comment = True
        elif re.match(r"^[A-Za-z_]+\s*=", stripped):
            assert block_has_comment, f"{name}: no comment explains {stripped!r}"


# ---- server -----------------------------------------------------------------------------------

def test_server_example_is_what_render_config_writes() -> None:
    expected = render_config(*EXAMPLE_ARGS)
    assert SERVER_EXAMPLE.read_text() == expected, (
        "packaging/server.example.toml drifted from server_daemon.ingest.config.render_config; regenerate it "
        "(see the comment at the top of this test file)")


def test_server_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    shutil.copy(SERVER_EXAMPLE, path)
    cfg = load_config(path)
    assert cfg.server.bind == EXAMPLE_ARGS[0]
    assert cfg.state_dir == Path(EXAMPLE_ARGS[1])
    # every other value is the dataclass default
    for name, cls in _SECTIONS.items():
        section = getattr(cfg, name)
        for f in fields(cls):
            if (name, f.name) not in (("server", "bind"), ("server", "state_dir")):
                assert getattr(section, f.name) == getattr(cls(), f.name), f"[{name}] {f.name}"


def test_server_example_shows_every_key() -> None:
    text = SERVER_EXAMPLE.read_text()
    known = {(name, f.name) for name, cls in _SECTIONS.items() for f in fields(cls)}
    assert keys_of(text) == known
    assert_every_key_commented(text, SERVER_EXAMPLE.name)


# ---- edge (site) ------------------------------------------------------------------------------

def test_edge_example_loads(tmp_path: Path) -> None:
    shutil.copy(EDGE_EXAMPLE, tmp_path / "edge.toml")
    cfg = load_edge_config(tmp_path)
    assert cfg.site_id == "hospital-a"
    assert cfg.endpoint.startswith("tcp://")


def test_edge_example_has_the_shape_init_writes(tmp_path: Path) -> None:
    server = KeyPair.generate()
    home = tmp_path / "site"
    init_home(home, "tcp://127.0.0.1:7878", encode_server_key(server.curve_public, server.public), "site-a")
    written = (home / "edge.toml").read_text()
    example = EDGE_EXAMPLE.read_text()
    assert keys_of(example) == keys_of(written)
    # defaults shown in the example are the ones init writes
    w, e = tomllib.loads(written), tomllib.loads(example)
    assert e["transport"] == w["transport"]
    assert_every_key_commented(example, EDGE_EXAMPLE.name)
