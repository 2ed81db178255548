"""Rules every payload kind shares: the head of the payload map and the federation's terms.

A payload is a msgpack map whose ``data`` field follows the others (SPEC.md, "Payloads"): a reader knows
the kind, labels and counts before it reaches the bulk, so a large payload can be checked while it
streams (``protocol.payloads.validate_stream``). The kind modules beside this one add their
``data`` rules. Each rule raises ``InvalidPayload`` (or the more precise code of the federation
rules) with a message that names the field and what was expected.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import msgpack

from .. import errors as E
from ..ids import ID_RULE, is_id

PAYLOAD_FORMAT = 1
MAX_LABEL_CHARS = 128
MAX_CLASSES = 100_000
#: packed size of ``params`` at most: a method's parameters are a few settings, never data
MAX_PARAMS_BYTES = 4096
#: fields outside the format: each at most this packed size, and at most this many
MAX_EXTRA_FIELD_BYTES = 1024
MAX_EXTRA_FIELDS = 16
#: maps inside a payload have at most this many keys (the payload map, data, params, caption items)
MAX_MAP_KEYS = 64
#: the fields of the format, in the order the edge writes them; ``data`` must follow the others
FIELD_ORDER = ("osfl_payload", "kind", "federation", "labels", "counts", "params", "bundle", "created_ms", "data")


def require(cond: bool, message: str, error: type[E.ProtocolError] = E.InvalidPayload) -> None:
    if not cond:
        raise error(message)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class FederationTerms:
    """What a payload is checked against: the federation's id, classes and allowed methods (kinds).

    The daemon passes its own federation row (any object with these attributes); the edge builds
    one from the server's ``federation`` reply with :meth:`from_public`.
    """

    id: str
    classes: tuple[str, ...]
    methods: tuple[str, ...]

    @classmethod
    def from_public(cls, info: Mapping[str, Any]) -> "FederationTerms":
        return cls(id=str(info["id"]), classes=tuple(info["classes"]), methods=tuple(info["methods"]))


def check_head(head: Mapping[str, Any], kinds: Sequence[str]) -> None:
    """The fields before ``data``: format, kind, federation id, labels, counts, params, bundle."""
    require(isinstance(head, Mapping), "a payload is a map")
    require(is_int(head.get("osfl_payload")) and head.get("osfl_payload") == PAYLOAD_FORMAT,
            f"payload format {head.get('osfl_payload')!r} is not {PAYLOAD_FORMAT}; rebuild it with this osfl")
    kind = head.get("kind")
    require(kind in kinds, f"payload kind {kind!r} is not one of {', '.join(kinds)}")
    fed = head.get("federation")
    require(is_id(fed), f"payload field 'federation' must be a federation id ({ID_RULE})")
    labels, counts = head.get("labels"), head.get("counts")
    require(isinstance(labels, list) and 0 < len(labels) <= MAX_CLASSES,
            f"payload field 'labels' must be a non-empty list of at most {MAX_CLASSES} class names")
    require(all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS for x in labels),
            f"every label must be a string of 1 to {MAX_LABEL_CHARS} characters")
    require(len(set(labels)) == len(labels), "labels must be unique")
    require(isinstance(counts, list) and len(counts) == len(labels) and all(is_int(c) and c >= 0 for c in counts),
            "payload field 'counts' must hold one non-negative integer per label")
    require(isinstance(head.get("params", {}), dict), "payload field 'params' must be a map")
    require(packed_size(head.get("params", {})) <= MAX_PARAMS_BYTES,
            f"payload field 'params' takes more than {MAX_PARAMS_BYTES} bytes; method parameters are settings, not data")
    extra = [k for k in head if k not in FIELD_ORDER]
    require(len(extra) <= MAX_EXTRA_FIELDS, f"the payload has {len(extra)} fields outside the format; at most "
                                            f"{MAX_EXTRA_FIELDS} are allowed")
    require(head.get("bundle") is None or isinstance(head.get("bundle"), str),
            "payload field 'bundle' must be a string or nil")


def packed_size(value: Any, name: str = "params") -> int:
    try:
        return len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        require(False, f"payload field {name!r} holds values that cannot be encoded (strings, numbers, booleans, "
                       f"nil, lists and maps only)")
        raise  # not reached


def check_extra_field(name: str, size: int) -> None:
    """A field outside the format is ignored, but only when small (it could smuggle data out)."""
    require(size <= MAX_EXTRA_FIELD_BYTES, f"payload field {name[:40]!r} is not part of the format and takes {size} "
                                           f"bytes; fields outside the format may take at most "
                                           f"{MAX_EXTRA_FIELD_BYTES}")


def check_field_order(keys: Sequence[str]) -> None:
    """``data`` follows every other field of the format (unknown fields may come anywhere)."""
    require("data" in keys, "payload field 'data' (a map) is missing")
    late = [k for k in keys[keys.index("data") + 1:] if k in FIELD_ORDER]
    require(not late, f"payload field(s) {', '.join(late)} come after 'data'; 'data' must follow every other "
                      f"field of the format (so the payload can be checked while it streams): rebuild it with osfl-edge")


def check_against_federation(payload: Mapping[str, Any], fed: Any) -> None:
    """The rules of the federation, for every kind (the label rule of SPEC.md included).

    Label rule: ``labels`` must be classes of the federation, each once, in any order; a site may
    name only the classes it holds (normal under label skew) or all of them with zero counts
    (what osfl-edge writes). The server maps labels to the federation's classes by name.
    """
    require(payload["federation"] == fed.id,
            f"the payload was built for federation {payload['federation']!r}, not {fed.id!r}; "
            f"rebuild it with --federation {fed.id}")
    require(payload["kind"] in fed.methods,
            f"federation {fed.id!r} allows {', '.join(fed.methods)}; got {payload['kind']}", E.MethodNotAllowed)
    classes = set(fed.classes)
    unknown = [c for c in payload["labels"] if c not in classes]
    require(not unknown, f"class(es) {', '.join(map(repr, unknown[:5]))} are not in federation {fed.id!r}, whose "
                         f"classes are {', '.join(list(fed.classes)[:20])}; rename the site's class folders",
            E.ClassNotInFederation)


@dataclass(frozen=True)
class Rejection:
    """One row of the rejection table: a change to a valid payload, and the code it must get."""

    rule: str
    mutate: Callable[[dict], Any]
    code: str

    def apply(self, payload: dict) -> Any:
        return self.mutate(copy.deepcopy(payload))


def _set(field: str, value: Any) -> Callable[[dict], dict]:
    def mutate(p: dict) -> dict:
        p[field] = value
        return p
    return mutate


def _data_first(p: dict) -> dict:
    return {"data": p.pop("data"), **p}


def _rename_label(p: dict) -> dict:
    p["labels"][0] = "not-a-class-of-this-federation"
    return p


def _duplicate_label(p: dict) -> dict:
    p["labels"][-1] = p["labels"][0]
    return p


def _drop_count(p: dict) -> dict:
    p["counts"] = p["counts"][:-1]
    return p


#: rules of every kind; each kind module adds its own (``REJECTIONS``)
REJECTIONS = (
    Rejection("payload format", _set("osfl_payload", 2), "INVALID_PAYLOAD"),
    Rejection("payload format an integer", _set("osfl_payload", True), "INVALID_PAYLOAD"),
    Rejection("params at most 4 KiB", _set("params", {"note": "x" * 10_000}), "INVALID_PAYLOAD"),
    Rejection("a field outside the format at most 1 KiB", _set("smuggled", "x" * 3_000_000), "INVALID_PAYLOAD"),
    Rejection("at most 16 fields outside the format", lambda p: {**{f"x{i}": i for i in range(17)}, **p},
              "INVALID_PAYLOAD"),
    Rejection("kind registered", _set("kind", "latents"), "INVALID_PAYLOAD"),
    Rejection("federation id is an id", _set("federation", "bad id\n"), "INVALID_PAYLOAD"),
    Rejection("payload's federation is the one uploaded to", _set("federation", "other-federation"), "INVALID_PAYLOAD"),
    Rejection("labels non-empty", _set("labels", []), "INVALID_PAYLOAD"),
    Rejection("labels unique", _duplicate_label, "INVALID_PAYLOAD"),
    Rejection("one count per label", _drop_count, "INVALID_PAYLOAD"),
    Rejection("counts non-negative", lambda p: {**p, "counts": [-1] + p["counts"][1:]}, "INVALID_PAYLOAD"),
    Rejection("params a map", _set("params", [1]), "INVALID_PAYLOAD"),
    Rejection("data a map", _set("data", [1]), "INVALID_PAYLOAD"),
    Rejection("data after the other fields", _data_first, "INVALID_PAYLOAD"),
    Rejection("labels are classes of the federation", _rename_label, "CLASS_NOT_IN_FEDERATION"),
)
