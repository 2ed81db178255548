"""End to end on loopback: init both sides, enroll, accept, federation, upload, kill -9, read back;
and a table of rejected requests, each answered with its code at the site and storing nothing."""
from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
import zmq

from protocol import errors as E
from protocol.envelope import decode_reply, encode_request, now_ms
from protocol.keys import KeyPair, decode_server_key, encode_server_key
from protocol.payloads import encode_payload

from e2e_support import make_site

CLASSES = ["cat", "dog", "bird"]


def class_prompts(fed: str, labels=("cat", "dog"), counts=(3, 4), **params) -> bytes:
    return encode_payload({"osfl_payload": 1, "kind": "class_prompts", "federation": fed, "labels": list(labels),
                           "counts": list(counts), "params": params, "bundle": None, "created_ms": 1,
                           "data": {"domain": None}})


def captions(fed: str, n: int) -> bytes:
    """A large payload of real content: n captions (about 100 bytes each)."""
    items = [{"label_index": i % 2, "caption": f"a photograph of a small animal on a sofa, number {i:06d}, seen "
                                              f"from above in daylight"} for i in range(n)]
    return encode_payload({"osfl_payload": 1, "kind": "captions", "federation": fed, "labels": ["cat", "dog"],
                           "counts": [(n + 1) // 2, n // 2], "params": {}, "bundle": None, "created_ms": 1,
                           "data": {"captions": items, "scrubbed": 0}})


def create_fed(server, fed="fed1", classes=CLASSES, quorum=2, methods="class-prompts,captions"):
    server.osfl("federation", "create", fed, "--classes", ",".join(classes), "--quorum", str(quorum), "--all-sites",
                "--methods", methods)


def test_upload_survives_kill_9_right_after_the_ack(server, site_factory):
    create_fed(server)
    site = site_factory("hospital-a")
    payload = class_prompts("fed1")
    reply = site.upload(payload, "fed1", "class_prompts")
    os.kill(server.proc.pid, signal.SIGKILL)  # no drain, no checkpoint: only what was fsynced survives
    server.proc.wait(10)
    server.proc = None
    store = server.store()
    [stored] = store.payloads("fed1")
    assert stored.id == reply["payload_id"]
    assert store.payload_bytes(stored.id) == payload
    assert stored.sha256 == hashlib.sha256(payload).digest()


def test_chunked_upload_survives_kill_9_and_resumes(server, site_factory):
    create_fed(server)
    site = site_factory("hospital-b")
    site.cfg = type(site.cfg)(**{**site.cfg.__dict__, "chunk_size": 64 * 1024})
    payload = captions("fed1", 3000)
    assert len(payload) > 4 * 64 * 1024
    seen = []

    class Interrupt(Exception):
        pass

    def stop_after_two(done, total):
        seen.append(done)
        if len([d for d in seen if 0 < d < total]) >= 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        site.upload(payload, "fed1", "captions", on_progress=stop_after_two)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    server.start()
    site.close()
    offsets = []
    reply = site.upload(payload, "fed1", "captions", on_progress=lambda d, t: offsets.append(d))
    assert offsets[0] >= 2 * 64 * 1024, "the upload restarted from zero instead of resuming"
    assert reply["size"] == len(payload) and not reply["duplicate"]
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    server.proc = None
    store = server.store()
    [stored] = store.payloads("fed1")
    assert store.payload_bytes(stored.id) == payload


def test_reupload_is_idempotent_and_a_different_payload_conflicts(server, site_factory):
    create_fed(server)
    site = site_factory("hospital-c")
    first = site.upload(class_prompts("fed1"), "fed1", "class_prompts")
    again = site.upload(class_prompts("fed1"), "fed1", "class_prompts")
    assert again["duplicate"] and again["payload_id"] == first["payload_id"]
    with pytest.raises(E.PayloadConflict):
        site.upload(class_prompts("fed1", counts=(9, 9)), "fed1", "class_prompts")
    assert server.payload_count() == 1


def test_known_site_with_new_key_is_refused_and_audited(server, site_factory, tmp_path):
    site_factory("hospital-d")
    impostor = make_site(server, tmp_path / "impostor", "hospital-d", accept=False)
    with pytest.raises(E.KeyConflict):
        impostor.enroll()
    impostor.close()
    log = server.store().audit_log()
    assert any(r["action"] == "enroll-refused-key-conflict" and r["site"] == "hospital-d" for r in log)
    assert [c.state for c in server.store().clients()] == ["accepted"]


def test_sigterm_drains_and_exits_cleanly(server, site_factory):
    create_fed(server)
    site = site_factory("hospital-e")
    site.upload(class_prompts("fed1"), "fed1", "class_prompts")
    assert server.stop(signal.SIGTERM) == 0
    assert any("STOPPING=1" in m for m in server.notifier.messages)
    info = server.store().daemon_info()
    assert info["state"] == "stopped"


# ---- the table of rejected requests ------------------------------------------------------------

def raw_request(server, frames, keys: KeyPair | None = None, timeout_ms=5000):
    keys = keys or KeyPair.generate()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.curve_secretkey, s.curve_publickey = keys.curve_secret, keys.curve_public
    s.curve_serverkey = decode_server_key(server.key)[0]
    s.linger = 0
    s.connect(server.endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(timeout_ms), "no reply"
        return decode_reply(s.recv_multipart())
    finally:
        s.close()


@pytest.fixture
def world(server, site_factory, tmp_path):
    create_fed(server)
    accepted = site_factory("good")
    pending = site_factory("waiting", accept=False)
    pending.enroll()
    revoked = site_factory("gone")
    server.osfl("clients", "revoke", revoked.keys.fingerprint)
    return {"accepted": accepted, "pending": pending, "revoked": revoked, "stranger": KeyPair.generate()}


def _upload_frames(keys: KeyPair, **kw):
    return encode_request("upload", class_prompts("fed1"), keys.signing, federation="fed1", **kw)


def _tamper(frames, index, pos=-1):
    frames = list(frames)
    b = bytearray(frames[index])
    b[pos] ^= 0x01
    frames[index] = bytes(b)
    return frames


def _replayed(world, server):
    frames = encode_request("upload", class_prompts("fed1", counts=(1, 1)), world["accepted"].keys.signing,
                            federation="fed1")
    assert raw_request(server, frames, world["accepted"].keys).ok
    before = server.payload_count()
    return frames, before


CASES = {
    "unknown key": lambda w: _upload_frames(w["stranger"]),
    "pending key": lambda w: _upload_frames(w["pending"].keys),
    "revoked key": lambda w: _upload_frames(w["revoked"].keys),
    "tampered body": lambda w: _tamper(_upload_frames(w["accepted"].keys), 2),
    "tampered header": lambda w: _tamper(_upload_frames(w["accepted"].keys), 1, 20),
    "expired timestamp": lambda w: _upload_frames(w["accepted"].keys, created_ms=now_ms() - 3_600_000),
    "oversize frame": lambda w: encode_request("upload", b"\x00" * (4 * 1024 * 1024 + 1),
                                               w["accepted"].keys.signing, federation="fed1"),
    "unsupported version": lambda w: encode_request("upload", class_prompts("fed1"), w["accepted"].keys.signing,
                                                    federation="fed1", version=99),
    "malformed msgpack": lambda w: [b"1", b"\xc1\xc1\xc1", b"", b"\x00" * 64],
    "tampered signature": lambda w: _tamper(_upload_frames(w["accepted"].keys), 3),
    "wrong frame count": lambda w: [b"1", b"x"],
    "class not in federation": lambda w: encode_request("upload", class_prompts("fed1", labels=("cat", "zebra")),
                                                        w["accepted"].keys.signing, federation="fed1"),
    "unknown federation": lambda w: encode_request("upload", class_prompts("nope"), w["accepted"].keys.signing,
                                                   federation="nope"),
    "invalid payload": lambda w: encode_request("upload", b"\x93\x01\x02\x03", w["accepted"].keys.signing,
                                                federation="fed1"),
    "stolen frame on another connection": lambda w: _upload_frames(w["accepted"].keys),
}
#: the connection's CURVE keys of each case: the sender's own, except where a frame is replayed by someone else
CONNECTION = {"pending key": "pending", "revoked key": "revoked", "unknown key": "stranger",
              "stolen frame on another connection": "stranger"}
EXPECTED = {
    "unknown key": "UNKNOWN_KEY", "pending key": "KEY_PENDING", "revoked key": "KEY_REVOKED",
    "tampered body": "BAD_SIGNATURE", "tampered header": "BAD_SIGNATURE", "expired timestamp": "TIMESTAMP_OUT_OF_WINDOW",
    "oversize frame": "FRAME_TOO_LARGE", "unsupported version": "VERSION_UNSUPPORTED",
    "malformed msgpack": "MALFORMED_HEADER", "tampered signature": "BAD_SIGNATURE",
    "wrong frame count": "MALFORMED_FRAMES", "class not in federation": "CLASS_NOT_IN_FEDERATION",
    "unknown federation": "UNKNOWN_FEDERATION", "invalid payload": "INVALID_PAYLOAD",
    "stolen frame on another connection": "CURVE_KEY_MISMATCH",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_requests_get_their_code_and_store_nothing(server, world, case):
    frames = CASES[case](world)
    before = server.payload_count()
    who = world[CONNECTION.get(case, "accepted")]
    reply = raw_request(server, frames, who if isinstance(who, KeyPair) else who.keys)
    assert not reply.ok
    assert reply.code == EXPECTED[case], reply.message
    assert reply.message  # says what was expected and what was found
    assert server.payload_count() == before


def test_replayed_message_is_refused_and_stores_nothing(server, world):
    frames, before = _replayed(world, server)
    reply = raw_request(server, frames, world["accepted"].keys)
    assert (reply.ok, reply.code) == (False, "REPLAYED_MESSAGE")
    assert server.payload_count() == before


def test_replay_history_survives_a_restart(server, world):
    frames, before = _replayed(world, server)
    server.stop(signal.SIGKILL)
    server.start()
    reply = raw_request(server, frames, world["accepted"].keys)
    assert reply.code == "REPLAYED_MESSAGE"
    assert server.payload_count() == before


def test_a_refused_frame_replayed_after_the_state_changed_and_a_restart_is_refused(server, world):
    """Row 4: ids of refused (but authentic) requests are remembered too, across restarts."""
    keys = world["accepted"].keys
    frames = encode_request("upload", class_prompts("later"), keys.signing, federation="later")
    assert raw_request(server, frames, keys).code == "UNKNOWN_FEDERATION"
    create_fed(server, "later")
    server.stop(signal.SIGKILL)
    server.start()
    reply = raw_request(server, frames, keys)
    assert reply.code == "REPLAYED_MESSAGE", reply.message
    assert server.payload_count() == 0


def test_wrong_server_key_fails_fast_at_the_site(server, tmp_path):
    other = KeyPair.generate()
    site = make_site(server, tmp_path, "lost", accept=False,
                     server_key=encode_server_key(other.curve_public, other.public))
    t = time.monotonic()
    with pytest.raises(E.HandshakeFailed):
        site.enroll()
    assert time.monotonic() - t < 4.0
    site.close()
    assert server.store().clients() == []


def test_server_down_is_reported_as_unreachable(tmp_path):
    from e2e_support import Server

    srv = Server(tmp_path / "down")  # initialised, never started
    site = make_site(srv, tmp_path, "early", accept=False, timeout=0.3)
    with pytest.raises(E.ServerUnreachable):
        site.enroll()
    site.close()


def test_metrics_count_what_the_daemon_did(server, site_factory):
    create_fed(server)
    site_factory("metered").upload(class_prompts("fed1"), "fed1", "class_prompts")
    server.stop(signal.SIGTERM)  # the last heartbeat writes the final counters
    text = server.osfl("metrics").output
    assert "osfl_payloads_stored_total 1" in text
    assert 'osfl_sites{state="accepted"} 1' in text
    assert 'osfl_federation_sites_uploaded{federation="fed1",state="open"} 1' in text
    prom = (server.cfg.state_dir / "metrics.prom").read_text().splitlines()
    assert "osfl_up 0" in prom  # written by the last heartbeat, as the daemon stopped
    assert any(line.startswith("osfl_requests_total ") and int(line.split()[1]) >= 2 for line in prom)
