"""Property tests: hostile bytes only ever raise the protocol's own errors, and no altered message passes."""
from __future__ import annotations

import hashlib

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import envelope as env
from protocol import errors as E
from protocol.keys import fingerprint, public_bytes
from protocol.payloads import decode_payload, encode_payload

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
PUB = public_bytes(KEY)
FP = fingerprint(PUB)
NOW = 1_767_225_600_000

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lookup(h: env.Header) -> bytes:
    if h.fingerprint != FP:
        raise E.UnknownKey(f"no key {h.fingerprint}")
    return PUB


PAYLOAD = encode_payload({"osfl_payload": 1, "kind": "class_prompts", "federation": "fed-1",
                          "labels": ["a", "b"], "counts": [3, 4], "params": {}, "bundle": None,
                          "created_ms": NOW, "data": {"domain": None}})
VALID = [
    env.encode_request("upload", PAYLOAD, KEY, federation="fed-1", msg_id=b"\x01" * 16, created_ms=NOW),
    env.encode_request("enroll", env.pack({"site": "s", "curve": "x" * 40, "name": None}), KEY,
                       msg_id=b"\x02" * 16, created_ms=NOW, include_public_key=True),
    env.encode_request("ping", b"", KEY, msg_id=b"\x03" * 16, created_ms=NOW),
]

# msgpack values of every type, nested a little: what a hostile peer can put in a map
# the integers a hostile peer likes best: lengths and counts that would allocate or overflow
edge_ints = st.sampled_from([-1, 2 ** 31, 10 ** 12, 2 ** 63 - 1, 2 ** 64 - 1, -(2 ** 63)])
scalars = st.one_of(st.none(), st.booleans(), edge_ints, st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)


def _open(frames):
    return env.open_request(frames, lookup, env.ReplayGuard(), now=NOW)


# (a) arbitrary frames -------------------------------------------------------------------------------

@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_arbitrary_frames_raise_only_protocol_errors(frames):
    for fn in (_open, env.parse_request):
        try:
            fn(frames)
        except E.ProtocolError:
            pass


def _mostly_valid(valid: dict) -> st.SearchStrategy:
    """Maps whose every key holds a valid value or a hostile one, with up to two keys missing."""
    full = st.fixed_dictionaries({k: st.one_of(st.just(v), scalars, values) for k, v in valid.items()})
    return st.tuples(full, st.sets(st.sampled_from(sorted(valid)), max_size=2)).map(
        lambda t: {k: v for k, v in t[0].items() if k not in t[1]})


header_fields = _mostly_valid({"v": 1, "id": b"\x05" * 16, "k": "status", "fp": FP, "fed": "f", "ts": NOW,
                               "sha": bytes(32), "len": 0, "pk": PUB})


@FUZZ
@given(header_fields, st.binary(max_size=40), st.one_of(st.just(b"1"), st.binary(max_size=9)),
       st.booleans())
def test_hostile_headers_raise_only_protocol_errors(header, body, version, sign):
    hb = msgpack.packb(header, use_bin_type=True)
    sig = KEY.sign(env.signed_bytes(version, hb, body)) if sign else bytes(64)
    try:
        _open([version, hb, body, sig])
    except E.ProtocolError:
        pass


# (b) a valid request, mutated -----------------------------------------------------------------------

def _mutate(frames: list[bytes], data) -> list[bytes]:
    frames = list(frames)
    op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "drop", "dup", "swap"]))
    i = data.draw(st.integers(0, len(frames) - 1))
    f = frames[i]
    if op == "drop":
        del frames[i]
    elif op == "dup":
        frames.insert(i, f)
    elif op == "swap":
        j = data.draw(st.integers(0, len(frames) - 1))
        frames[i], frames[j] = frames[j], frames[i]
    elif op == "truncate":
        frames[i] = f[:data.draw(st.integers(0, len(f)))]
    elif op == "insert":
        at = data.draw(st.integers(0, len(f)))
        frames[i] = f[:at] + data.draw(st.binary(min_size=1, max_size=3)) + f[at:]
    elif f:  # flip, set, delete need a byte to work on
        at = data.draw(st.integers(0, len(f) - 1))
        if op == "flip":
            bit = data.draw(st.integers(0, 7))
            frames[i] = f[:at] + bytes([f[at] ^ (1 << bit)]) + f[at + 1:]
        elif op == "set":
            frames[i] = f[:at] + bytes([data.draw(st.integers(0, 255))]) + f[at + 1:]
        else:
            frames[i] = f[:at] + f[at + 1:]
    return frames


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_mutated_request_is_never_accepted(original, data):
    _open(original)  # the unmutated request is good
    frames = original
    for _ in range(data.draw(st.integers(1, 3))):
        frames = _mutate(frames, data)
    try:
        _open(frames)
    except E.ProtocolError:
        return
    assert frames == original, "an altered request was accepted"


# (c), (d) replies and payloads ----------------------------------------------------------------------

@FUZZ
@given(st.one_of(st.just(b"1"), st.binary(max_size=9)), st.binary(max_size=200))
def test_decode_reply_arbitrary_bytes(version, raw):
    try:
        env.decode_reply([version, raw])
    except E.ProtocolError:
        pass


@FUZZ
@given(_mostly_valid({"ok": False, "code": "KEY_PENDING", "msg": "m", "re": b"\x01" * 16, "data": {}}))
def test_decode_reply_hostile_maps(m):
    try:
        reply = env.decode_reply([b"1", msgpack.packb(m, use_bin_type=True)])
    except E.ProtocolError:
        return
    assert isinstance(reply.re, bytes) and isinstance(reply.data, dict)
    try:
        reply.raise_for_error()
    except E.ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_decode_payload_arbitrary_bytes(raw):
    try:
        decode_payload(raw)
    except E.InvalidPayload:
        pass


payload_maps = _mostly_valid({"osfl_payload": 1, "kind": "class_prompts", "federation": "fed-1",
                              "labels": ["a", "b"], "counts": [1, 0], "params": {}, "bundle": None,
                              "created_ms": NOW, "data": {"domain": "x"}})


@FUZZ
@given(payload_maps)
def test_decode_payload_hostile_maps(m):
    raw = msgpack.packb(m, use_bin_type=True)
    try:
        payload = decode_payload(raw)
    except E.InvalidPayload:
        return
    # whatever passed is a payload both sides can rely on
    assert payload["kind"] == "class_prompts" and payload["osfl_payload"] == 1
    assert len(payload["labels"]) == len(payload["counts"]) == len(set(payload["labels"]))
    assert hashlib.sha256(encode_payload(payload)).digest() == hashlib.sha256(raw).digest()
