"""``captions`` (FGL, instance level): one scrubbed caption per image, with its label index.

``data = {"captions": [{"label_index": int, "caption": str}, ...], "scrubbed": int}``. Each item
has exactly these two keys; ``label_index`` indexes the payload's ``labels``; a caption is
printable text of at most ``MAX_CAPTION_CHARS`` characters; ``counts[i]`` equals the number of
captions of label ``i``. Errors name a caption's position, never its text (a caption may hold
what a scrubber missed). :func:`stream_data` checks the list one item at a time, so a payload of
a million captions is checked in the memory of one.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .common import Rejection, check_against_federation as check_common, is_int, require

KIND = "captions"
MAX_CAPTION_CHARS = 512
MAX_CAPTIONS = 1_000_000


class _Tally:
    """Checks captions one by one and counts them per label; ``finish`` compares with ``counts``."""

    def __init__(self, head: Mapping[str, Any]):
        self.counts = head["counts"]
        self.per_label = [0] * len(self.counts)

    def add(self, i: int, item: Any) -> None:
        n_labels = len(self.per_label)
        require(i < MAX_CAPTIONS, f"a captions payload holds at most {MAX_CAPTIONS} captions")
        require(isinstance(item, dict) and set(item) == {"label_index", "caption"},
                f"caption {i} must be a map with exactly 'label_index' and 'caption'")
        li, text = item["label_index"], item["caption"]
        require(is_int(li) and 0 <= li < n_labels, f"caption {i}: label_index must be an integer 0..{n_labels - 1}")
        require(isinstance(text, str) and len(text) <= MAX_CAPTION_CHARS,
                f"caption {i}: the caption must be a string of at most {MAX_CAPTION_CHARS} characters")
        require(text.isprintable(), f"caption {i}: the caption holds control characters")
        self.per_label[li] += 1

    def add_all(self, items: Iterable[Any]) -> None:
        for i, item in enumerate(items):
            self.add(i, item)

    def finish(self) -> None:
        require(self.per_label == list(self.counts),
                "captions: 'counts' must equal the number of captions of each label (one caption per image)")


def _check_rest(data: Mapping[str, Any], seen_captions: bool) -> None:
    require(seen_captions, "captions 'captions' must be a list of {label_index, caption} maps")
    scrubbed = data.get("scrubbed", 0)
    require(is_int(scrubbed) and scrubbed >= 0, "captions 'scrubbed' must be a non-negative integer")


def validate_data(data: Mapping[str, Any], head: Mapping[str, Any]) -> None:
    captions = data.get("captions")
    is_list = isinstance(captions, list)
    if is_list:
        require(len(captions) <= MAX_CAPTIONS, f"a captions payload holds at most {MAX_CAPTIONS} captions; "
                                               f"got {len(captions)}")
        tally = _Tally(head)
        tally.add_all(captions)
        tally.finish()
    _check_rest(data, is_list)


def stream_data(unpacker, head: Mapping[str, Any]) -> None:
    """The same rules as :func:`validate_data`, reading the captions list item by item."""
    try:
        n = unpacker.read_map_header()
    except ValueError:
        require(False, "payload field 'data' must be a map")
    rest: dict[str, Any] = {}
    seen = False
    for _ in range(n):
        key = unpacker.unpack()
        require(isinstance(key, str), "the names of payload field 'data' are strings")
        if key == "captions":
            try:
                length = unpacker.read_array_header()
            except ValueError:
                require(False, "captions 'captions' must be a list of {label_index, caption} maps")
            require(length <= MAX_CAPTIONS, f"a captions payload holds at most {MAX_CAPTIONS} captions; got {length}")
            tally = _Tally(head)
            for i in range(length):
                tally.add(i, unpacker.unpack())
            tally.finish()
            seen = True
        else:
            rest[key] = unpacker.unpack()
    _check_rest(rest, seen)


def check_against_federation(payload: Mapping[str, Any], fed: Any) -> None:
    check_common(payload, fed)


def example(federation: str, classes: list[str]) -> dict[str, Any]:
    """A valid payload (tests, docs): two captions of the first class, one of the second."""
    items = [{"label_index": 0, "caption": "a small grey thing"}, {"label_index": 0, "caption": "a dark thing"},
             {"label_index": min(1, len(classes) - 1), "caption": "a bright thing on a table"}]
    counts = [0] * len(classes)
    for it in items:
        counts[it["label_index"]] += 1
    return {"osfl_payload": 1, "kind": KIND, "federation": federation, "labels": list(classes), "counts": counts,
            "params": {}, "bundle": None, "created_ms": 0, "data": {"captions": items, "scrubbed": 0}}


def _caption(field: str, value: Any):
    def mutate(p: dict) -> dict:
        p["data"]["captions"][0][field] = value
        return p
    return mutate


def _count_off(p: dict) -> dict:
    p["counts"][0] += 1
    return p


def _extra_key(p: dict) -> dict:
    p["data"]["captions"][0]["file"] = "IMG_0001.dcm"
    return p


REJECTIONS = (
    Rejection("captions a list", lambda p: {**p, "data": {"captions": "x", "scrubbed": 0}}, "INVALID_PAYLOAD"),
    Rejection("label_index in range", _caption("label_index", 10_000), "INVALID_PAYLOAD"),
    Rejection("label_index an integer", _caption("label_index", True), "INVALID_PAYLOAD"),
    Rejection("caption at most 512 characters", _caption("caption", "x" * (MAX_CAPTION_CHARS + 1)), "INVALID_PAYLOAD"),
    Rejection("caption printable", _caption("caption", "line\nbreak"), "INVALID_PAYLOAD"),
    Rejection("caption items have exactly two keys", _extra_key, "INVALID_PAYLOAD"),
    Rejection("counts equal captions per label", _count_off, "INVALID_PAYLOAD"),
    Rejection("scrubbed a non-negative integer", lambda p: {**p, "data": {**p["data"], "scrubbed": -1}},
              "INVALID_PAYLOAD"),
)
