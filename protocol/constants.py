"""Protocol constants. SPEC.md states the same values; a test keeps them in agreement."""

#: the version this code speaks (frame 0 of every request and reply, ASCII decimal)
PROTOCOL_VERSION = 1
#: the oldest version a peer of this release accepts (stops downgrades)
MIN_PROTOCOL_VERSION = 1

#: frame size limits, in bytes
MAX_VERSION_FRAME = 8
MAX_HEADER_BYTES = 4096
MAX_BODY_BYTES = 4 * 1024 * 1024
SIGNATURE_BYTES = 64

#: a payload larger than this goes in chunks
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: the largest payload a server accepts by default (chunked); at least 2 GiB by design
MAX_PAYLOAD_BYTES = 4 * 1024 ** 3

#: a request is accepted only when |now - created_at| is within this many seconds
REPLAY_WINDOW_S = 300

MSG_ID_BYTES = 16
DIGEST_BYTES = 32
PUBLIC_KEY_BYTES = 32
#: fingerprint = first 16 bytes of sha256(Ed25519 public key), lower-case hex
FINGERPRINT_HEX_CHARS = 32

#: domain-separation prefix of the signed bytes
SIGNATURE_CONTEXT = b"osfl-envelope\x00"

#: request kinds the server handles
KINDS = (
    "enroll",          # a site asks to be admitted (header carries its public key)
    "status",          # a site asks for its admission state, uploads and federation states
    "federation",      # an accepted site asks for a federation's classes and methods
    "upload",          # a whole payload in one body
    "upload_begin",    # open (or resume) a chunked upload
    "upload_chunk",    # one acknowledged chunk
    "upload_commit",   # check the digest of the whole and store it
    "ping",            # liveness and version check
    "artifact_info",   # the signed manifest of a file the server offers (global model, edge bundle)
    "artifact_chunk",  # one piece of that file, by offset
)
