"""The payload format: what a site uploads once, shared by the edge (builds) and server (validates).

A payload is a msgpack map (SPEC.md, "Payloads"). Every kind carries the federation id, the label
map, the count of images per class, the method's parameters and the edge model-bundle version; the
``data`` map, which follows the other fields, is kind-specific. Nothing in it identifies a patient.

The rules live in ``protocol/methods/``: ``common.py`` for every kind, one module per kind for its
``data``. This module is their front: :func:`validate_payload` (a decoded map), :func:`validate_stream`
(a file of any size, in bounded memory) and :func:`check_against_federation`. The edge runs them
before upload and the daemon before it acknowledges, so what the daemon acknowledges is what the
planner can use.
"""
from __future__ import annotations

from typing import Any, BinaryIO, Mapping

import msgpack

from . import errors as E
from .methods import PAYLOAD_KINDS, method
from .methods.common import (FIELD_ORDER, MAX_CLASSES, MAX_EXTRA_FIELDS, MAX_LABEL_CHARS, MAX_MAP_KEYS,
                             PAYLOAD_FORMAT, FederationTerms, check_extra_field, check_field_order, check_head,
                             packed_size, require)
from .methods.captions import MAX_CAPTION_CHARS, MAX_CAPTIONS
from .methods.class_prompts import MAX_DOMAIN_CHARS

__all__ = ["FederationTerms", "MAX_CAPTIONS", "MAX_CAPTION_CHARS", "MAX_CLASSES", "MAX_DOMAIN_CHARS",
           "MAX_LABEL_CHARS", "METHODS", "PAYLOAD_FORMAT", "PAYLOAD_KINDS", "check_against_federation",
           "decode_payload", "encode_payload", "method_to_kind", "validate_payload", "validate_stream"]

#: the CLI spelling of each method
METHODS = {k.replace("_", "-"): k for k in PAYLOAD_KINDS}
#: the largest single field :func:`validate_stream` reads at once (labels of 100,000 classes fit): it
#: bounds the memory a hostile payload can make the reader spend (objects are at least one byte each)
STREAM_BUFFER_BYTES = 4 * 1024 * 1024
#: per-container limits while decoding: no list in a payload is longer than a captions list, no map
#: has more keys than MAX_MAP_KEYS
_LIMITS = {"max_map_len": MAX_MAP_KEYS, "max_ext_len": 0}


def method_to_kind(method_name: str) -> str:
    kind = METHODS.get(method_name) or (method_name if method_name in PAYLOAD_KINDS else None)
    if kind is None:
        raise ValueError(f"unknown method {method_name!r}; expected one of {', '.join(METHODS)}")
    return kind


def encode_payload(payload: dict[str, Any]) -> bytes:
    validate_payload(payload)
    return msgpack.packb(payload, use_bin_type=True)


def decode_payload(raw: bytes) -> dict[str, Any]:
    try:
        payload = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_array_len=MAX_CAPTIONS, **_LIMITS)
    except Exception as exc:
        raise E.InvalidPayload(f"the payload is not valid msgpack ({type(exc).__name__})") from exc
    validate_payload(payload)
    return payload


def validate_payload(p: Any) -> None:
    """Every structural rule of the payload's kind (``InvalidPayload`` naming the first one broken)."""
    require(isinstance(p, dict), "a payload is a map")
    check_head(p, PAYLOAD_KINDS)
    check_field_order(list(p))
    for key in p:
        if key not in FIELD_ORDER:
            check_extra_field(str(key), packed_size(p[key], str(key)))
    require(isinstance(p["data"], dict), "payload field 'data' must be a map")
    method(p["kind"]).validate_data(p["data"], p)


def validate_stream(fh: BinaryIO) -> dict[str, Any]:
    """The rules of :func:`validate_payload` for a payload read from ``fh``, in bounded memory.

    Returns the payload's head (every field but ``data``). No single field may take more than
    ``STREAM_BUFFER_BYTES``; the kind's module reads ``data`` item by item.
    """
    u = msgpack.Unpacker(fh, raw=False, strict_map_key=True, max_buffer_size=STREAM_BUFFER_BYTES,
                         max_array_len=MAX_CLASSES, **_LIMITS)
    try:
        n = u.read_map_header()
    except ValueError:
        raise E.InvalidPayload("a payload is a map") from None
    except Exception as exc:
        raise E.InvalidPayload(f"the payload is not valid msgpack ({type(exc).__name__})") from exc
    head: dict[str, Any] = {}
    seen_data = False
    extra = 0
    try:
        require(n <= MAX_MAP_KEYS, f"the payload map has {n} fields; at most {MAX_MAP_KEYS} are allowed")
        for _ in range(n):
            key = u.unpack()
            require(isinstance(key, str), "payload field names are strings")
            if seen_data:  # only fields outside the format may follow data; they are read and ignored
                check_field_order(["data", key])
                start = u.tell()
                u.skip()
                check_extra_field(key, u.tell() - start)
                extra += 1
                require(extra <= MAX_EXTRA_FIELDS, f"the payload has more than {MAX_EXTRA_FIELDS} fields outside "
                                                   f"the format")
            elif key == "data":
                check_head(head, PAYLOAD_KINDS)
                method(head["kind"]).stream_data(u, head)
                seen_data = True
            else:
                start = u.tell()
                head[key] = u.unpack()
                if key not in FIELD_ORDER:
                    check_extra_field(key, u.tell() - start)
                    extra += 1
        if not seen_data:
            check_field_order(list(head))
    except E.ProtocolError:
        raise
    except msgpack.BufferFull:
        raise E.InvalidPayload(f"a payload field is larger than {STREAM_BUFFER_BYTES} bytes") from None
    except Exception as exc:  # truncated, malformed, or the wrong type where a list or map belongs
        raise E.InvalidPayload(f"the payload is not valid msgpack ({type(exc).__name__})") from exc
    if u.read_bytes(1):  # anything at all after the map, a complete object or not
        raise E.InvalidPayload("the payload has bytes after its map")
    return head


def check_against_federation(payload: Mapping[str, Any], fed: Any) -> None:
    """The federation's rules for a valid payload: its id, the allowed methods, the label rule."""
    method(payload["kind"]).check_against_federation(payload, fed)
