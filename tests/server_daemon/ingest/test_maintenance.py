"""verify-store finds every kind of damage, repair_payload mends it, backup copies a consistent store."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from protocol.keys import KeyPair
from protocol.methods import method
from server_daemon import cli as cli_module
from server_daemon.errors import STATE, STORE, StoreError
from server_daemon.ingest.maintenance import backup_store, verify_store
from server_daemon.ingest.store import Store

from ingest_support import CLASSES

ROOT = Path(__file__).resolve().parents[3]


def _raw(kind: str, fed: str = "fed1") -> bytes:
    return msgpack.packb(method(kind).example(fed, CLASSES), use_bin_type=True)


@pytest.fixture
def filled(ingest, tmp_path):
    """A store with an inline payload, a chunked (blob) payload and a published artifact."""
    ingest.federation()
    a, b = ingest.site("site-a"), ingest.site("site-b")
    inline = ingest.upload(a, _raw("class_prompts"))
    assert inline.ok, inline.message
    raw_blob = _raw("captions")
    blob = ingest.upload_chunked(b, raw_blob, "captions")
    assert blob.ok, blob.message
    src = tmp_path / "model.onnx"
    src.write_bytes(os.urandom(3000))
    ingest.store.publish_artifact("model/fed1", src, {"kind": "onnx"}, KeyPair.generate().signing)
    ingest.inline_id, ingest.blob_id = inline.data["payload_id"], blob.data["payload_id"]
    ingest.inline_raw, ingest.blob_raw = _raw("class_prompts"), raw_blob
    (ingest.cfg.state_dir / "keys").mkdir(exist_ok=True, mode=0o700)
    KeyPair.generate().save(ingest.cfg.keys_dir, "server")
    return ingest


def _blob(h) -> Path:
    rel = h.store.db.execute("SELECT path FROM payloads WHERE id=?", (h.blob_id,)).fetchone()[0]
    return h.cfg.state_dir / rel


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _osfl(h, capsys, *args: str) -> tuple[int, str, str]:
    """`osfl-server --config CFG ARGS` through main(), as the console script runs it: (exit code, out, err)."""
    argv = sys.argv
    sys.argv = ["osfl-server", "--config", str(h.cfg.path), *args]
    try:
        cli_module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def test_a_clean_store_passes(filled, capsys):
    report = verify_store(filled.cfg.state_dir)
    assert report.clean and (report.payloads, report.inline, report.blobs, report.artifacts) == (2, 1, 1, 1)
    code, out, _ = _osfl(filled, capsys, "verify-store")
    assert code == 0 and "clean" in out and "integrity ok" in out
    code, out, _ = _osfl(filled, capsys, "verify-store", "--json")
    assert code == 0 and json.loads(out)["clean"] is True


def _damage_blob_bit(h):
    _flip(_blob(h), len(h.blob_raw) // 2)
    return h.blob_id, "does not match its sha256"


def _damage_inline_bit(h):
    bad = bytearray(h.inline_raw)
    bad[5] ^= 0x80
    h.store.db.execute("UPDATE payloads SET inline=? WHERE id=?", (bytes(bad), h.inline_id))
    return h.inline_id, "inline row does not match"


def _damage_truncate(h):
    with open(_blob(h), "r+b") as f:
        f.truncate(10)
    return h.blob_id, "is 10 bytes"


def _damage_delete(h):
    _blob(h).unlink()
    return h.blob_id, "is missing"


@pytest.mark.parametrize("damage", [_damage_blob_bit, _damage_inline_bit, _damage_truncate, _damage_delete],
                         ids=["blob-bit", "inline-bit", "blob-truncated", "blob-deleted"])
def test_damaged_payload_is_reported_with_its_id_and_exit_code_4(filled, capsys, damage):
    pid, what = damage(filled)
    report = verify_store(filled.cfg.state_dir)
    assert not report.clean and [d.payload_id for d in report.damaged] == [pid]
    d = report.damaged[0]
    assert what in d.problem and d.federation == "fed1" and d.site in ("site-a", "site-b") and d.kind
    assert filled.store.payload_damage(pid) == d.problem
    code, out, err = _osfl(filled, capsys, "verify-store")
    assert code == STORE == 4
    assert f"DAMAGED   payload {pid} " in out and what in out
    assert "1 damaged payload" in err and "uploads the same payload again repairs it" in err
    code, out, _ = _osfl(filled, capsys, "verify-store", "--json")
    assert code == 4 and json.loads(out)["damaged"][0]["payload_id"] == pid


def test_damaged_artifact_is_reported(filled, capsys):
    rel = filled.store.artifact("model/fed1")["path"]
    _flip(filled.cfg.state_dir / rel, 100)
    report = verify_store(filled.cfg.state_dir)
    assert [(d.artifact, d.payload_id) for d in report.damaged] == [("model/fed1", None)]
    assert "does not match its sha256" in report.damaged[0].problem
    code, out, err = _osfl(filled, capsys, "verify-store")
    assert code == 4 and "artifact model/fed1" in out and "damaged artifact" in err


def test_verify_runs_beside_an_open_write_transaction(filled):
    other = sqlite3.connect(filled.store.db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO audit (ts_ms, actor, action) VALUES (0, 'x', 'y')")
    try:
        assert verify_store(filled.cfg.state_dir).clean
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_corrupt_database_pages_are_reported_without_a_traceback(filled):
    state = filled.cfg.state_dir
    filled.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filled.store.close()
    db = state / "osfl.sqlite3"
    size = db.stat().st_size
    assert size > 8 * 4096
    with open(db, "r+b") as f:  # garbage over pages in the middle (the header stays valid)
        f.seek(size // 2 - 4096)
        f.write(os.urandom(3 * 4096))
    report = verify_store(state)
    assert not report.clean and report.database
    proc = subprocess.run([sys.executable, "-m", "server_daemon.cli", "--config", str(filled.cfg.path),
                           "verify-store"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "DATABASE" in proc.stdout
    # a header destroyed too: "file is not a database", still exit 4 and no traceback
    with open(db, "r+b") as f:
        f.write(os.urandom(100))
    proc = subprocess.run([sys.executable, "-m", "server_daemon.cli", "--config", str(filled.cfg.path),
                           "verify-store"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert "not a database" in proc.stdout + proc.stderr


def test_repair_payload_mends_a_blob_and_an_inline_row(filled, tmp_path):
    store = filled.store
    _damage_blob_bit(filled)
    _damage_inline_bit(filled)
    assert store.payload_damage(filled.blob_id) and store.payload_damage(filled.inline_id)
    wrong = filled.blob_raw[:-1] + bytes([filled.blob_raw[-1] ^ 1])
    with pytest.raises(StoreError, match="cannot repair payload"):
        store.repair_payload(filled.blob_id, data=wrong)
    wrong_file = tmp_path / "wrong"
    wrong_file.write_bytes(wrong)
    with pytest.raises(StoreError, match="expected"):
        store.repair_payload(filled.blob_id, path=wrong_file)
    with pytest.raises(StoreError):
        store.repair_payload(filled.inline_id, data=filled.blob_raw)
    assert store.payload_damage(filled.blob_id)  # a refused repair leaves no trace
    assert not [p for p in _blob(filled).parent.iterdir() if p.name.endswith(".tmp")]

    good_file = tmp_path / "good"
    good_file.write_bytes(filled.blob_raw)
    store.repair_payload(filled.blob_id, path=good_file)
    store.repair_payload(filled.inline_id, data=filled.inline_raw)
    assert store.payload_damage(filled.blob_id) is None and store.payload_damage(filled.inline_id) is None
    assert store.payload_bytes(filled.inline_id) == filled.inline_raw
    # a deleted blob comes back from bytes, inside a caller's transaction as the upload handler runs it
    _blob(filled).unlink()
    with store.transaction():
        store.repair_payload(filled.blob_id, data=filled.blob_raw)
    assert verify_store(filled.cfg.state_dir).clean
    assert sum(r["action"] == "payload-repair" for r in store.audit_log()) == 3


def test_backup_while_a_write_transaction_is_open_is_consistent_and_verified(filled, tmp_path, capsys):
    other = sqlite3.connect(filled.store.db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("DELETE FROM payloads")  # uncommitted: must not be in the copy
    dest = tmp_path / "backup"
    try:
        code, out, err = _osfl(filled, capsys, "backup", str(dest))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert code == 0, err
    assert "blobs      1 files" in out and "artifacts  1 files" in out and "not copied" in out and "clean" in out
    assert not (dest / "keys").exists() and not (dest / "parts").exists()
    copy = Store(dest)
    try:
        assert {p.id for p in copy.payloads()} == {filled.inline_id, filled.blob_id}
        assert copy.payload_bytes(filled.blob_id) == filled.blob_raw
    finally:
        copy.close()
    assert verify_store(dest).clean


def test_backup_refuses_an_existing_store_unless_forced_and_copies_keys_on_request(filled, tmp_path, capsys):
    dest = tmp_path / "backup"
    backup_store(filled.cfg.state_dir, dest)
    code, _, err = _osfl(filled, capsys, "backup", str(dest))
    assert code == STATE and "already holds a store" in err and "--force" in err
    code, _, err = _osfl(filled, capsys, "backup", str(filled.cfg.state_dir), "--force")
    assert code == STATE and "the store itself" in err
    code, out, err = _osfl(filled, capsys, "backup", str(dest), "--force", "--with-keys", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["verify"]["clean"] and "keys/server.sign.key" in r["keys"]
    for f in (filled.cfg.keys_dir).iterdir():
        copied = dest / "keys" / f.name
        assert copied.read_bytes() == f.read_bytes()
        assert stat.S_IMODE(copied.stat().st_mode) == stat.S_IMODE(f.stat().st_mode)
    assert stat.S_IMODE((dest / "keys" / "server.sign.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "keys").stat().st_mode) == 0o700


def test_backup_of_a_damaged_store_fails_its_verification(filled, tmp_path, capsys):
    _damage_blob_bit(filled)
    code, out, err = _osfl(filled, capsys, "backup", str(tmp_path / "b"))
    assert code == 4 and f"DAMAGED   payload {filled.blob_id} " in out


def test_maintenance_keeps_the_ingest_side_light():
    code = ("import sys, server_daemon.ingest.maintenance, server_daemon.ingest.store; "
            "print([m for m in ('numpy', 'PIL', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
