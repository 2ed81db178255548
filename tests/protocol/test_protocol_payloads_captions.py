"""The `captions` payload kind: one caption per image with its label; every bad shape is INVALID_PAYLOAD."""
from __future__ import annotations

import pytest

from protocol import errors as E
from protocol.payloads import MAX_CAPTION_CHARS, MAX_CAPTIONS, decode_payload, encode_payload, validate_payload

CAPS = [{"label_index": 0, "caption": "a close up of a brown mole on skin"},
        {"label_index": 0, "caption": "a dark round spot"},
        {"label_index": 2, "caption": ""}]


def captions(caps=None, counts=(2, 0, 1), **data) -> dict:
    d = {"captions": CAPS if caps is None else caps, "scrubbed": 1}
    d.update(data)
    return {"osfl_payload": 1, "kind": "captions", "federation": "derm-2026", "labels": ["mole", "nevus", "scar"],
            "counts": list(counts), "params": {"captioner": "blip2-opt"}, "bundle": "2026.1", "data": d}


@pytest.mark.parametrize("p", [
    pytest.param(captions(), id="three captions"),
    pytest.param(captions([], (0, 0, 0)), id="no captions"),
    pytest.param(captions([{"label_index": 1, "caption": "x" * MAX_CAPTION_CHARS}], (0, 1, 0)), id="caption at limit"),
    pytest.param({**captions(), "data": {"captions": CAPS}}, id="scrubbed absent"),
    pytest.param(captions([{"label_index": 0, "caption": "ünïcödé 😀 text"}], (1, 0, 0)), id="unicode"),
])
def test_valid_captions(p):
    assert decode_payload(encode_payload(p)) == p


BAD = [
    ("captions missing", {**captions(), "data": {"scrubbed": 0}}),
    ("captions not a list", captions({"0": "x"})),
    ("item not a map", captions(["a cat", "b", "c"])),
    ("item has a file name", captions([{**CAPS[0], "file": "IMG_0001.png"}, CAPS[1], CAPS[2]])),
    ("item lacks label_index", captions([{"caption": "x"}, CAPS[1], CAPS[2]])),
    ("label_index out of range", captions([CAPS[0], CAPS[1], {"label_index": 3, "caption": "x"}])),
    ("label_index negative", captions([CAPS[0], CAPS[1], {"label_index": -1, "caption": "x"}])),
    ("label_index bool", captions([CAPS[0], CAPS[1], {"label_index": True, "caption": "x"}], (2, 1, 0))),
    ("label_index str", captions([CAPS[0], CAPS[1], {"label_index": "2", "caption": "x"}])),
    ("caption too long", captions([CAPS[0], CAPS[1], {"label_index": 2, "caption": "x" * (MAX_CAPTION_CHARS + 1)}])),
    ("caption bytes", captions([CAPS[0], CAPS[1], {"label_index": 2, "caption": b"x"}])),
    ("caption nil", captions([CAPS[0], CAPS[1], {"label_index": 2, "caption": None}])),
    ("caption with newline", captions([CAPS[0], CAPS[1], {"label_index": 2, "caption": "a\nb"}])),
    ("caption with escape", captions([CAPS[0], CAPS[1], {"label_index": 2, "caption": "\x1b[2J"}])),
    ("counts disagree", captions(counts=(1, 1, 1))),
    ("more captions than counts", captions(counts=(2, 0, 0))),
    ("scrubbed negative", captions(scrubbed=-1)),
    ("scrubbed str", captions(scrubbed="1")),
]


@pytest.mark.parametrize("p", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_captions(p):
    with pytest.raises(E.InvalidPayload):
        validate_payload(p)


def test_count_limit(monkeypatch):
    import protocol.methods.captions as P

    monkeypatch.setattr(P, "MAX_CAPTIONS", 2)
    with pytest.raises(E.InvalidPayload, match="at most 2 captions"):
        validate_payload(captions())
    assert MAX_CAPTIONS >= 100_000


def test_errors_name_the_position_not_the_text():
    secret = "Mr Jonathan Secretname 1234567"
    with pytest.raises(E.InvalidPayload) as info:
        validate_payload(captions([CAPS[0], CAPS[1], {"label_index": 9, "caption": secret}]))
    assert "caption 2" in str(info.value) and "Secretname" not in str(info.value)
