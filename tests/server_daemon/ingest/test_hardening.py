"""The hardening table, row by row, through the request handlers (no socket): each case is refused
with a clear code, or survived, and nothing acknowledged is lost."""
from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys

import msgpack
import pytest

from protocol.keys import KeyPair
from protocol.methods import method
from server_daemon.ingest.handlers import Handlers

from ingest_support import CLASSES


def _raw(kind: str = "class_prompts", fed: str = "fed1", **changes) -> bytes:
    return msgpack.packb({**method(kind).example(fed, CLASSES), **changes}, use_bin_type=True)


# ---- row 1: membership ---------------------------------------------------------------------------

def test_a_site_reaches_only_its_own_federations(ingest):
    ingest.store.create_federation("mine", CLASSES, ["class_prompts"], 4, 1, members=["site-a"])
    ingest.store.create_federation("theirs", CLASSES, ["class_prompts"], 4, 1, members=["site-b"])
    a = ingest.site("site-a")
    ingest.site("site-b")
    assert ingest.call("federation", a, federation="mine").ok
    for kind, body in (("federation", None), ("upload", None)):
        r = ingest.call(kind, a, body, federation="theirs") if kind == "federation" else \
            ingest.upload(a, _raw(fed="theirs"), federation="theirs")
        assert r.code == "UNKNOWN_FEDERATION", (kind, r.message)
    assert ingest.upload_chunked(a, _raw(fed="theirs"), "class_prompts", federation="theirs").code == \
        "UNKNOWN_FEDERATION"
    assert list(ingest.call("status", a).data["federations"]) == ["mine"]
    # the model of a federation it does not belong to is not there for it, even once published
    src = ingest.store.state_dir / "m.onnx"
    src.write_bytes(b"model")
    ingest.store.publish_artifact("model/theirs", src, {"kind": "onnx"}, KeyPair.generate().signing)
    assert ingest.call("artifact_info", a, {"name": "model/theirs"}).code == "NOT_FOUND"
    assert ingest.upload(a, _raw(fed="mine"), federation="mine").ok


def test_membership_changes_take_effect(ingest):
    ingest.store.create_federation("fed1", CLASSES, ["class_prompts"], 4, 1, members=[])
    a = ingest.site("site-a")
    assert ingest.upload(a, _raw()).code == "UNKNOWN_FEDERATION"
    ingest.store.set_members("fed1", add=["site-a"])
    assert ingest.upload(a, _raw()).ok
    assert ingest.store.federation("fed1").members == ("site-a",)


def test_the_connection_must_carry_the_enrolled_curve_key(ingest):
    ingest.federation()
    a = ingest.site("site-a")
    thief = KeyPair.generate()
    ingest.handlers.refresh(force=True)
    frames_ok = ingest.handlers.handle_request
    from protocol.envelope import decode_reply, encode_request

    for curve, code in ((thief.curve_public.decode(), "CURVE_KEY_MISMATCH"), (a.curve_public.decode(), "OK")):
        frames = encode_request("upload", _raw(), a.signing, federation="fed1")
        with ingest.store.transaction():
            _, reply = frames_ok(frames, [], curve)
        assert decode_reply(reply).code == code
    # and an enrolment whose 'curve' is not the connection's key
    other = KeyPair.generate()
    body = msgpack.packb({"site": "site-x", "curve": "a" * 40}, use_bin_type=True)
    frames = encode_request("enroll", body, other.signing, include_public_key=True)
    with ingest.store.transaction():
        _, reply = frames_ok(frames, [], other.curve_public.decode())
    assert decode_reply(reply).code == "CURVE_KEY_MISMATCH"


# ---- row 3: killed between the blob rename and COMMIT ---------------------------------------------

def test_a_retry_after_a_kill_between_rename_and_commit_succeeds(ingest):
    ingest.federation()
    key = ingest.site()
    raw = _raw("captions")
    sha = hashlib.sha256(raw).digest()
    r = ingest.call("upload_begin", key, {"kind": "captions", "size": len(raw), "sha256": sha, "chunk_size": 4096},
                    federation="fed1")
    uid = r.data["upload_id"]
    assert ingest.call("upload_chunk", key, {"upload_id": uid, "offset": 0, "data": raw}, federation="fed1").ok
    # what a kill after finish_upload's rename and before COMMIT leaves: the blob moved, the rows as before
    store = ingest.store
    store.part_path(uid).rename(store.state_dir / "blobs" / sha.hex())
    r = ingest.upload_chunked(key, raw, "captions")
    assert r.ok, r.message
    assert store.payload_bytes(r.data["payload_id"]) == raw


# ---- row 5: the disk fills up -----------------------------------------------------------------------

def test_a_full_database_answers_disk_full_and_recovers(ingest):
    ingest.federation()
    key = ingest.site()
    db = ingest.store.db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: SQLITE_FULL on the next insert
    items = [{"label_index": i % 2, "caption": f"a grey animal on a sofa in the evening light, {i}"} for i in range(3000)]
    big = _raw("captions", counts=[1500, 1500, 0, 0], data={"captions": items, "scrubbed": 0})
    r = ingest.upload(key, big)
    assert (r.ok, r.code) == (False, "DISK_FULL") and "retry later" in r.message
    assert ingest.call("status", key).ok  # still answering
    db.execute("PRAGMA max_page_count = 1073741823")
    assert ingest.upload(key, big).ok


def test_below_the_free_space_floor_uploads_are_refused_early(ingest, tmp_path):
    ingest.federation()
    key = ingest.site()
    cfg = ingest.cfg
    lim = type(cfg.limits)(**{**cfg.limits.__dict__, "min_free_bytes": 1 << 62})
    handlers = Handlers(type(cfg)(**{**cfg.__dict__, "limits": lim}), ingest.store)
    ingest.handlers = handlers
    assert ingest.upload(key, _raw()).code == "DISK_FULL"
    assert ingest.upload_chunked(key, _raw("captions"), "captions").code == "DISK_FULL"
    assert ingest.store.payloads() == []


# ---- row 6: quotas ------------------------------------------------------------------------------------

def test_open_uploads_per_site_are_capped(ingest):
    ingest.federation()
    key = ingest.site()
    limit = ingest.cfg.limits.max_open_uploads_per_site
    codes = []
    for i in range(limit + 1):
        sha = hashlib.sha256(str(i).encode()).digest()
        codes.append(ingest.call("upload_begin", key, {"kind": "captions", "size": 1 << 20, "sha256": sha,
                                                       "chunk_size": 4096}, federation="fed1").code)
    assert codes[:limit] == ["OK"] * limit and codes[limit] == "QUOTA_EXCEEDED"


def test_announced_bytes_per_site_are_capped(ingest):
    ingest.federation()
    key = ingest.site()
    big = ingest.cfg.limits.max_payload_bytes
    codes = [ingest.call("upload_begin", key, {"kind": "captions", "size": big, "sha256": bytes([i]) * 32,
                                               "chunk_size": 4096}, federation="fed1").code for i in range(5)]
    assert codes == ["OK"] * 4 + ["QUOTA_EXCEEDED"]


def test_stale_uploads_expire(ingest):
    ingest.federation()
    key = ingest.site()
    r = ingest.call("upload_begin", key, {"kind": "captions", "size": 5000, "sha256": b"s" * 32, "chunk_size": 4096},
                    federation="fed1")
    uid = r.data["upload_id"]
    with ingest.store.transaction():
        assert ingest.store.expire_uploads(before_ms=2 ** 62) == 1
    assert ingest.store.upload(uid) is None and not ingest.store.part_path(uid).exists()


def test_pending_enrolments_are_capped(ingest):
    cap = ingest.cfg.limits.max_pending_sites
    codes = []
    for i in range(cap + 2):
        k = KeyPair.generate()
        codes.append(ingest.call("enroll", k, {"site": f"s{i}", "curve": k.curve_public.decode()},
                                 include_public_key=True).code)
    assert codes.count("OK") == cap and codes[-1] == "QUOTA_EXCEEDED"
    assert ingest.store.count_pending() == cap


# ---- row 7: a body of empty arrays -------------------------------------------------------------------

def test_a_body_of_empty_arrays_is_refused_in_bounded_memory():
    """48 MiB of 0x90 (empty arrays) where labels belong: refused without building millions of lists."""
    probe = ("import io, resource, sys, time\n"
             "from protocol.payloads import validate_stream\n"
             "import msgpack\n"
             "head = msgpack.packb({'osfl_payload': 1, 'kind': 'class_prompts', 'federation': 'f'})\n"
             "raw = b'\\x84' + head[1:] + msgpack.packb('labels') + b'\\xdd' + (48 << 20).to_bytes(4, 'big')"
             " + b'\\x90' * (48 << 20)\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "t = time.perf_counter()\n"
             "try:\n    validate_stream(io.BytesIO(raw))\nexcept Exception as e:\n    print(type(e).__name__)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, time.perf_counter() - t)\n")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == "InvalidPayload"
    grown_kib, seconds = int(out[1]), float(out[2])
    assert grown_kib < 64 * 1024 and seconds < 5, (grown_kib, seconds)


def test_request_bodies_have_container_limits(ingest):
    ingest.federation()
    key = ingest.site()
    body = msgpack.packb({"site": "x", "curve": [[]] * 100_000}, use_bin_type=True)
    r = ingest.call("upload_begin", key, raw=body, federation="fed1")
    assert r.code == "MALFORMED_BODY"


# ---- row 8: enrolment fields --------------------------------------------------------------------------

@pytest.mark.parametrize("body, code", [
    ({"site": "hospital-a\n"}, "MALFORMED_BODY"),
    ({"site": "ok", "curve": "\x00" * 40}, "MALFORMED_BODY"),
    ({"site": "ok", "curve": "short"}, "MALFORMED_BODY"),
    ({"site": "ok", "name": "Clinic \x1b[2J\x1b]0;owned\x07"}, "MALFORMED_BODY"),
])
def test_enrolment_fields_are_checked(ingest, body, code):
    k = KeyPair.generate()
    r = ingest.call("enroll", k, {"curve": k.curve_public.decode(), **body}, include_public_key=True)
    assert r.code == code, r.message
    assert ingest.store.clients() == []


# ---- row 15: odd payload fields -----------------------------------------------------------------------

@pytest.mark.parametrize("changes, words", [
    ({"osfl_payload": True}, "payload format"),
    ({"params": {"blob": "x" * 10_000}}, "params"),
    ({"notes": "x" * 3_000_000}, "not part of the format"),
])
def test_odd_payload_fields_are_refused(ingest, changes, words):
    ingest.federation()
    key = ingest.site()
    r = ingest.upload(key, _raw(**changes))
    assert r.code == "INVALID_PAYLOAD" and words in r.message, r.message


def test_a_federation_id_with_a_newline_is_refused(tmp_path):
    from click.testing import CliRunner

    from server_daemon.cli import cli

    cfg = tmp_path / "server.toml"
    assert CliRunner().invoke(cli, ["--config", str(cfg), "init"]).exit_code == 0
    r = CliRunner().invoke(cli, ["--config", str(cfg), "federation", "create", "fed\n", "--classes", "a",
                                 "--all-sites"])
    assert r.exit_code == 2 and "federation id" in r.output


def test_federation_create_demands_a_membership_choice(tmp_path):
    from click.testing import CliRunner

    from server_daemon.cli import cli

    cfg = tmp_path / "server.toml"
    CliRunner().invoke(cli, ["--config", str(cfg), "init"])
    r = CliRunner().invoke(cli, ["--config", str(cfg), "federation", "create", "f", "--classes", "a"])
    assert r.exit_code == 2 and "--sites" in r.output
    r = CliRunner().invoke(cli, ["--config", str(cfg), "federation", "create", "f", "--classes", "a",
                                 "--sites", "clinic-1,clinic-2"])
    assert r.exit_code == 0 and "clinic-1, clinic-2" in r.output
    s = sqlite3.connect(tmp_path / "state" / "osfl.sqlite3")
    assert "clinic-1" in s.execute("SELECT settings FROM federations").fetchone()[0]


def test_clients_list_never_sends_a_sites_escape_sequences_to_the_terminal(tmp_path):
    """Row 8: even a name stored by an earlier release is shown escaped."""
    from click.testing import CliRunner

    from server_daemon.cli import cli
    from server_daemon.ingest.config import load_config
    from server_daemon.ingest.store import Store

    cfg = tmp_path / "server.toml"
    CliRunner().invoke(cli, ["--config", str(cfg), "init"])
    store = Store(load_config(cfg).state_dir)
    with store.transaction():
        store.add_pending_client("f" * 32, "clinic", b"k" * 32, "c" * 40, "Clinic\x1b[2J\x1b]0;owned\x07")
    store.close()
    out = CliRunner().invoke(cli, ["--config", str(cfg), "clients", "list"]).output
    assert "\x1b" not in out and "\\x1b[2J" in out
