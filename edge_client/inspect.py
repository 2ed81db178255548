"""Show a person exactly what a payload would send, before ``upload`` sends it.

The report is built from the **bytes** that would be uploaded (decoded again here), not from what
the code meant to put in them: size and sha256 are of those exact bytes, and every field in them
is shown. The sentence "No image pixels, file names or patient data are included." is printed
only for a kind whose content this version fully understands (``class_prompts``: labels, counts,
a domain text and plain parameters; ``captions``: the same plus one caption per image, each shown)
and only when nothing else is in the bytes; for captions also only when no caption still looks
like an identifier to the scrubber or names a file, for class_prompts only when the domain text
passes the scrubber again unchanged (``flagged_domain`` lists why not). For any other kind, or any
unexpected field, the report lists the raw keys with the size of each value and claims nothing.

``describe_payload`` gives plain text for a terminal; ``payload_summary`` the same facts as a
JSON-able map for ``--json``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

import msgpack

from protocol.payloads import MAX_DOMAIN_CHARS

from .errors import PayloadFileError

#: the statement a person may rely on; printed only when it is true of the bytes
NO_PATIENT_DATA = "No image pixels, file names or patient data are included."

#: top-level fields every payload kind has (protocol.payloads)
_COMMON_FIELDS = ("osfl_payload", "kind", "federation", "labels", "counts", "params", "bundle",
                  "created_ms", "data")
#: a parameter value longer than this (or not a plain value) voids the statement
_MAX_PLAIN_CHARS = MAX_DOMAIN_CHARS


def _method(kind: Any):
    """The edge module of a registered kind, or None for a kind this osfl-edge cannot describe."""
    from .methods import method

    try:
        return method(kind) if isinstance(kind, str) else None
    except KeyError:
        return None


def _unpack(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:
        raise PayloadFileError(f"the payload bytes ({len(raw)} bytes) are not valid msgpack "
                               f"({type(exc).__name__})") from exc


def _packed_size(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


def _plain(value: Any, depth: int = 0) -> bool:
    """True for small JSON-like values: what a method parameter should be."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= _MAX_PLAIN_CHARS
    if depth < 3 and isinstance(value, list):
        return len(value) <= 64 and all(_plain(v, depth + 1) for v in value)
    if depth < 3 and isinstance(value, dict):
        return len(value) <= 64 and all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _safe(text: Any) -> str:
    """Text for a terminal: control characters shown escaped, never interpreted."""
    s = str(text)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _created_utc(ms: Any) -> str | None:
    if not isinstance(ms, int) or isinstance(ms, bool):
        return None
    try:
        return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def payload_summary(payload: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """The facts of ``describe_payload`` as a JSON-able map, taken from ``raw`` (what uploads).

    ``matches_payload`` is False when ``payload`` and ``raw`` disagree; the summary then describes
    ``raw``. ``no_patient_data`` is True only when the statement ``NO_PATIENT_DATA`` holds.
    """
    content = _unpack(raw)
    if not isinstance(content, dict):
        raise PayloadFileError(f"the payload bytes decode to a {type(content).__name__}, not a map")
    kind = content.get("kind")
    data = content.get("data") if isinstance(content.get("data"), dict) else {}
    params = content.get("params") if isinstance(content.get("params"), dict) else {}
    labels = content.get("labels") if isinstance(content.get("labels"), list) else []
    counts = content.get("counts") if isinstance(content.get("counts"), list) else []

    rows = [{"label": _jsonable(label), "count": _jsonable(counts[i]) if i < len(counts) else None}
            for i, label in enumerate(labels)]
    total = sum(c for c in counts if isinstance(c, int) and not isinstance(c, bool))

    extra_fields = sorted(str(k) for k in content if k not in _COMMON_FIELDS)
    kind_module = _method(kind)
    allowed = kind_module.DATA_KEYS if kind_module is not None else None
    undescribed_data = sorted(str(k) for k in data if allowed is None or k not in allowed)
    matches = content == payload
    no_patient_data = (allowed is not None and not extra_fields and not undescribed_data and matches
                       and _plain(params) and all(isinstance(x, str) for x in labels))

    summary: dict[str, Any] = {
        "kind": _jsonable(kind),
        "federation": _jsonable(content.get("federation")),
        "format": _jsonable(content.get("osfl_payload")),
        "bundle": _jsonable(content.get("bundle")),
        "created_ms": _jsonable(content.get("created_ms")),
        "created_utc": _created_utc(content.get("created_ms")),
        "size_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "labels": rows,
        "total_images": total,
        "params": _jsonable(params),
        "data_sizes": {str(k): _packed_size(v) for k, v in data.items()},
        "undescribed_data": undescribed_data,
        "extra_fields": {str(k): _packed_size(content[k]) for k in content if str(k) in extra_fields},
        "matches_payload": matches,
        "no_patient_data": no_patient_data,
        "statement": NO_PATIENT_DATA if no_patient_data else None,
    }
    if kind_module is not None:
        kind_module.summarize(data, labels, summary, _jsonable)
    return summary


def describe_payload(payload: dict[str, Any], raw: bytes, scrub_log: list[dict[str, Any]] | None = None) -> str:
    """A plain-text report of exactly what would leave the building if ``raw`` were uploaded.

    ``scrub_log`` (captions: the side file ``prepare`` writes next to the payload) lists what the
    scrubber removed; it is shown as staying at the site.
    """
    s = payload_summary(payload, raw)
    out: list[str] = ["osfl payload: what would leave this site", ""]

    def field(name: str, value: Any) -> None:
        out.append(f"  {name + ':':<16} {value}")

    field("kind", _safe(s["kind"]))
    field("federation", _safe(s["federation"]))
    field("format version", _safe(s["format"]))
    field("bundle version", "(none)" if s["bundle"] is None else _safe(s["bundle"]))
    if s["created_utc"]:
        field("created", s["created_utc"])
    field("upload size", f"{s['size_bytes']} bytes (exactly these bytes are uploaded)")
    field("sha256", s["sha256"])
    out.append("")

    if not s["matches_payload"]:
        out += ["  WARNING: the payload in memory differs from its encoded bytes; this report",
                "  describes the bytes, which are what would be uploaded.", ""]

    labels = [_safe(r["label"]) for r in s["labels"]]
    counts = ["?" if r["count"] is None else _safe(r["count"]) for r in s["labels"]]
    w_label = max([len("label"), len("total"), *map(len, labels)])
    w_count = max([len("count"), len(str(s["total_images"])), *map(len, counts)])
    out.append(f"  {'label':<{w_label}}  {'count':>{w_count}}")
    out.append(f"  {'-' * w_label}  {'-' * w_count}")
    out += [f"  {label:<{w_label}}  {count:>{w_count}}" for label, count in zip(labels, counts)]
    out.append(f"  {'-' * w_label}  {'-' * w_count}")
    out.append(f"  {'total':<{w_label}}  {s['total_images']:>{w_count}}")
    out.append(f"  ({len(labels)} label(s))")
    out.append("")

    kind_module = _method(s["kind"])
    if kind_module is not None:
        kind_module.describe(s, out, scrub_log, field, _safe)
    if s["params"]:
        out.append("  params:")
        out += [f"    {_safe(k)} = {_safe(json.dumps(v, ensure_ascii=False, sort_keys=True))}"
                for k, v in sorted(s["params"].items())]
    else:
        field("params", "(none)")

    if s["undescribed_data"]:
        out.append("")
        out.append(f"  data this osfl-edge cannot describe for kind {_safe(s['kind'])!s}; review it before uploading:")
        out += [f"    {_safe(k)}: {s['data_sizes'][k]} bytes" for k in s["undescribed_data"]]
    if s["extra_fields"]:
        out.append("")
        out.append("  fields outside the payload format; review them before uploading:")
        out += [f"    {_safe(k)}: {n} bytes" for k, n in sorted(s["extra_fields"].items())]

    out.append("")
    if s["no_patient_data"]:
        out.append(NO_PATIENT_DATA)
    else:
        out.append("This report cannot vouch for the content above; check it before uploading.")
    return "\n".join(out) + "\n"
