"""Build a site's payload from its dataset, and write or read it as a file.

The payload format itself (fields, limits, msgpack encoding) belongs to ``protocol.payloads``;
this module fills it in from an ``ImageFolderDataset`` and the federation's settings, and checks
the site's side of the agreement first so a person gets an ``EdgeError`` naming the problem
instead of a rejection from the server.

Label order: when the federation's class list is known, the payload's ``labels`` follow the
federation's order and carry a count of 0 for classes this site lacks, so label index *i* means
the same class at every site. Without it, the dataset's sorted class ids are used.

Payload files are written atomically (temporary file, fsync, rename), so a crash leaves either the
old file or the new one, never half of one.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

from protocol import errors as PE
from protocol.payloads import (MAX_CAPTION_CHARS, MAX_DOMAIN_CHARS, MAX_LABEL_CHARS, PAYLOAD_FORMAT,
                               decode_payload, encode_payload)

from .dataset import ImageFolderDataset
from .errors import ConfigError, DatasetError, FederationMismatch, PayloadFileError

log = logging.getLogger(__name__)

#: how many federation classes a mismatch message lists before "and N more"
_MAX_LISTED = 20


def _listing(names: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _loose(name: str) -> str:
    """A spelling-insensitive key, only to suggest renames in error messages."""
    return " ".join(_norm(name).casefold().replace("_", " ").replace("-", " ").split())


def _check_common(federation_id: Any, params: Any, bundle: Any) -> dict[str, Any]:
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
        if _norm(c) in by_norm:
            raise ConfigError(f"the federation's class list names {c!r} twice; each class appears once")
        by_norm[_norm(c)] = c

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


def _labels_and_counts(dataset: ImageFolderDataset,
                       federation_classes: list[str] | None) -> tuple[list[str], list[int]]:
    """The payload's label map and counts: the site's classes, or the federation's order when known."""
    _check_labels(dataset)
    counts = dataset.counts()
    if federation_classes is None:
        return list(counts), list(counts.values())
    return _order_by_federation(counts, federation_classes)


def build_class_prompts(
    dataset: ImageFolderDataset,
    federation_id: str,
    *,
    domain: str | None = None,
    federation_classes: list[str] | None = None,
    params: dict[str, Any] | None = None,
    bundle: str | None = None,
) -> dict[str, Any]:
    """The ``class_prompts`` payload (FGL, class level) for this site: labels, counts, domain text.

    ``domain`` is an optional free-text description of the images' style or modality ("dermoscopy
    photographs"); a person types it, and ``describe_payload`` shows it before upload. When
    ``federation_classes`` is given every class folder must be one of them (else
    ``FederationMismatch``) and the labels follow the federation's order with 0 for missing
    classes. Raises ``ConfigError`` for bad settings, ``DatasetError`` for an unusable class name.
    """
    params = _check_common(federation_id, params, bundle)
    if domain is not None:
        if not isinstance(domain, str):
            raise ConfigError(f"the domain text must be a string; got {type(domain).__name__}")
        domain = domain.strip() or None
    if domain is not None and len(domain) > MAX_DOMAIN_CHARS:
        raise ConfigError(f"the domain text has {len(domain)} characters; at most {MAX_DOMAIN_CHARS} are allowed",
                          fix="shorten the domain description")
    labels, values = _labels_and_counts(dataset, federation_classes)

    payload: dict[str, Any] = {
        "osfl_payload": PAYLOAD_FORMAT,
        "kind": "class_prompts",
        "federation": federation_id,
        "labels": labels,
        "counts": values,
        "params": params,
        "bundle": bundle,
        "created_ms": int(time.time() * 1000),
        "data": {"domain": domain},
    }
    try:
        encode_payload(payload)  # validates, and proves the params can be packed
    except PE.InvalidPayload as exc:
        raise ConfigError(f"the payload built from these settings is not valid: {exc.message}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"the method parameters cannot be encoded ({type(exc).__name__}); expected strings, "
                          f"numbers, booleans, nil, lists and maps") from None
    return payload


def build_captions(
    dataset: ImageFolderDataset,
    captions: list[str],
    federation_id: str,
    *,
    federation_classes: list[str] | None = None,
    bundle: str | None = None,
    scrub_report: list[list[Any]] | int | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``captions`` payload (FGL, instance level): one caption per image with its label index.

    ``captions[i]`` describes ``dataset.files[i]`` and must already be scrubbed
    (``edge_client.scrub``); ``scrub_report`` is the scrubber's list of removals per caption (or
    their number) and only their count goes into the payload. No file name, path or image data is
    included. ``bundle`` is the edge model-bundle version that made the captions. Labels follow
    the federation's class list when given, as for ``build_class_prompts``.
    """
    params = _check_common(federation_id, params, bundle)
    if not isinstance(captions, (list, tuple)) or len(captions) != len(dataset.files):
        got = len(captions) if isinstance(captions, (list, tuple)) else type(captions).__name__
        raise ConfigError(f"one caption per image is needed: the dataset has {len(dataset.files)} image(s), "
                          f"got {got} caption(s)")
    for i, text in enumerate(captions):
        if not isinstance(text, str) or len(text) > MAX_CAPTION_CHARS or not text.isprintable():
            raise ConfigError(f"caption {i} must be printable text of at most {MAX_CAPTION_CHARS} characters "
                              f"(tidy it with edge_client.captioning.tidy_caption)")
    if scrub_report is None:
        scrubbed = 0
    elif isinstance(scrub_report, int) and not isinstance(scrub_report, bool) and scrub_report >= 0:
        scrubbed = scrub_report
    elif isinstance(scrub_report, (list, tuple)) and len(scrub_report) == len(captions):
        scrubbed = sum(len(r) for r in scrub_report)
    else:
        raise ConfigError("scrub_report must be the scrubber's removals per caption (one list per caption) "
                          "or their count")
    labels, values = _labels_and_counts(dataset, federation_classes)
    position = {label: i for i, label in enumerate(labels)}
    by_norm = {_norm(label): label for label in labels}
    to_label = [position[by_norm[_norm(name)]] for name in dataset.classes]
    items = [{"label_index": to_label[idx], "caption": text} for (_, idx), text in zip(dataset.files, captions)]

    payload: dict[str, Any] = {
        "osfl_payload": PAYLOAD_FORMAT,
        "kind": "captions",
        "federation": federation_id,
        "labels": labels,
        "counts": values,
        "params": params,
        "bundle": bundle,
        "created_ms": int(time.time() * 1000),
        "data": {"captions": items, "scrubbed": scrubbed},
    }
    try:
        encode_payload(payload)
    except PE.InvalidPayload as exc:
        raise ConfigError(f"the captions payload built here is not valid: {exc.message}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"the method parameters cannot be encoded ({type(exc).__name__})") from None
    return payload


def write_payload(path: str | os.PathLike[str], payload: dict[str, Any]) -> bytes:
    """Encode ``payload`` and write it to ``path`` atomically; return the exact bytes written.

    The file is created readable by this user only (it describes the site's data).
    """
    path = Path(path)
    try:
        raw = encode_payload(payload)
    except PE.InvalidPayload as exc:
        raise PayloadFileError(f"payload not written to {path}: {exc.message}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadFileError(f"payload not written to {path}: it cannot be encoded ({type(exc).__name__})") from None

    directory = path.parent if str(path.parent) else Path(".")
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(directory)
    except OSError as exc:
        raise PayloadFileError(f"cannot write payload file {path}: {exc.strerror or exc}",
                               fix="check that the folder exists, this user may write to it and the disk has space") from None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    log.info("wrote %s payload (%d bytes) to %s", payload.get("kind"), len(raw), path)
    return raw


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
