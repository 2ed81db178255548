"""The signed envelope: encoding and decoding of requests and replies, with no sockets in sight.

A request is four ZeroMQ frames ``[version, header, body, signature]`` (SPEC.md, "Frames").
The signature is Ed25519 over ``SIGNATURE_CONTEXT | version | u32be(len(header)) | header | body``:
the exact bytes received, so the receiver never re-packs anything before checking it. The body is
not unpacked until the signature and its digest have been checked.

``open_request`` runs every check in the order SPEC.md gives; each failure raises the
``ProtocolError`` subclass whose code the server sends back.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import errors as E
from .constants import (
    DIGEST_BYTES, FINGERPRINT_HEX_CHARS, KINDS, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_VERSION_FRAME,
    MIN_PROTOCOL_VERSION, MSG_ID_BYTES, PROTOCOL_VERSION, PUBLIC_KEY_BYTES, REPLAY_WINDOW_S,
    SIGNATURE_BYTES, SIGNATURE_CONTEXT,
)
from .keys import fingerprint as key_fingerprint
from .keys import public_bytes


@dataclass(frozen=True)
class Header:
    """The signed header of a request (SPEC.md, "Header")."""

    version: int
    msg_id: bytes
    kind: str
    fingerprint: str
    federation: str | None
    created_ms: int
    body_sha256: bytes
    body_len: int
    public_key: bytes | None = None  # only on ``enroll``: the key the request is signed with

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"v": self.version, "id": self.msg_id, "k": self.kind, "fp": self.fingerprint,
                             "fed": self.federation, "ts": self.created_ms, "sha": self.body_sha256,
                             "len": self.body_len}
        if self.public_key is not None:
            m["pk"] = self.public_key
        return m


@dataclass(frozen=True)
class Request:
    """A request whose frames parsed (``parse_request``); ``open_request`` returns one only once its
    signature, key and replay checks have passed."""

    version_frame: bytes
    header_bytes: bytes
    header: Header
    body: bytes
    signature: bytes


@dataclass(frozen=True)
class Limits:
    max_header: int = MAX_HEADER_BYTES
    max_body: int = MAX_BODY_BYTES
    min_version: int = MIN_PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    window_s: float = REPLAY_WINDOW_S


DEFAULT_LIMITS = Limits()


def now_ms() -> int:
    return int(time.time() * 1000)


def signed_bytes(version_frame: bytes, header_bytes: bytes, body: bytes) -> bytes:
    return b"".join((SIGNATURE_CONTEXT, version_frame, len(header_bytes).to_bytes(4, "big"),
                     header_bytes, body))


def encode_request(kind: str, body: bytes, signing_key: Ed25519PrivateKey, *,
                   federation: str | None = None, msg_id: bytes | None = None,
                   created_ms: int | None = None, include_public_key: bool = False,
                   version: int = PROTOCOL_VERSION) -> list[bytes]:
    """Build the four frames of a signed request."""
    pub = public_bytes(signing_key)
    header = Header(
        version=version,
        msg_id=msg_id if msg_id is not None else os.urandom(MSG_ID_BYTES),
        kind=kind,
        fingerprint=key_fingerprint(pub),
        federation=federation,
        created_ms=created_ms if created_ms is not None else now_ms(),
        body_sha256=hashlib.sha256(body).digest(),
        body_len=len(body),
        public_key=pub if include_public_key else None,
    )
    version_frame = str(version).encode()
    header_bytes = msgpack.packb(header.to_map(), use_bin_type=True)
    signature = signing_key.sign(signed_bytes(version_frame, header_bytes, body))
    return [version_frame, header_bytes, body, signature]


def _parse_version(frame: bytes, limits: Limits) -> int:
    if not (0 < len(frame) <= MAX_VERSION_FRAME) or not frame.isdigit():
        raise E.MalformedFrames(f"frame 0 must be the protocol version in ASCII digits; got {len(frame)} bytes "
                                f"that are not")
    version = int(frame)
    if not (limits.min_version <= version <= limits.max_version):
        raise E.VersionUnsupported(f"this peer accepts protocol versions {limits.min_version} to "
                                   f"{limits.max_version}; the request uses {version}. Upgrade osfl")
    return version


def _field(m: dict, name: str, types: type | tuple, *, size: int | None = None, optional: bool = False):
    if name not in m:
        if optional:
            return None
        raise E.MalformedHeader(f"header field {name!r} is missing")
    value = m[name]
    if value is None and optional:
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        raise E.MalformedHeader(f"header field {name!r} must be {types}; got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise E.MalformedHeader(f"header field {name!r} must be {size} long; got {len(value)}")
    return value


def parse_header(header_bytes: bytes, version: int) -> Header:
    try:
        m = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True, use_list=True,
                            max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES,
                            max_array_len=64, max_map_len=32)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise E.MalformedHeader(f"the header is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(m, dict):
        raise E.MalformedHeader(f"the header must be a msgpack map; got {type(m).__name__}")
    header = Header(
        version=_field(m, "v", int),
        msg_id=_field(m, "id", bytes, size=MSG_ID_BYTES),
        kind=_field(m, "k", str),
        fingerprint=_field(m, "fp", str, size=FINGERPRINT_HEX_CHARS),
        federation=_field(m, "fed", str, optional=True),
        created_ms=_field(m, "ts", int),
        body_sha256=_field(m, "sha", bytes, size=DIGEST_BYTES),
        body_len=_field(m, "len", int),
        public_key=_field(m, "pk", bytes, size=PUBLIC_KEY_BYTES, optional=True),
    )
    if header.version != version:
        raise E.MalformedHeader(f"the header says version {header.version} but frame 0 says {version}")
    if header.federation is not None and not (0 < len(header.federation) <= 64):
        raise E.MalformedHeader("header field 'fed' must be 1 to 64 characters")
    return header


def parse_request(frames: list[bytes], limits: Limits = DEFAULT_LIMITS) -> Request:
    """Check frame count, sizes, version and header; nothing here trusts the content yet."""
    if len(frames) != 4:
        raise E.MalformedFrames(f"a request is 4 frames (version, header, body, signature); got {len(frames)}")
    version_frame, header_bytes, body, signature = (bytes(f) for f in frames)
    version = _parse_version(version_frame, limits)
    if len(header_bytes) > limits.max_header:
        raise E.FrameTooLarge(f"the header may be at most {limits.max_header} bytes; got {len(header_bytes)}")
    if len(body) > limits.max_body:
        raise E.FrameTooLarge(f"a body may be at most {limits.max_body} bytes; got {len(body)}. "
                              f"Larger payloads go in chunks")
    if len(signature) != SIGNATURE_BYTES:
        raise E.BadSignature(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes; got {len(signature)}")
    header = parse_header(header_bytes, version)
    if header.body_len != len(body):
        raise E.BodyDigestMismatch(f"the header announces a {header.body_len}-byte body; got {len(body)} bytes")
    return Request(version_frame, header_bytes, header, body, signature)


def verify_request(req: Request, public_key: bytes) -> None:
    """Check the signature, then the body digest. Raises BadSignature or BodyDigestMismatch."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            req.signature, signed_bytes(req.version_frame, req.header_bytes, req.body))
    except InvalidSignature:
        raise E.BadSignature("the signature does not match the header and body: the message was altered "
                             "or signed with another key") from None
    # compare_digest: the digest is public, but keeping every comparison constant-time is a habit
    if not hmac.compare_digest(hashlib.sha256(req.body).digest(), req.header.body_sha256):
        raise E.BodyDigestMismatch("the body's sha256 differs from the header's 'sha'")


def check_fresh(header: Header, now: int | None = None, window_s: float = REPLAY_WINDOW_S) -> None:
    now = now_ms() if now is None else now
    skew = (header.created_ms - now) / 1000.0
    if abs(skew) > window_s:
        direction = "in the future" if skew > 0 else "old"
        raise E.TimestampOutOfWindow(f"the message is {abs(skew):.0f} s {direction}; the window is "
                                     f"{window_s:.0f} s. Check the site's clock (NTP)")


class ReplayGuard:
    """Message ids seen within the freshness window. Older ids need no memory: check_fresh rejects them."""

    def __init__(self, window_s: float = REPLAY_WINDOW_S):
        self.window_ms = int(window_s * 1000)
        self._seen: dict[bytes, int] = {}
        self._next_prune = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._seen

    def check(self, header: Header) -> None:
        if header.msg_id in self._seen:
            raise E.ReplayedMessage(f"message id {header.msg_id.hex()} was already received")

    def add(self, msg_id: bytes, created_ms: int, now: int | None = None) -> None:
        self._seen[msg_id] = created_ms
        now = now_ms() if now is None else now
        if now >= self._next_prune:
            # an id may go once no fresh message can carry it: created more than one window before now
            cutoff = now - 2 * self.window_ms
            self._seen = {k: v for k, v in self._seen.items() if v >= cutoff}
            self._next_prune = now + 10_000


KeyLookup = Callable[[Header], bytes]


def open_request(frames: list[bytes], key_lookup: KeyLookup, guard: ReplayGuard | None,
                 *, limits: Limits = DEFAULT_LIMITS, now: int | None = None) -> Request:
    """Parse and authenticate a request, in SPEC.md's order. Returns it with its body still packed.

    ``key_lookup(header)`` returns the sender's Ed25519 public key or raises an AdmissionError.
    The message id is recorded in ``guard`` only once everything checked out.
    """
    req = parse_request(frames, limits)
    h = req.header
    if h.kind not in KINDS:
        raise E.UnknownKind(f"kind {h.kind[:32]!r} is not one of {', '.join(KINDS)}")
    if h.kind == "enroll":
        if h.public_key is None:
            raise E.MalformedHeader("an enroll request carries its public key in header field 'pk'")
        if key_fingerprint(h.public_key) != h.fingerprint:
            raise E.MalformedHeader("header field 'fp' is not the fingerprint of header field 'pk'")
        public_key = h.public_key
    else:
        public_key = key_lookup(h)
    verify_request(req, public_key)
    check_fresh(h, now, limits.window_s)
    if guard is not None:
        guard.check(h)
        guard.add(h.msg_id, h.created_ms, now)
    return req


def unpack_body(body: bytes, max_len: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """Unpack a verified body that must be a msgpack map with string keys."""
    try:
        # request bodies are small maps of scalars (a chunk's bytes aside): tight container limits,
        # so no body can make the server build millions of objects
        m = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=max_len,
                            max_str_len=max_len, max_array_len=256, max_map_len=64, max_ext_len=0)
    except Exception as exc:
        raise E.MalformedBody(f"the body is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(m, dict):
        raise E.MalformedBody(f"the body must be a msgpack map; got {type(m).__name__}")
    return m


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ---- replies ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    ok: bool
    code: str
    message: str
    re: bytes  # the msg id of the request answered
    data: dict[str, Any]

    def raise_for_error(self) -> "Reply":
        if not self.ok:
            raise E.error_from_code(self.code, self.message)
        return self


def encode_reply(re: bytes, *, data: dict[str, Any] | None = None,
                 error: E.ProtocolError | None = None) -> list[bytes]:
    """Replies are two frames ``[version, msgpack map]``; CURVE authenticates the server."""
    if error is None:
        m = {"ok": True, "code": "OK", "msg": "", "re": re, "data": data or {}}
    else:
        m = {"ok": False, "code": error.code, "msg": error.message, "re": re, "data": data or {}}
    return [str(PROTOCOL_VERSION).encode(), pack(m)]


def decode_reply(frames: list[bytes], limits: Limits = DEFAULT_LIMITS) -> Reply:
    if len(frames) != 2:
        raise E.MalformedFrames(f"a reply is 2 frames (version, map); got {len(frames)}")
    _parse_version(bytes(frames[0]), limits)
    m = unpack_body(bytes(frames[1]))
    try:
        ok, code, msg, re = m["ok"], m["code"], m["msg"], m["re"]
    except KeyError:
        raise E.MalformedBody("the reply lacks one of ok, code, msg, re") from None
    data = m.get("data") or {}
    # bytes(int) would allocate that many zero bytes: check types, never convert them
    if not isinstance(re, bytes) or not isinstance(data, dict):
        raise E.MalformedBody(f"the reply's 're' must be bin and 'data' a map; got {type(re).__name__} "
                              f"and {type(data).__name__}")
    return Reply(bool(ok), str(code), str(msg), re, data)
