"""`osfl-server edge-models`: usage errors and missing model directories fail before any export."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from server_daemon.cli import cli
from server_daemon.edge_models.export import ExportError


def invoke(*args):
    return CliRunner().invoke(cli, ["edge-models", *args])


@pytest.mark.parametrize("args,message", [
    (["export", "--no-publish", "--tiny"], "--no-publish needs --out"),
    (["export", "--no-publish", "--out", "x"], "give at least one of --blip2"),
    (["export", "--version", "latest", "--tiny"], "not 'latest'"),
    (["export", "--version", "a/b", "--tiny"], "bundle version"),
])
def test_usage_errors(args, message):
    res = invoke(*args)
    assert res.exit_code == 2 and message in res.output


def test_missing_model_directory_is_an_export_error(tmp_path):
    res = invoke("export", "--no-publish", "--out", str(tmp_path / "b"), "--blip2", str(tmp_path / "nope"))
    assert isinstance(res.exception, ExportError) and res.exception.exit_code == 3
    assert "does not exist" in str(res.exception) and "nothing is downloaded" in str(res.exception)


def test_list_with_nothing_published(tmp_path):
    cfg = tmp_path / "server.toml"
    assert CliRunner().invoke(cli, ["--config", str(cfg), "init"]).exit_code == 0
    res = CliRunner().invoke(cli, ["--config", str(cfg), "edge-models", "list"])
    assert res.exit_code == 0 and "no edge model bundles published" in res.output
