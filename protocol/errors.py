"""Every error the osfl wire protocol can report, each with a stable code.

A rejection travels back to the site as a reply carrying ``code`` (a stable upper-case name) and a
message saying what was expected and what was found. ``SPEC.md`` lists the same table; a test keeps
the two in agreement, so renumbering or renaming a code is a protocol change.

Codes 600 and above never cross the wire: the site's transport raises them itself (the server did
not answer, or the CURVE handshake failed).
"""
from __future__ import annotations


class ProtocolError(Exception):
    """Base of every osfl protocol error. ``code`` and ``number`` are stable across releases."""

    code: str = "INTERNAL"
    number: int = 500
    #: one line for documentation and ``osfl-edge`` help text
    summary: str = "internal error"

    def __init__(self, message: str | None = None):
        self.message = message or self.summary
        super().__init__(f"{self.code}: {self.message}")


class FramingError(ProtocolError):
    """The frames themselves are wrong (count, size, version, encoding, signature, replay)."""


class AdmissionError(ProtocolError):
    """The sender's key is not (or no longer) allowed to do this."""


class RequestError(ProtocolError):
    """The request is well-formed and authentic but cannot be carried out."""


class ServerError(ProtocolError):
    """The server failed; the request may be retried."""


class TransportError(ProtocolError):
    """Raised on the site itself: the server could not be reached or authenticated."""


def _err(name: str, base: type, code: str, number: int, summary: str) -> type:
    return type(name, (base,), {"code": code, "number": number, "summary": summary,
                                "__doc__": summary, "__module__": __name__})


MalformedFrames = _err("MalformedFrames", FramingError, "MALFORMED_FRAMES", 100,
                       "a request must be exactly four frames: version, header, body, signature")
FrameTooLarge = _err("FrameTooLarge", FramingError, "FRAME_TOO_LARGE", 101,
                     "a frame exceeds its size limit")
VersionUnsupported = _err("VersionUnsupported", FramingError, "VERSION_UNSUPPORTED", 102,
                          "the protocol version is outside what this peer accepts")
MalformedHeader = _err("MalformedHeader", FramingError, "MALFORMED_HEADER", 103,
                       "the header is not a valid msgpack map with the required fields")
MalformedBody = _err("MalformedBody", FramingError, "MALFORMED_BODY", 104,
                     "the body does not decode to what its kind requires")
BadSignature = _err("BadSignature", FramingError, "BAD_SIGNATURE", 105,
                    "the Ed25519 signature does not match the header and body")
BodyDigestMismatch = _err("BodyDigestMismatch", FramingError, "BODY_DIGEST_MISMATCH", 106,
                          "the body's sha256 differs from the one in the header")
TimestampOutOfWindow = _err("TimestampOutOfWindow", FramingError, "TIMESTAMP_OUT_OF_WINDOW", 107,
                            "the message's creation time is outside the accepted window")
ReplayedMessage = _err("ReplayedMessage", FramingError, "REPLAYED_MESSAGE", 108,
                       "this message id was already received")
UnknownKind = _err("UnknownKind", FramingError, "UNKNOWN_KIND", 109,
                   "the request kind is not one this server handles")

UnknownKey = _err("UnknownKey", AdmissionError, "UNKNOWN_KEY", 200,
                  "the sender's key is not known to this server; run `osfl-edge enroll`")
KeyPending = _err("KeyPending", AdmissionError, "KEY_PENDING", 201,
                  "the sender's key awaits the operator's `osfl-server clients accept`")
KeyRejected = _err("KeyRejected", AdmissionError, "KEY_REJECTED", 202,
                   "the operator rejected this key")
KeyRevoked = _err("KeyRevoked", AdmissionError, "KEY_REVOKED", 203,
                  "the operator revoked this key")
KeyConflict = _err("KeyConflict", AdmissionError, "KEY_CONFLICT", 204,
                   "this site id is registered with a different key")
CurveKeyMismatch = _err("CurveKeyMismatch", AdmissionError, "CURVE_KEY_MISMATCH", 205,
                        "the connection's CURVE key is not the one this site enrolled with")

UnknownFederation = _err("UnknownFederation", RequestError, "UNKNOWN_FEDERATION", 300,
                         "no federation with this id exists on the server")
MethodNotAllowed = _err("MethodNotAllowed", RequestError, "METHOD_NOT_ALLOWED", 301,
                        "the federation does not allow this payload kind")
ClassNotInFederation = _err("ClassNotInFederation", RequestError, "CLASS_NOT_IN_FEDERATION", 302,
                            "the payload names a class the federation does not have")
InvalidPayload = _err("InvalidPayload", RequestError, "INVALID_PAYLOAD", 303,
                      "the payload does not follow the payload format")
PayloadConflict = _err("PayloadConflict", RequestError, "PAYLOAD_CONFLICT", 304,
                       "this site already uploaded a different payload of this kind")
UploadNotFound = _err("UploadNotFound", RequestError, "UPLOAD_NOT_FOUND", 305,
                      "no chunked upload with this id is open")
ChunkOutOfOrder = _err("ChunkOutOfOrder", RequestError, "CHUNK_OUT_OF_ORDER", 306,
                       "the chunk's offset is not the next byte the server expects")
PayloadDigestMismatch = _err("PayloadDigestMismatch", RequestError, "PAYLOAD_DIGEST_MISMATCH", 307,
                             "the assembled payload's sha256 differs from the announced one")
PayloadTooLarge = _err("PayloadTooLarge", RequestError, "PAYLOAD_TOO_LARGE", 308,
                       "the payload exceeds the server's size limit")
FederationClosed = _err("FederationClosed", RequestError, "FEDERATION_CLOSED", 309,
                        "the federation no longer takes uploads")
NotFound = _err("NotFound", RequestError, "NOT_FOUND", 310,
                "the requested object does not exist")
QuotaExceeded = _err("QuotaExceeded", RequestError, "QUOTA_EXCEEDED", 311,
                     "a limit of the server (open uploads, bytes announced, pending enrolments) is reached")

InternalError = _err("InternalError", ServerError, "INTERNAL", 500,
                     "the server failed while handling the request; retry later")
ServerDraining = _err("ServerDraining", ServerError, "SERVER_DRAINING", 501,
                      "the server is shutting down; retry later")
DiskFull = _err("DiskFull", ServerError, "DISK_FULL", 502,
                "the server's disk is full or below its free-space floor; nothing was stored; retry later")

ServerUnreachable = _err("ServerUnreachable", TransportError, "SERVER_UNREACHABLE", 600,
                         "no answer from the server before the timeout")
HandshakeFailed = _err("HandshakeFailed", TransportError, "HANDSHAKE_FAILED", 601,
                       "the CURVE handshake failed: the pinned server key does not match")
BadServerKey = _err("BadServerKey", TransportError, "BAD_SERVER_KEY", 602,
                    "the server key string is malformed")

#: every concrete error class by its stable code
ERRORS: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in [
        MalformedFrames, FrameTooLarge, VersionUnsupported, MalformedHeader, MalformedBody,
        BadSignature, BodyDigestMismatch, TimestampOutOfWindow, ReplayedMessage, UnknownKind,
        UnknownKey, KeyPending, KeyRejected, KeyRevoked, KeyConflict, CurveKeyMismatch,
        UnknownFederation, MethodNotAllowed, ClassNotInFederation, InvalidPayload, PayloadConflict,
        UploadNotFound, ChunkOutOfOrder, PayloadDigestMismatch, PayloadTooLarge, FederationClosed,
        NotFound, QuotaExceeded, InternalError, ServerDraining, DiskFull, ServerUnreachable, HandshakeFailed,
        BadServerKey,
    ]
}


def error_from_code(code: str, message: str) -> ProtocolError:
    """Rebuild the exception a peer reported; an unknown code becomes a plain ProtocolError."""
    cls = ERRORS.get(code)
    if cls is None:
        err = ProtocolError(message)
        err.code = code
        return err
    return cls(message)
