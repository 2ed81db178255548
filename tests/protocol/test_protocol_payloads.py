"""The payload format: a valid class_prompts payload round-trips; every malformed one is INVALID_PAYLOAD."""
from __future__ import annotations

import msgpack
import pytest

from protocol import errors as E
from protocol.payloads import (
    MAX_DOMAIN_CHARS, MAX_LABEL_CHARS, METHODS, PAYLOAD_KINDS, decode_payload, encode_payload, method_to_kind,
    validate_payload,
)

DROP = object()


def payload(**fields) -> dict:
    p = {"osfl_payload": 1, "kind": "class_prompts", "federation": "derm-2026",
         "labels": ["benign", "malignant", "nevus"], "counts": [120, 37, 0],
         "params": {"templates": ["a photo of a {label}"]}, "bundle": "edge-2026.1",
         "created_ms": 1_767_225_600_000, "data": {"domain": "dermoscopy"}}
    for k, v in fields.items():
        if v is DROP:
            p.pop(k)
        else:
            p[k] = v
    return p


def test_class_prompts_round_trip():
    p = payload()
    raw = encode_payload(p)
    assert isinstance(raw, bytes)
    assert decode_payload(raw) == p
    assert encode_payload(decode_payload(raw)) == raw


@pytest.mark.parametrize("fields", [
    pytest.param({"data": {"domain": None}}, id="domain nil"),
    pytest.param({"data": {}}, id="domain absent"),
    pytest.param({"data": {"domain": "d" * MAX_DOMAIN_CHARS}}, id="domain at limit"),
    pytest.param({"bundle": None}, id="bundle nil"),
    pytest.param({"bundle": DROP, "params": DROP, "created_ms": DROP}, id="optional fields absent"),
    pytest.param({"labels": ["x" * MAX_LABEL_CHARS], "counts": [1]}, id="one class, label at limit"),
    pytest.param({"federation": "f" * 64}, id="federation 64 chars"),
    pytest.param({"extra": [1, 2]}, id="unknown key ignored"),
    *[pytest.param({"kind": k, "data": {}}, id=f"kind {k}") for k in PAYLOAD_KINDS if k != "captions"],
    pytest.param({"kind": "captions", "data": {"captions": []}, "counts": [0, 0, 0]}, id="kind captions"),
])
def test_valid_variants(fields):
    p = payload(**fields)
    assert decode_payload(encode_payload(p)) == p


INVALID = [
    ("not a map", [1, 2]),
    ("nil", None),
    ("format missing", payload(osfl_payload=DROP)),
    ("format 2", payload(osfl_payload=2)),
    ("format as str", payload(osfl_payload="1")),
    ("kind missing", payload(kind=DROP)),
    ("kind unknown", payload(kind="images")),
    ("kind with dash", payload(kind="class-prompts")),
    ("federation missing", payload(federation=DROP)),
    ("federation empty", payload(federation="")),
    ("federation too long", payload(federation="f" * 65)),
    ("federation int", payload(federation=7)),
    ("labels missing", payload(labels=DROP)),
    ("labels empty", payload(labels=[], counts=[])),
    ("labels not a list", payload(labels="benign")),
    ("label empty", payload(labels=["", "b", "c"])),
    ("label too long", payload(labels=["x" * (MAX_LABEL_CHARS + 1), "b", "c"])),
    ("label not str", payload(labels=[1, "b", "c"])),
    ("labels repeated", payload(labels=["a", "a", "c"])),
    ("counts missing", payload(counts=DROP)),
    ("counts too short", payload(counts=[1, 2])),
    ("counts too long", payload(counts=[1, 2, 3, 4])),
    ("count negative", payload(counts=[1, -1, 0])),
    ("count float", payload(counts=[1, 2.0, 0])),
    ("count bool", payload(counts=[1, True, 0])),
    ("count str", payload(counts=[1, "2", 0])),
    ("params not a map", payload(params=[1])),
    ("bundle int", payload(bundle=3)),
    ("data missing", payload(data=DROP)),
    ("data nil", payload(data=None)),
    ("data list", payload(data=[])),
    ("domain int", payload(data={"domain": 3})),
    ("domain too long", payload(data={"domain": "d" * (MAX_DOMAIN_CHARS + 1)})),
    ("domain bytes", payload(data={"domain": b"dermoscopy"})),
]


@pytest.mark.parametrize("value", [c[1] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_payloads(value):
    with pytest.raises(E.InvalidPayload) as info:
        validate_payload(value)
    assert info.value.code == "INVALID_PAYLOAD" and info.value.number == 303
    with pytest.raises(E.InvalidPayload):
        decode_payload(msgpack.packb(value, use_bin_type=True))
    with pytest.raises(E.InvalidPayload):
        encode_payload(value)


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", msgpack.packb({1: 2}), b"\x81\xa1a"])
def test_decode_payload_rejects_bad_msgpack(raw):
    with pytest.raises(E.InvalidPayload):
        decode_payload(raw)


def test_error_message_does_not_echo_labels():
    # a payload's content must not leak into errors (logs); the message names the field only
    with pytest.raises(E.InvalidPayload) as info:
        validate_payload(payload(labels=["patient-4711", "patient-4711"], counts=[1, 1]))
    assert "patient-4711" not in str(info.value)


def test_methods_map_to_kinds():
    assert set(METHODS.values()) == set(PAYLOAD_KINDS)
    assert method_to_kind("class-prompts") == "class_prompts"
    assert method_to_kind("captions") == "captions"
    assert method_to_kind("class_prompts") == "class_prompts"
    with pytest.raises(ValueError, match="unknown method"):
        method_to_kind("images")
