"""What every payload kind shares at the site: labels and counts, the common fields, the file.

The payload format itself (fields, limits, msgpack encoding) belongs to ``protocol.payloads``; the
builders of each kind are ``edge_client/methods/<kind>.py``. They use the helpers here, which check
the site's side of the agreement first so a person gets an ``EdgeError`` naming the problem instead
of a rejection from the server.

Label order: when the federation's class list is known, the payload's ``labels`` follow the
federation's order and carry a count of 0 for classes this site lacks, so label index *i* means
the same class at every site. Without it, the dataset's sorted class ids are used.

Payload files are written atomically (temporary file, fsync, rename), so a crash leaves either the
old file or the new one, never half of one.
"""
from __future__ import annotations

import logging
import os
import time
import unicodedata
from pathlib import Path
from typing import Any

from protocol import errors as PE
from protocol.files import atomic_write
from protocol.payloads import MAX_LABEL_CHARS, PAYLOAD_FORMAT, decode_payload, encode_payload

from .dataset import ImageFolderDataset
from .errors import ConfigError, DatasetError, FederationMismatch, PayloadFileError

log = logging.getLogger(__name__)

#: how many federation classes a mismatch message lists before "and N more"
_MAX_LISTED = 20


def _listing(names: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def norm(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _loose(name: str) -> str:
    """A spelling-insensitive key, only to suggest renames in error messages."""
    return " ".join(norm(name).casefold().replace("_", " ").replace("-", " ").split())


def check_common(federation_id: Any, params: Any, bundle: Any) -> dict[str, Any]:
    if not isinstance(federation_id, str) or not 0 < len(federation_id) <= 64:
        raise ConfigError(f"federation id must be a string of 1 to 64 characters; got {federation_id!r:.80}",
                          fix="set the federation id the operator gave you")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"method parameters must be a map; got {type(params).__name__}")
    bad_keys = [k for k in params if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"method parameter names must be strings; got {_listing([str(k) for k in bad_keys])}")
    if bundle is not None and not isinstance(bundle, str):
        raise ConfigError(f"the edge model-bundle version must be a string or absent; got {type(bundle).__name__}")
    return dict(params)


def _check_labels(dataset: ImageFolderDataset) -> None:
    for name in dataset.classes:
        if len(name) > MAX_LABEL_CHARS:
            raise DatasetError(f"class folder name {name[:40]!r}... has {len(name)} characters; a class id "
                               f"has at most {MAX_LABEL_CHARS}",
                               fix="rename the class folder to the federation's class name")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise DatasetError(f"class folder name {name!r} is not valid UTF-8 (the file system gave "
                               f"undecodable bytes)",
                               fix="rename the class folder to the federation's class name") from None


def _order_by_federation(counts: dict[str, int], federation_classes: list[str]) -> tuple[list[str], list[int]]:
    if not isinstance(federation_classes, (list, tuple)) or not federation_classes:
        raise ConfigError("the federation's class list must be a non-empty list of class names; "
                          f"got {type(federation_classes).__name__}")
    if not all(isinstance(c, str) and c for c in federation_classes):
        raise ConfigError("every class of the federation must be a non-empty string")
    by_norm: dict[str, str] = {}
    for c in federation_classes:
        if norm(c) in by_norm:
            raise ConfigError(f"the federation's class list names {c!r} twice; each class appears once")
        by_norm[norm(c)] = c

    unknown = [name for name in counts if name not in by_norm]
    if unknown:
        loose = {_loose(c): c for c in federation_classes}
        hints = [f"{u!r} -> {loose[_loose(u)]!r}" for u in unknown if _loose(u) in loose]
        hint = f"; did you mean (rename the folder): {', '.join(hints)}" if hints else ""
        raise FederationMismatch(
            f"{len(unknown)} class folder(s) of this site are not classes of the federation: "
            f"{_listing(unknown)}; the federation's classes are {_listing(list(federation_classes))}{hint}")
    labels = list(federation_classes)
    site = {by_norm[name]: n for name, n in counts.items()}
    return labels, [site.get(label, 0) for label in labels]


def finish_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Check a payload built here with the protocol's own rules; ``ConfigError`` naming the problem."""
    try:
        encode_payload(payload)  # validates, and proves the params can be packed
    except PE.InvalidPayload as exc:
        raise ConfigError(f"the {payload.get('kind')} payload built from these settings is not valid: "
                          f"{exc.message}") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"the method parameters cannot be encoded ({type(exc).__name__}); expected strings, "
                          f"numbers, booleans, nil, lists and maps") from exc
    return payload


def payload_head(kind: str, federation_id: str, labels: list[str], counts: list[int], params: dict[str, Any],
                 bundle: str | None) -> dict[str, Any]:
    """The fields every kind shares, in the order of SPEC.md (``data`` is added last by the kind)."""
    return {"osfl_payload": PAYLOAD_FORMAT, "kind": kind, "federation": federation_id, "labels": labels,
            "counts": counts, "params": params, "bundle": bundle, "created_ms": int(time.time() * 1000)}


def labels_and_counts(dataset: ImageFolderDataset,
                       federation_classes: list[str] | None) -> tuple[list[str], list[int]]:
    """The payload's label map and counts: the site's classes, or the federation's order when known."""
    _check_labels(dataset)
    counts = dataset.counts()
    if federation_classes is None:
        return list(counts), list(counts.values())
    return _order_by_federation(counts, federation_classes)


def write_payload(path: str | os.PathLike[str], payload: dict[str, Any]) -> bytes:
    """Encode ``payload`` and write it to ``path`` atomically; return the exact bytes written.

    The file is created readable by this user only (it describes the site's data).
    """
    path = Path(path)
    try:
        raw = encode_payload(payload)
    except PE.InvalidPayload as exc:
        raise PayloadFileError(f"payload not written to {path}: {exc.message}") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadFileError(f"payload not written to {path}: it cannot be encoded ({type(exc).__name__})") from exc

    try:
        atomic_write(path, raw, mode=0o600)
    except OSError as exc:
        raise PayloadFileError(f"cannot write payload file {path}: {exc.strerror or exc}",
                               fix="check that the folder exists, this user may write to it and the disk has space"
                               ) from exc
    log.info("wrote %s payload (%d bytes) to %s", payload.get("kind"), len(raw), path)
    return raw


def read_payload(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """Read and validate a payload file; return ``(payload, raw bytes)``, the bytes being what uploads."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PayloadFileError(f"no payload file at {path}",
                               fix="build the payload first, or give the path it was written to") from None
    except IsADirectoryError:
        raise PayloadFileError(f"payload path {path} is a folder, not a file",
                               fix="give the path of the payload file") from None
    except OSError as exc:
        raise PayloadFileError(f"cannot read payload file {path}: {exc.strerror or exc}",
                               fix="check that this user may read the file") from None
    if not raw:
        raise PayloadFileError(f"payload file {path} is empty (0 bytes); expected a msgpack payload")
    try:
        payload = decode_payload(raw)
    except PE.InvalidPayload as exc:
        raise PayloadFileError(f"payload file {path} ({len(raw)} bytes) is corrupt or not an osfl payload: "
                               f"{exc.message}") from None
    return payload, raw
