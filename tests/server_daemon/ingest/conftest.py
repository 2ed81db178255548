"""Fixtures of the ingest tests: ``ingest`` is a Harness (ingest_support.py) over a fresh store."""
from __future__ import annotations

import pytest

from ingest_support import make_harness


@pytest.fixture
def ingest(tmp_path):
    h = make_harness(tmp_path)
    try:
        yield h
    finally:
        h.store.close()
