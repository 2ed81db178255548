"""The durable store on its own: payload rows, chunked uploads, admission transitions, schema checks."""
from __future__ import annotations

import hashlib
import sqlite3

import pytest

from server_daemon.errors import StateError, StoreError
from server_daemon.ingest.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state", create=True)
    yield s
    s.close()


def _site(store, fp="f" * 32, site="clinic"):
    with store.transaction():
        store.add_pending_client(fp, site, b"k" * 32, "c" * 40, "")
    return fp


def test_opening_without_a_store_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="osfl-server init"):
        Store(tmp_path / "nothing")


def test_wal_and_full_sync(store):
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_store_of_another_schema_is_refused(tmp_path):
    s = Store(tmp_path / "state", create=True)
    s.db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    s.close()
    with pytest.raises(StoreError, match="schema 99"):
        Store(tmp_path / "state")


def test_one_payload_per_site_kind_and_federation(store):
    fp = _site(store)
    store.create_federation("fed1", ["a", "b"], ["class_prompts", "captions"], 4, 1)
    with store.transaction():
        first = store.insert_payload("fed1", fp, "class_prompts", b"s" * 32, 3, b"m" * 16, inline=b"abc")
        dup = store.insert_payload("fed1", fp, "class_prompts", b"t" * 32, 3, b"n" * 16, inline=b"xyz")
        other_kind = store.insert_payload("fed1", fp, "captions", b"u" * 32, 3, b"o" * 16, inline=b"def")
    assert first and other_kind and dup is None
    assert store.count_sites("fed1") == 1
    assert [p.kind for p in store.payloads("fed1")] == ["class_prompts", "captions"]


def test_damaged_blob_is_detected(store):
    fp = _site(store)
    store.create_federation("fed1", ["a"], ["class_prompts"], 4, 1)
    with store.transaction():
        pid = store.insert_payload("fed1", fp, "class_prompts", hashlib.sha256(b"abc").digest(), 3, b"m" * 16,
                                   inline=b"abd")
    with pytest.raises(StoreError, match="damaged"):
        store.payload_bytes(pid)


def test_chunked_upload_resumes_from_the_committed_offset(store):
    fp = _site(store)
    data = b"0123456789" * 1000
    sha = hashlib.sha256(data).digest()
    with store.transaction():
        assert store.open_upload("u1", "fed1", fp, "captions", len(data), sha, 4096) == 0
        assert store.write_chunk("u1", 0, data[:4096]) == 4096
    # bytes past the committed offset (a crash mid-chunk) are cut off when the site resumes
    with open(store.part_path("u1"), "ab") as f:
        f.write(b"garbage")
    with store.transaction():
        assert store.open_upload("u1", "fed1", fp, "captions", len(data), sha, 4096) == 4096
        store.write_chunk("u1", 4096, data[4096:])
        rel = store.finish_upload("u1", sha)
    assert (store.state_dir / rel).read_bytes() == data
    assert store.upload("u1") is None and not store.part_path("u1").exists()


def test_transitions(store):
    fp = _site(store)
    assert store.transition(fp[:8], "accept").state == "accepted"
    assert store.transition(fp, "revoke").state == "revoked"
    with pytest.raises(StateError):
        store.transition(fp, "accept")
    actions = [a["action"] for a in store.audit_log()]
    assert "enroll" in actions and len(actions) >= 3


def test_data_version_moves_when_another_connection_writes(store, tmp_path):
    before = store.data_version()
    other = sqlite3.connect(store.db_path)
    other.execute("INSERT INTO meta VALUES ('x', 'y')")
    other.commit()
    other.close()
    assert store.data_version() != before
