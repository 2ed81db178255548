"""Request handlers, called without a socket: admission, uploads, idempotency and the (site, kind) key."""
from __future__ import annotations

import hashlib

import msgpack

from protocol.keys import KeyPair
from protocol.methods import method
from server_daemon.jobs.synthesis import accepted_payloads
from server_daemon.methods import plan_from_payloads

from ingest_support import CLASSES


def _raw(kind: str, fed: str = "fed1") -> bytes:
    return msgpack.packb(method(kind).example(fed, CLASSES), use_bin_type=True)


def test_enroll_then_pending_then_accepted(ingest):
    ingest.federation()
    key = ingest.site("clinic", accept=False)
    assert ingest.upload(key, _raw("class_prompts")).code == "KEY_PENDING"
    status = ingest.call("status", key)
    assert status.ok and status.data["state"] == "pending" and status.data["federations"] == {}
    ingest.store.transition(key.fingerprint, "accept")
    assert ingest.upload(key, _raw("class_prompts")).ok
    status = ingest.call("status", key).data
    assert status["state"] == "accepted" and status["federations"]["fed1"]["received"] == 1
    assert [u["kind"] for u in status["uploads"]] == ["class_prompts"]


def test_unknown_key_and_bad_site_ids(ingest):
    stranger = KeyPair.generate()
    assert ingest.call("status", stranger).code == "UNKNOWN_KEY"
    for site in ("hospital-a\n", "", "-lead", "a" * 65, "has space"):
        r = ingest.call("enroll", stranger, {"site": site, "curve": stranger.curve_public.decode()},
                        include_public_key=True)
        assert r.code == "MALFORMED_BODY", site
    assert ingest.store.clients() == []


def test_known_site_with_a_new_key_is_refused_and_audited(ingest):
    ingest.site("clinic")
    other = KeyPair.generate()
    r = ingest.call("enroll", other, {"site": "clinic", "curve": other.curve_public.decode()}, include_public_key=True)
    assert r.code == "KEY_CONFLICT"
    assert any(a["action"] == "enroll-refused-key-conflict" for a in ingest.store.audit_log())


def test_upload_is_idempotent_and_a_different_payload_conflicts(ingest):
    ingest.federation()
    key = ingest.site()
    first = ingest.upload(key, _raw("class_prompts"))
    again = ingest.upload(key, _raw("class_prompts"))
    assert first.ok and again.ok and again.data["duplicate"] and again.data["payload_id"] == first.data["payload_id"]
    changed = method("class_prompts").example("fed1", CLASSES)
    changed["data"]["domain"] = "x-rays"
    r = ingest.upload(key, msgpack.packb(changed, use_bin_type=True))
    assert r.code == "PAYLOAD_CONFLICT"
    # the chunked path finds the stored one: the announced digest is the duplicate's
    assert ingest.upload_chunked(key, _raw("class_prompts"), "class_prompts").data["duplicate"]


def test_unknown_or_closed_federation(ingest):
    key = ingest.site()
    assert ingest.upload(key, _raw("class_prompts"), federation="nope").code == "UNKNOWN_FEDERATION"
    ingest.federation()
    ingest.store.set_federation_state("fed1", "closed")
    assert ingest.upload(key, _raw("class_prompts")).code == "FEDERATION_CLOSED"


def test_chunks_out_of_order_and_commit_before_the_end(ingest):
    ingest.federation()
    key = ingest.site()
    raw = _raw("captions")
    sha = hashlib.sha256(raw).digest()
    r = ingest.call("upload_begin", key, {"kind": "captions", "size": len(raw), "sha256": sha, "chunk_size": 4096},
                    federation="fed1")
    uid = r.data["upload_id"]
    assert ingest.call("upload_chunk", key, {"upload_id": uid, "offset": 5, "data": raw[5:]},
                       federation="fed1").code == "CHUNK_OUT_OF_ORDER"
    assert ingest.call("upload_commit", key, {"upload_id": uid}, federation="fed1").code == "CHUNK_OUT_OF_ORDER"
    stranger = ingest.site("other-site")
    assert ingest.call("upload_commit", stranger, {"upload_id": uid}, federation="fed1").code == "UPLOAD_NOT_FOUND"


def test_commit_under_another_federation_is_refused(ingest):
    ingest.federation("fed1")
    ingest.federation("fed2")
    key = ingest.site()
    r = ingest.upload_chunked(key, _raw("class_prompts"), "class_prompts", federation="fed1", commit_federation="fed2")
    assert r.code == "INVALID_PAYLOAD" and "begun for federation 'fed1'" in r.message
    assert ingest.store.payloads() == []


def test_chunked_payload_of_another_kind_than_begun_is_refused(ingest):
    ingest.federation()
    key = ingest.site()
    r = ingest.upload_chunked(key, _raw("captions"), "class_prompts")
    assert r.code == "INVALID_PAYLOAD" and "begun as class_prompts" in r.message
    assert ingest.store.payloads() == []


def test_digest_mismatch_is_reported_as_such(ingest):
    ingest.federation()
    key = ingest.site()
    raw = _raw("class_prompts")
    r = ingest.call("upload_begin", key, {"kind": "class_prompts", "size": len(raw),
                                          "sha256": hashlib.sha256(b"other").digest(), "chunk_size": 4096},
                    federation="fed1")
    uid = r.data["upload_id"]
    assert ingest.call("upload_chunk", key, {"upload_id": uid, "offset": 0, "data": raw}, federation="fed1").ok
    assert ingest.call("upload_commit", key, {"upload_id": uid}, federation="fed1").code == "PAYLOAD_DIGEST_MISMATCH"


def test_a_site_uploading_two_kinds_keeps_both_in_the_plan(ingest):
    """Payloads are keyed by (site, kind): neither of one site's two payloads is lost on the way to a job."""
    fed = ingest.federation(quorum=1)
    key = ingest.site("clinic")
    a = ingest.upload(key, _raw("class_prompts"))
    b = ingest.upload_chunked(key, _raw("captions"), "captions")
    assert a.ok and b.ok
    accepted = accepted_payloads(ingest.store, "fed1")
    assert sorted((x.site, x.kind) for x in accepted) == [("clinic", "captions"), ("clinic", "class_prompts")]
    plan = plan_from_payloads("fed1", accepted, labels=list(fed.classes), images_per_class=8)
    assert {s.payload for s in plan.images} == {a.data["payload_id"], b.data["payload_id"]}
    assert {s.method for s in plan.images} == {"class_prompts", "captions"}
    assert ingest.store.count_sites("fed1") == 1  # the quorum counts sites, not payloads


def test_replayed_request_is_refused(ingest):
    from protocol.envelope import decode_reply, encode_request

    ingest.federation()
    key = ingest.site()
    frames = encode_request("upload", _raw("class_prompts"), key.signing, federation="fed1")
    replies = []
    for _ in range(2):
        ingest.handlers.refresh(force=True)
        remember: list = []
        with ingest.store.transaction():
            replies.append(decode_reply(ingest.handlers.handle(frames, remember)))
            ingest.store.remember(remember)
    assert replies[0].ok and replies[1].code == "REPLAYED_MESSAGE"


def test_a_damaged_payload_is_repaired_by_its_sites_re_upload(ingest):
    """Row 11: a re-upload of a damaged payload repairs it instead of answering "duplicate" over the damage."""
    ingest.federation()
    key = ingest.site()
    inline_raw, blob_raw = _raw("class_prompts"), _raw("captions")
    a = ingest.upload(key, inline_raw)
    b = ingest.upload_chunked(key, blob_raw, "captions")
    store = ingest.store
    with store.transaction():
        store.db.execute("UPDATE payloads SET inline=? WHERE id=?", (inline_raw[:-1] + b"\x00", a.data["payload_id"]))
    (blob,) = [p for p in store.payloads("fed1") if p.kind == "captions"]
    damaged = bytearray((store.state_dir / blob.path).read_bytes())
    damaged[10] ^= 0x01
    (store.state_dir / blob.path).write_bytes(bytes(damaged))
    assert store.payload_damage(a.data["payload_id"]) and store.payload_damage(b.data["payload_id"])

    again = ingest.upload(key, inline_raw)
    assert again.ok and again.data["duplicate"] and again.data["payload_id"] == a.data["payload_id"]
    again = ingest.upload_chunked(key, blob_raw, "captions")
    assert again.ok and again.data["payload_id"] == b.data["payload_id"], again.message
    assert store.payload_damage(a.data["payload_id"]) is None and store.payload_damage(b.data["payload_id"]) is None
    assert store.payload_bytes(a.data["payload_id"]) == inline_raw
    assert store.payload_bytes(b.data["payload_id"]) == blob_raw
