"""The method registry: every payload kind has its three modules and its SPEC.md section, and nothing else.

Adding a kind is adding protocol/methods/K.py, edge_client/methods/K.py, server_daemon/methods/K.py,
a "### Kind `K`" section in protocol/SPEC.md and one line in PAYLOAD_KINDS (docs/architecture.md).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from protocol.methods import PAYLOAD_KINDS, RESERVED_KINDS

ROOT = Path(__file__).resolve().parents[1]
SIDES = {
    "protocol.methods": ("KIND", "validate_data", "stream_data", "check_against_federation", "example", "REJECTIONS"),
    "edge_client.methods": ("KIND", "build", "DATA_KEYS", "summarize", "describe"),
    "server_daemon.methods": ("KIND", "source"),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_every_kind_has_a_module_on_every_side(kind, side):
    module = importlib.import_module(f"{side}.{kind}")
    missing = [name for name in SIDES[side] if not hasattr(module, name)]
    assert not missing, f"{side}.{kind} lacks {missing}"
    assert module.KIND == kind
    registry = importlib.import_module(side)
    assert registry.method(kind) is module


@pytest.mark.parametrize("side", SIDES)
def test_no_method_module_outside_the_registry(side):
    folder = ROOT / side.replace(".", "/")
    kinds = {p.stem for p in folder.glob("*.py")} - {"__init__", "common", "plan"}
    assert kinds == set(PAYLOAD_KINDS), f"{folder} has modules {sorted(kinds)}; the registry lists {PAYLOAD_KINDS}"


@pytest.mark.parametrize("side", SIDES)
def test_an_unregistered_kind_has_no_module(side):
    registry = importlib.import_module(side)
    for kind in RESERVED_KINDS:
        with pytest.raises(KeyError):
            registry.method(kind)


def test_every_kind_has_its_spec_section():
    spec = (ROOT / "protocol" / "SPEC.md").read_text(encoding="utf-8")
    sections = re.findall(r"^### Kind `([a-z_]+)`$", spec, re.M)
    assert sections == list(PAYLOAD_KINDS)


def test_cli_methods_are_the_registered_kinds():
    from protocol.payloads import METHODS

    assert sorted(METHODS.values()) == sorted(PAYLOAD_KINDS)
    assert not set(RESERVED_KINDS) & set(PAYLOAD_KINDS)
