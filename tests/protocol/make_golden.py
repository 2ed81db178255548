"""Write the known-answer frames in ``golden/frames.json`` from fixed inputs.

Ed25519 is deterministic and msgpack keeps map order, so the same inputs give the same frames
byte for byte. Run it only for a deliberate wire change (and raise the protocol version):

    python tests/protocol/make_golden.py
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import envelope, errors
from protocol.constants import PROTOCOL_VERSION
from protocol.payloads import encode_payload

GOLDEN = Path(__file__).with_name("golden") / "frames.json"

#: RFC 8032 section 7.1, test 1: a published key, so the vectors can be checked by other tools
PRIVATE_KEY = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
MSG_ID = bytes(range(16))
CREATED_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FEDERATION = "derm-2026"
CURVE_PUBLIC = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # pyzmq's documented example key, z85


def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(PRIVATE_KEY)


def class_prompts_payload() -> dict:
    return {
        "osfl_payload": 1,
        "kind": "class_prompts",
        "federation": FEDERATION,
        "labels": ["benign", "malignant"],
        "counts": [120, 37],
        "params": {"templates": ["a dermoscopy photo of a {label} lesion"]},
        "bundle": None,
        "created_ms": CREATED_MS,
        "data": {"domain": "dermoscopy"},
    }


def requests() -> dict[str, dict]:
    """Inputs of each golden request: kind, body and the encode_request keyword arguments."""
    return {
        "upload_class_prompts": {
            "kind": "upload", "body": encode_payload(class_prompts_payload()),
            "federation": FEDERATION, "include_public_key": False,
        },
        "enroll": {
            "kind": "enroll",
            "body": envelope.pack({"site": "site-a", "curve": CURVE_PUBLIC.decode(), "name": "Site A"}),
            "federation": None, "include_public_key": True,
        },
        "upload_chunk": {
            "kind": "upload_chunk",
            "body": envelope.pack({"upload_id": "u-0001", "offset": 1_048_576, "data": bytes(range(256)) * 4}),
            "federation": FEDERATION, "include_public_key": False,
        },
        "status": {"kind": "status", "body": envelope.pack({}), "federation": None, "include_public_key": False},
    }


def encode(case: dict) -> list[bytes]:
    return envelope.encode_request(case["kind"], case["body"], signing_key(), federation=case["federation"],
                                   msg_id=MSG_ID, created_ms=CREATED_MS,
                                   include_public_key=case["include_public_key"])


def replies() -> dict[str, list[bytes]]:
    payload = encode_payload(class_prompts_payload())
    return {
        "reply_upload_ok": envelope.encode_reply(MSG_ID, data={
            "payload_id": "p-0001", "sha256": hashlib.sha256(payload).digest(), "size": len(payload),
            "duplicate": False}),
        "reply_key_pending": envelope.encode_reply(MSG_ID, error=errors.KeyPending(
            "key 21fe31dfa154a261626bf854046fd227 awaits `osfl-server clients accept`")),
    }


def build() -> dict:
    out: dict = {"protocol_version": PROTOCOL_VERSION, "private_key": PRIVATE_KEY.hex(),
                 "public_key": PUBLIC_KEY.hex(), "msg_id": MSG_ID.hex(), "created_ms": CREATED_MS,
                 "requests": {}, "replies": {}}
    for name, case in requests().items():
        out["requests"][name] = {
            "kind": case["kind"], "federation": case["federation"],
            "include_public_key": case["include_public_key"],
            "frames": [f.hex() for f in encode(case)],
        }
    for name, frames in replies().items():
        out["replies"][name] = {"frames": [f.hex() for f in frames]}
    return out


def main() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
