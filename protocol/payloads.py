"""The payload format: what a site uploads once, shared by the edge (builds) and server (validates).

A payload is a msgpack map (SPEC.md, "Payloads"). Every kind carries the federation id, the label
map, the count of images per class, the method's parameters and the edge model-bundle version; the
``data`` map is kind-specific. Nothing in it identifies a patient.
"""
from __future__ import annotations

from typing import Any

import msgpack

from . import errors as E

PAYLOAD_FORMAT = 1
#: payload kinds, one per method (DESIGN.md, "Payload kinds")
PAYLOAD_KINDS = ("class_prompts", "captions", "latents", "concepts", "classifier")
#: the CLI spelling of each method
METHODS = {k.replace("_", "-"): k for k in PAYLOAD_KINDS}

MAX_LABEL_CHARS = 128
MAX_DOMAIN_CHARS = 256
MAX_CLASSES = 100_000
#: ``captions`` payloads: characters per caption, captions per payload (one per image)
MAX_CAPTION_CHARS = 512
MAX_CAPTIONS = 1_000_000


def method_to_kind(method: str) -> str:
    kind = METHODS.get(method) or (method if method in PAYLOAD_KINDS else None)
    if kind is None:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return kind


def encode_payload(payload: dict[str, Any]) -> bytes:
    validate_payload(payload)
    return msgpack.packb(payload, use_bin_type=True)


def decode_payload(raw: bytes) -> dict[str, Any]:
    try:
        payload = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:
        raise E.InvalidPayload(f"the payload is not valid msgpack ({type(exc).__name__})") from None
    validate_payload(payload)
    return payload


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise E.InvalidPayload(message)


def validate_payload(p: Any) -> None:
    """Structural checks shared by both sides; the server also checks it against the federation."""
    _require(isinstance(p, dict), "a payload is a map")
    _require(p.get("osfl_payload") == PAYLOAD_FORMAT,
             f"payload format {p.get('osfl_payload')!r} is not {PAYLOAD_FORMAT}; rebuild it with this osfl")
    kind = p.get("kind")
    _require(kind in PAYLOAD_KINDS, f"payload kind {kind!r} is not one of {', '.join(PAYLOAD_KINDS)}")
    fed = p.get("federation")
    _require(isinstance(fed, str) and 0 < len(fed) <= 64, "payload field 'federation' must be a 1-64 character id")
    labels, counts = p.get("labels"), p.get("counts")
    _require(isinstance(labels, list) and 0 < len(labels) <= MAX_CLASSES, "payload field 'labels' must be a non-empty list")
    _require(all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS for x in labels),
             f"every label must be a string of 1 to {MAX_LABEL_CHARS} characters")
    _require(len(set(labels)) == len(labels), "labels must be unique")
    _require(isinstance(counts, list) and len(counts) == len(labels)
             and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts),
             "payload field 'counts' must hold one non-negative integer per label")
    _require(isinstance(p.get("params", {}), dict), "payload field 'params' must be a map")
    _require(p.get("bundle") is None or isinstance(p.get("bundle"), str), "payload field 'bundle' must be a string or nil")
    data = p.get("data")
    _require(isinstance(data, dict), "payload field 'data' must be a map")
    if kind == "class_prompts":
        domain = data.get("domain")
        _require(domain is None or (isinstance(domain, str) and len(domain) <= MAX_DOMAIN_CHARS),
                 f"class_prompts 'domain' must be nil or a string of at most {MAX_DOMAIN_CHARS} characters")
    elif kind == "captions":
        _validate_captions(data, counts)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_captions(data: dict, counts: list[int]) -> None:
    """One caption per image: ``{"captions": [{"label_index", "caption"}], "scrubbed": int}``.

    Errors name the caption's position, never its text (a caption may hold what a scrubber missed).
    """
    captions = data.get("captions")
    _require(isinstance(captions, list), "captions 'captions' must be a list of {label_index, caption} maps")
    _require(len(captions) <= MAX_CAPTIONS, f"a captions payload holds at most {MAX_CAPTIONS} captions; "
                                            f"got {len(captions)}")
    n_labels = len(counts)
    per_label = [0] * n_labels
    for i, item in enumerate(captions):
        _require(isinstance(item, dict) and set(item) == {"label_index", "caption"},
                 f"caption {i} must be a map with exactly 'label_index' and 'caption'")
        li, text = item["label_index"], item["caption"]
        _require(_is_int(li) and 0 <= li < n_labels,
                 f"caption {i}: label_index must be an integer 0..{n_labels - 1}")
        _require(isinstance(text, str) and len(text) <= MAX_CAPTION_CHARS,
                 f"caption {i}: the caption must be a string of at most {MAX_CAPTION_CHARS} characters")
        _require(text.isprintable(), f"caption {i}: the caption holds control characters")
        per_label[li] += 1
    _require(per_label == counts, "captions: 'counts' must equal the number of captions of each label "
                                  "(one caption per image)")
    scrubbed = data.get("scrubbed", 0)
    _require(_is_int(scrubbed) and scrubbed >= 0, "captions 'scrubbed' must be a non-negative integer")
