"""The envelope: every rejection raises its own error class, in SPEC.md's order; good requests pass."""
from __future__ import annotations

import hashlib

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import envelope as env
from protocol import errors as E
from protocol.constants import (
    KINDS, MAX_BODY_BYTES, MAX_HEADER_BYTES, PROTOCOL_VERSION, REPLAY_WINDOW_S, SIGNATURE_BYTES,
)
from protocol.keys import fingerprint, public_bytes

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(33, 65)))
PUB, OTHER_PUB = public_bytes(KEY), public_bytes(OTHER)
FP, OTHER_FP = fingerprint(PUB), fingerprint(OTHER_PUB)
NOW = 1_767_225_600_000
WINDOW_MS = REPLAY_WINDOW_S * 1000
MSG_ID = bytes(range(100, 116))
BODY = msgpack.packb({}, use_bin_type=True)
DROP = object()  # header_map(field=DROP) removes the field


def lookup(h: env.Header) -> bytes:
    """The server's admission in miniature: KEY is accepted, OTHER is pending, the rest unknown."""
    if h.fingerprint == FP:
        return PUB
    if h.fingerprint == OTHER_FP:
        raise E.KeyPending(f"key {h.fingerprint} awaits the operator")
    raise E.UnknownKey(f"no key {h.fingerprint}")


def header_map(body: bytes = BODY, **fields) -> dict:
    m = {"v": PROTOCOL_VERSION, "id": MSG_ID, "k": "status", "fp": FP, "fed": None, "ts": NOW,
         "sha": hashlib.sha256(body).digest(), "len": len(body)}
    for name, value in fields.items():
        if value is DROP:
            m.pop(name, None)
        else:
            m[name] = value
    return m


def signed(header, body: bytes = BODY, key: Ed25519PrivateKey = KEY, version: bytes = b"1") -> list[bytes]:
    """Frames signed as SPEC.md says, whatever the header holds (a map, or raw header bytes)."""
    hb = header if isinstance(header, bytes) else msgpack.packb(header, use_bin_type=True)
    return [version, hb, body, key.sign(env.signed_bytes(version, hb, body))]


def good(kind: str = "status", body: bytes = BODY, **kw) -> list[bytes]:
    kw.setdefault("msg_id", MSG_ID)
    kw.setdefault("created_ms", NOW)
    return env.encode_request(kind, body, KEY, **kw)


def replace(frames: list[bytes], i: int, value: bytes) -> list[bytes]:
    out = list(frames)
    out[i] = value
    return out


def flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def tamper_msg_id(frames: list[bytes]) -> list[bytes]:
    at = frames[1].index(MSG_ID)
    return replace(frames, 1, flip(frames[1], at + 3))


# ---- rejections -----------------------------------------------------------------------------------

REJECTED = [
    # (id, frames, expected class, open_request keywords)
    ("no frames", lambda: [], E.MalformedFrames, {}),
    ("three frames", lambda: good()[:3], E.MalformedFrames, {}),
    ("five frames", lambda: good() + [b""], E.MalformedFrames, {}),
    ("version not digits", lambda: replace(good(), 0, b"v1"), E.MalformedFrames, {}),
    ("version empty", lambda: replace(good(), 0, b""), E.MalformedFrames, {}),
    ("version with space", lambda: replace(good(), 0, b" 1"), E.MalformedFrames, {}),
    ("version negative", lambda: replace(good(), 0, b"-1"), E.MalformedFrames, {}),
    ("version non-ascii digit", lambda: replace(good(), 0, "\u0661".encode()), E.MalformedFrames, {}),
    ("version frame too long", lambda: replace(good(), 0, b"000000001"), E.MalformedFrames, {}),
    ("version 0", lambda: signed(header_map(v=0), version=b"0"), E.VersionUnsupported, {}),
    ("version 99", lambda: signed(header_map(v=99), version=b"99"), E.VersionUnsupported, {}),
    ("header too large", lambda: signed(header_map(pad=b"x" * MAX_HEADER_BYTES)), E.FrameTooLarge, {}),
    ("body too large", lambda: good(body=bytes(MAX_BODY_BYTES + 1)), E.FrameTooLarge, {}),
    ("signature short", lambda: replace(good(), 3, good()[3][:-1]), E.BadSignature, {}),
    ("signature long", lambda: replace(good(), 3, good()[3] + b"\0"), E.BadSignature, {}),
    ("signature empty", lambda: replace(good(), 3, b""), E.BadSignature, {}),
    ("signature zeros", lambda: replace(good(), 3, bytes(SIGNATURE_BYTES)), E.BadSignature, {}),
    ("tampered body byte", lambda: replace(good(body=b"\x81\xa1a\x01"), 2, b"\x81\xa1a\x02"), E.BadSignature, {}),
    ("tampered header byte", lambda: tamper_msg_id(good()), E.BadSignature, {}),
    ("tampered signature byte", lambda: replace(good(), 3, flip(good()[3], 10)), E.BadSignature, {}),
    ("version frame respelled", lambda: replace(good(), 0, b"01"), E.BadSignature, {}),
    ("signed by another key", lambda: signed(header_map(), key=OTHER), E.BadSignature, {}),
    ("body length mismatch", lambda: signed(header_map(len=len(BODY) + 1)), E.BodyDigestMismatch, {}),
    ("body digest mismatch", lambda: signed(header_map(sha=hashlib.sha256(b"x").digest())),
     E.BodyDigestMismatch, {}),
    ("expired", lambda: good(), E.TimestampOutOfWindow, {"now": NOW + WINDOW_MS + 1}),
    ("future", lambda: good(), E.TimestampOutOfWindow, {"now": NOW - WINDOW_MS - 1}),
    ("unknown kind", lambda: signed(header_map(k="delete")), E.UnknownKind, {}),
    ("empty kind", lambda: signed(header_map(k="")), E.UnknownKind, {}),
    ("enroll without pk", lambda: signed(header_map(k="enroll")), E.MalformedHeader, {}),
    ("enroll pk not matching fp", lambda: signed(header_map(k="enroll", pk=OTHER_PUB), key=OTHER),
     E.MalformedHeader, {}),
    ("enroll signed by another key", lambda: signed(header_map(k="enroll", pk=PUB), key=OTHER),
     E.BadSignature, {}),
    ("unknown key", lambda: signed(header_map(fp="0" * 32)), E.UnknownKey, {}),
    ("pending key", lambda: signed(header_map(fp=OTHER_FP), key=OTHER), E.KeyPending, {}),
    ("header not msgpack", lambda: signed(b"\xc1"), E.MalformedHeader, {}),
    ("header empty", lambda: signed(b""), E.MalformedHeader, {}),
    ("header truncated", lambda: signed(good()[1][:-5]), E.MalformedHeader, {}),
    ("header trailing bytes", lambda: signed(good()[1] + b"\x00"), E.MalformedHeader, {}),
    ("header is a list", lambda: signed(msgpack.packb([1, "status"])), E.MalformedHeader, {}),
    ("header is nil", lambda: signed(msgpack.packb(None)), E.MalformedHeader, {}),
    ("header has int keys", lambda: signed(msgpack.packb({1: 2})), E.MalformedHeader, {}),
    ("header has 33 keys", lambda: signed(header_map(**{f"x{i}": i for i in range(25)})), E.MalformedHeader, {}),
    ("header v differs from frame 0", lambda: signed(header_map(v=2), version=b"1"), E.MalformedHeader, {}),
]

MISSING = ["v", "id", "k", "fp", "ts", "sha", "len"]

WRONG_TYPES = [
    ("v", "1"), ("v", True), ("v", 1.0), ("v", None),
    ("id", "0123456789abcdef"), ("id", bytes(15)), ("id", bytes(17)), ("id", None),
    ("k", 1), ("k", b"status"), ("k", None),
    ("fp", FP.encode()), ("fp", FP[:-1]), ("fp", FP + "0"), ("fp", None),
    ("fed", 7), ("fed", b"derm"), ("fed", ""), ("fed", "f" * 65),
    ("ts", float(NOW)), ("ts", str(NOW)), ("ts", True),
    ("sha", hashlib.sha256(BODY).hexdigest()), ("sha", bytes(31)),
    ("len", "1"), ("len", 1.0), ("len", False),
    ("pk", PUB[:31]), ("pk", PUB.hex()), ("pk", 0),
]


def _expect(frames, cls, **kw):
    guard = env.ReplayGuard()
    with pytest.raises(E.ProtocolError) as info:
        env.open_request(frames, lookup, guard, **({"now": NOW} | kw))
    err = info.value
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert (err.code, err.number) == (cls.code, cls.number)
    assert err.message and str(err).startswith(cls.code + ": ")
    assert len(guard) == 0, "a rejected message id must not be remembered"
    return err


@pytest.mark.parametrize("make, cls, kw", [pytest.param(*c[1:], id=c[0]) for c in REJECTED])
def test_rejected(make, cls, kw):
    _expect(make(), cls, **kw)


@pytest.mark.parametrize("field", MISSING)
def test_header_missing_field(field):
    err = _expect(signed(header_map(**{field: DROP})), E.MalformedHeader)
    assert repr(field) in err.message


@pytest.mark.parametrize("field, value", WRONG_TYPES, ids=[f"{f}={v!r}"[:40] for f, v in WRONG_TYPES])
def test_header_wrong_type(field, value):
    err = _expect(signed(header_map(**{field: value})), E.MalformedHeader)
    assert repr(field) in err.message


def test_replayed_message_id():
    guard = env.ReplayGuard()
    env.open_request(good(), lookup, guard, now=NOW)
    with pytest.raises(E.ReplayedMessage) as info:
        env.open_request(good(), lookup, guard, now=NOW + 1000)
    assert info.value.code == "REPLAYED_MESSAGE" and MSG_ID.hex() in info.value.message
    # the same id with other content, freshly signed, is a replay too
    with pytest.raises(E.ReplayedMessage):
        env.open_request(good("ping", created_ms=NOW + 5), lookup, guard, now=NOW + 5)


# ---- order of the checks (SPEC.md, "Checks on a request") ------------------------------------------

def test_signature_is_checked_before_timestamp():
    frames = replace(good(body=b"\x81\xa1a\x01"), 2, b"\x81\xa1a\x02")
    _expect(frames, E.BadSignature, now=NOW + 10 * WINDOW_MS)


def test_size_is_checked_before_signature_and_header():
    frames = [b"1", b"\xc1" * (MAX_HEADER_BYTES + 1), b"", b"short"]
    _expect(frames, E.FrameTooLarge)


def test_version_is_checked_before_everything_else():
    _expect([b"2", b"\xc1", bytes(MAX_BODY_BYTES + 1), b""], E.VersionUnsupported)


def test_admission_comes_before_signature():
    # a pending key gets KEY_PENDING even with a broken signature: the key decides first
    frames = replace(signed(header_map(fp=OTHER_FP), key=OTHER), 3, bytes(SIGNATURE_BYTES))
    _expect(frames, E.KeyPending)


def test_kind_is_checked_before_key_lookup_and_enroll_needs_none():
    calls = []

    def spy(h):
        calls.append(h)
        return lookup(h)

    with pytest.raises(E.UnknownKind):
        env.open_request(signed(header_map(k="nope")), spy, None, now=NOW)
    env.open_request(good("enroll", include_public_key=True), spy, None, now=NOW)
    assert calls == []
    env.open_request(good("ping"), spy, None, now=NOW)
    assert len(calls) == 1


def test_expired_or_forged_ids_are_not_remembered():
    guard = env.ReplayGuard()
    with pytest.raises(E.TimestampOutOfWindow):
        env.open_request(good(), lookup, guard, now=NOW + WINDOW_MS + 1)
    with pytest.raises(E.BadSignature):
        env.open_request(signed(header_map(), key=OTHER), lookup, guard, now=NOW)
    assert MSG_ID not in guard
    env.open_request(good(), lookup, guard, now=NOW)  # the genuine message still goes through
    assert MSG_ID in guard


# ---- acceptance -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_accepted(kind):
    fed = "derm-2026" if kind.startswith("upload") or kind == "federation" else None
    frames = good(kind, federation=fed, include_public_key=(kind == "enroll"))
    guard = env.ReplayGuard()
    req = env.open_request(frames, lookup, guard, now=NOW)
    h = req.header
    assert (h.kind, h.federation, h.msg_id, h.created_ms, h.fingerprint) == (kind, fed, MSG_ID, NOW, FP)
    assert h.public_key == (PUB if kind == "enroll" else None)
    assert req.body == BODY and env.unpack_body(req.body) == {}
    assert MSG_ID in guard


@pytest.mark.parametrize("make, kw", [
    pytest.param(lambda: good(body=b""), {}, id="empty body"),
    pytest.param(lambda: good(body=bytes(MAX_BODY_BYTES)), {}, id="body at limit"),
    pytest.param(lambda: good(federation="f" * 64), {}, id="fed 64 chars"),
    pytest.param(lambda: signed(header_map(fed=DROP)), {}, id="fed absent"),
    pytest.param(lambda: signed(header_map(extra="ignored")), {}, id="unknown header key"),
    pytest.param(lambda: signed(header_map(pk=PUB)), {}, id="pk on a non-enroll kind"),
    pytest.param(lambda: good(), {"now": NOW + WINDOW_MS}, id="window edge old"),
    pytest.param(lambda: good(), {"now": NOW - WINDOW_MS}, id="window edge future"),
    pytest.param(lambda: good(), {"now": NOW}, id="no guard"),
])
def test_accepted(make, kw):
    frames = make()
    req = env.open_request(frames, lookup, None, **({"now": NOW} | kw))
    assert req.body == frames[2] and req.signature == frames[3]
    assert req.header.body_len == len(frames[2])


def test_accepts_any_frame_like_object():
    frames = [bytearray(f) for f in good()]
    assert env.open_request(frames, lookup, None, now=NOW).header.kind == "status"


def test_distinct_ids_pass_one_guard():
    guard = env.ReplayGuard()
    for i in range(5):
        env.open_request(good(msg_id=bytes([i]) * 16), lookup, guard, now=NOW)
    assert len(guard) == 5


def test_replay_guard_forgets_ids_two_windows_old():
    guard = env.ReplayGuard(window_s=1)
    guard.add(b"a" * 16, NOW, now=NOW)
    guard.add(b"b" * 16, NOW + 12_000, now=NOW + 12_000)
    assert b"a" * 16 not in guard and b"b" * 16 in guard


def test_encode_request_defaults_are_fresh():
    a = env.encode_request("ping", BODY, KEY)
    b = env.encode_request("ping", BODY, KEY)
    ha, hb = (env.parse_request(f).header for f in (a, b))
    assert ha.msg_id != hb.msg_id and len(ha.msg_id) == 16
    assert abs(ha.created_ms - env.now_ms()) < 60_000
    env.open_request(a, lookup, None)  # now = the real clock


# ---- Limits ---------------------------------------------------------------------------------------

def _versioned(v: int) -> list[bytes]:
    return signed(header_map(v=v), version=str(v).encode())


def test_limits_custom_version_range():
    limits = env.Limits(min_version=1, max_version=3)
    for v in (1, 2, 3):
        assert env.open_request(_versioned(v), lookup, None, limits=limits, now=NOW).header.version == v
    for v in (0, 4):
        with pytest.raises(E.VersionUnsupported):
            env.open_request(_versioned(v), lookup, None, limits=limits, now=NOW)


def test_limits_minimum_version_stops_downgrade():
    limits = env.Limits(min_version=2, max_version=2)
    with pytest.raises(E.VersionUnsupported) as info:
        env.open_request(good(), lookup, None, limits=limits, now=NOW)
    assert "2 to 2" in info.value.message and "uses 1" in info.value.message
    assert env.open_request(_versioned(2), lookup, None, limits=limits, now=NOW)


def test_limits_custom_sizes_and_window():
    frames = good(body=bytes(10))
    hlen = len(frames[1])
    env.open_request(frames, lookup, None, limits=env.Limits(max_header=hlen, max_body=10), now=NOW)
    for limits in (env.Limits(max_header=hlen - 1), env.Limits(max_body=9)):
        with pytest.raises(E.FrameTooLarge):
            env.open_request(frames, lookup, None, limits=limits, now=NOW)
    env.open_request(frames, lookup, None, limits=env.Limits(window_s=1), now=NOW + 1000)
    with pytest.raises(E.TimestampOutOfWindow):
        env.open_request(frames, lookup, None, limits=env.Limits(window_s=1), now=NOW + 1001)


# ---- bodies ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"\xc1", b"", msgpack.packb([1]), msgpack.packb({1: 2}), msgpack.packb("x")])
def test_unpack_body_rejects(body):
    with pytest.raises(E.MalformedBody):
        env.unpack_body(body)


def test_unpack_body_map():
    assert env.unpack_body(env.pack({"upload_id": "u", "data": b"\x00"})) == {"upload_id": "u", "data": b"\x00"}


# ---- replies --------------------------------------------------------------------------------------

def test_reply_ok_round_trip():
    frames = env.encode_reply(MSG_ID, data={"offset": 42, "sha256": b"\x01" * 32})
    assert frames[0] == str(PROTOCOL_VERSION).encode() and len(frames) == 2
    reply = env.decode_reply(frames)
    assert (reply.ok, reply.code, reply.message, reply.re) == (True, "OK", "", MSG_ID)
    assert reply.data == {"offset": 42, "sha256": b"\x01" * 32}
    assert reply.raise_for_error() is reply
    assert env.decode_reply(env.encode_reply(MSG_ID)).data == {}


@pytest.mark.parametrize("code", sorted(E.ERRORS))
def test_reply_error_maps_back_to_its_class(code):
    cls = E.ERRORS[code]
    reply = env.decode_reply(env.encode_reply(MSG_ID, error=cls("expected x, found y")))
    assert (reply.ok, reply.code, reply.message, reply.re) == (False, code, "expected x, found y", MSG_ID)
    with pytest.raises(cls) as info:
        reply.raise_for_error()
    assert type(info.value) is cls and info.value.message == "expected x, found y"
    assert info.value.number == cls.number


def test_reply_error_default_message_is_summary():
    reply = env.decode_reply(env.encode_reply(b"", error=E.ServerDraining()))
    assert reply.message == E.ServerDraining.summary


def test_reply_unknown_code_is_plain_protocol_error():
    m = {"ok": False, "code": "FROM_THE_FUTURE", "msg": "newer server", "re": MSG_ID, "data": {}}
    reply = env.decode_reply([b"1", msgpack.packb(m, use_bin_type=True)])
    with pytest.raises(E.ProtocolError) as info:
        reply.raise_for_error()
    assert type(info.value) is E.ProtocolError
    assert info.value.code == "FROM_THE_FUTURE" and info.value.message == "newer server"


def _reply_map(**fields) -> bytes:
    m = {"ok": True, "code": "OK", "msg": "", "re": MSG_ID, "data": {}}
    for k, v in fields.items():
        if v is DROP:
            m.pop(k)
        else:
            m[k] = v
    return msgpack.packb(m, use_bin_type=True)


@pytest.mark.parametrize("frames, cls", [
    pytest.param([b"1"], E.MalformedFrames, id="one frame"),
    pytest.param([b"1", _reply_map(), b""], E.MalformedFrames, id="three frames"),
    pytest.param([b"x", _reply_map()], E.MalformedFrames, id="version not digits"),
    pytest.param([b"99", _reply_map()], E.VersionUnsupported, id="version 99"),
    pytest.param([b"0", _reply_map()], E.VersionUnsupported, id="version 0"),
    pytest.param([b"1", b"\xc1"], E.MalformedBody, id="not msgpack"),
    pytest.param([b"1", msgpack.packb([1, 2])], E.MalformedBody, id="a list"),
    *[pytest.param([b"1", _reply_map(**{k: DROP})], E.MalformedBody, id=f"no {k}")
      for k in ("ok", "code", "msg", "re")],
    pytest.param([b"1", _reply_map(re=2 ** 62)], E.MalformedBody, id="re huge int"),
    pytest.param([b"1", _reply_map(re=5)], E.MalformedBody, id="re int"),
    pytest.param([b"1", _reply_map(re="abc")], E.MalformedBody, id="re str"),
    pytest.param([b"1", _reply_map(re=[1, 2])], E.MalformedBody, id="re list"),
    pytest.param([b"1", _reply_map(data=[[1, 2]])], E.MalformedBody, id="data list"),
    pytest.param([b"1", _reply_map(data="ab")], E.MalformedBody, id="data str"),
])
def test_decode_reply_rejects(frames, cls):
    with pytest.raises(E.ProtocolError) as info:
        env.decode_reply(frames)
    assert type(info.value) is cls


def test_decode_reply_limits():
    frames = env.encode_reply(MSG_ID)
    with pytest.raises(E.VersionUnsupported):
        env.decode_reply(frames, env.Limits(min_version=2, max_version=3))
    assert env.decode_reply(frames, env.Limits(min_version=1, max_version=3)).ok
