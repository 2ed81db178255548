"""Known-answer tests: committed frames that fixed inputs must reproduce byte for byte.

A failure here means the bytes on the wire changed. If that was deliberate, raise the protocol
version and regenerate with ``python tests/protocol/make_golden.py``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import envelope, errors
from protocol.constants import PROTOCOL_VERSION, SIGNATURE_CONTEXT
from protocol.keys import fingerprint, public_bytes
from protocol.payloads import decode_payload

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "golden" / "frames.json").read_text())


def _load_generator():
    # loaded by path: works whatever pytest's import mode and without tests/__init__.py
    spec = importlib.util.spec_from_file_location("osfl_make_golden", HERE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
PUB = bytes.fromhex(GOLDEN["public_key"])
MSG_ID = bytes.fromhex(GOLDEN["msg_id"])
CREATED_MS = GOLDEN["created_ms"]


def _frames(entry: dict) -> list[bytes]:
    return [bytes.fromhex(h) for h in entry["frames"]]


def _lookup(header: envelope.Header) -> bytes:
    if header.fingerprint != fingerprint(PUB):
        raise errors.UnknownKey(f"no key {header.fingerprint}")
    return PUB


def test_golden_file_is_what_the_generator_writes():
    assert GOLDEN["protocol_version"] == PROTOCOL_VERSION
    assert gen.build() == GOLDEN


def test_fixed_key_is_rfc8032_test_1():
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(GOLDEN["private_key"]))
    assert public_bytes(key) == PUB
    # RFC 8032 section 7.1, TEST 1: the signature of the empty message
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b")


@pytest.mark.parametrize("name", sorted(GOLDEN["requests"]))
def test_encode_request_reproduces_golden_frames(name):
    case = gen.requests()[name]
    assert [f.hex() for f in gen.encode(case)] == GOLDEN["requests"][name]["frames"]


@pytest.mark.parametrize("name", sorted(GOLDEN["requests"]))
def test_golden_request_is_accepted(name):
    entry = GOLDEN["requests"][name]
    frames = _frames(entry)
    guard = envelope.ReplayGuard()
    req = envelope.open_request(frames, _lookup, guard, now=CREATED_MS)
    h = req.header
    assert frames[0] == str(PROTOCOL_VERSION).encode()
    assert (h.version, h.msg_id, h.kind, h.created_ms) == (PROTOCOL_VERSION, MSG_ID, entry["kind"], CREATED_MS)
    assert h.federation == entry["federation"]
    assert h.fingerprint == fingerprint(PUB)
    assert h.body_sha256 == hashlib.sha256(frames[2]).digest() and h.body_len == len(frames[2])
    assert h.public_key == (PUB if entry["include_public_key"] else None)
    assert MSG_ID in guard
    # the header's keys in SPEC.md's order
    expected_keys = ["v", "id", "k", "fp", "fed", "ts", "sha", "len"] + (["pk"] if h.public_key else [])
    assert list(msgpack.unpackb(frames[1], raw=False)) == expected_keys


def test_golden_signature_covers_spec_bytes():
    frames = _frames(GOLDEN["requests"]["status"])
    signed = SIGNATURE_CONTEXT + frames[0] + len(frames[1]).to_bytes(4, "big") + frames[1] + frames[2]
    Ed25519PublicKey.from_public_bytes(PUB).verify(frames[3], signed)  # raises if not


def test_golden_upload_body_is_a_valid_payload():
    payload = decode_payload(_frames(GOLDEN["requests"]["upload_class_prompts"])[2])
    assert payload == gen.class_prompts_payload()
    assert payload["data"] == {"domain": "dermoscopy"}


def test_golden_enroll_body():
    req = envelope.open_request(_frames(GOLDEN["requests"]["enroll"]), _lookup, None, now=CREATED_MS)
    body = envelope.unpack_body(req.body)
    assert body == {"site": "site-a", "curve": gen.CURVE_PUBLIC.decode(), "name": "Site A"}


@pytest.mark.parametrize("name", sorted(GOLDEN["replies"]))
def test_encode_reply_reproduces_golden_frames(name):
    assert [f.hex() for f in gen.replies()[name]] == GOLDEN["replies"][name]["frames"]


def test_golden_replies_decode():
    ok = envelope.decode_reply(_frames(GOLDEN["replies"]["reply_upload_ok"]))
    assert (ok.ok, ok.code, ok.message, ok.re) == (True, "OK", "", MSG_ID)
    assert set(ok.data) == {"payload_id", "sha256", "size", "duplicate"}
    assert ok.raise_for_error() is ok

    pending = envelope.decode_reply(_frames(GOLDEN["replies"]["reply_key_pending"]))
    assert (pending.ok, pending.code, pending.re) == (False, "KEY_PENDING", MSG_ID)
    with pytest.raises(errors.KeyPending) as info:
        pending.raise_for_error()
    assert info.value.number == 201


def test_golden_request_is_rejected_later_and_twice():
    frames = _frames(GOLDEN["requests"]["status"])
    with pytest.raises(errors.TimestampOutOfWindow):
        envelope.open_request(frames, _lookup, None)  # the real clock is far from CREATED_MS
    guard = envelope.ReplayGuard()
    envelope.open_request(frames, _lookup, guard, now=CREATED_MS)
    with pytest.raises(errors.ReplayedMessage):
        envelope.open_request(frames, _lookup, guard, now=CREATED_MS + 1)
