"""Fixtures for the loopback tests; the helpers they use live in e2e_support.py (a unique module
name: every tests/ folder has a conftest, so `from conftest import` would pick an arbitrary one)."""
from __future__ import annotations

import signal

import pytest

from e2e_support import Server, make_site
from edge_client.transport import Client


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server")
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop(signal.SIGKILL)


@pytest.fixture
def site_factory(server, tmp_path):
    made: list[Client] = []

    def make(site_id: str, **kw) -> Client:
        c = make_site(server, tmp_path / "sites", site_id, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
