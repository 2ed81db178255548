"""`osfl-server`'s exit codes: one table in server_daemon/errors.py, the same in docs/operator.md and the CLI."""
from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from server_daemon import errors as E
from server_daemon.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def test_every_error_class_has_a_documented_code():
    classes = [E.ServerError, *E.ServerError.__subclasses__()]
    assert {c.exit_code for c in classes} <= set(E.EXIT_CODES)
    assert all(text for _, text in E.EXIT_CODES.values())


def test_operator_guide_shows_the_same_table():
    text = (ROOT / "docs" / "operator.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \| (.+) \|$", text, re.M)
    assert {int(c): (n, t) for c, n, t in rows} == E.EXIT_CODES


def test_cli_prints_the_table():
    out = CliRunner().invoke(cli, ["exit-codes"]).output
    for code, (name, _) in E.EXIT_CODES.items():
        assert re.search(rf"^\s*{code}\s+{name}\s", out, re.M)
