"""``class_prompts`` (FGL, class level): class names, counts and optional domain or style text.

``data = {"domain": str | nil}``: at most ``MAX_DOMAIN_CHARS`` characters of printable text a person
typed to describe the images' look ("dermoscopy photographs"). The server prompts Stable Diffusion
with FGL's class template, styled by the domain.
"""
from __future__ import annotations

from typing import Any, Mapping

from .common import Rejection, check_against_federation as check_common, require

KIND = "class_prompts"
MAX_DOMAIN_CHARS = 256


def validate_data(data: Mapping[str, Any], head: Mapping[str, Any]) -> None:
    domain = data.get("domain")
    require(domain is None or (isinstance(domain, str) and len(domain) <= MAX_DOMAIN_CHARS),
            f"class_prompts 'domain' must be nil or a string of at most {MAX_DOMAIN_CHARS} characters")
    require(domain is None or domain.isprintable(), "class_prompts 'domain' holds control characters")


def stream_data(unpacker, head: Mapping[str, Any]) -> None:
    """The data map is small: read it whole (the unpacker's buffer bounds it) and check it."""
    data = unpacker.unpack()
    require(isinstance(data, dict), "payload field 'data' must be a map")
    validate_data(data, head)


def check_against_federation(payload: Mapping[str, Any], fed: Any) -> None:
    check_common(payload, fed)


def example(federation: str, classes: list[str]) -> dict[str, Any]:
    """A valid payload (tests, docs): the site holds the first half of the classes."""
    counts = [3 if i < max(1, len(classes) // 2) else 0 for i in range(len(classes))]
    return {"osfl_payload": 1, "kind": KIND, "federation": federation, "labels": list(classes), "counts": counts,
            "params": {}, "bundle": None, "created_ms": 0, "data": {"domain": "pencil sketches"}}


REJECTIONS = (
    Rejection("domain at most 256 characters", lambda p: {**p, "data": {"domain": "x" * (MAX_DOMAIN_CHARS + 1)}},
              "INVALID_PAYLOAD"),
    Rejection("domain a string", lambda p: {**p, "data": {"domain": 7}}, "INVALID_PAYLOAD"),
    Rejection("domain printable", lambda p: {**p, "data": {"domain": "ok\x1b[2J"}}, "INVALID_PAYLOAD"),
)
