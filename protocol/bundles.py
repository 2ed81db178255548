"""The edge model bundle: what the server exports for sites and both sides agree on.

A bundle is one uncompressed tar file, published as the signed artifact
``edge-bundle/<version>`` (and again as ``edge-bundle/latest``). Its first member is
``manifest.json``; the rest are the files the manifest lists::

    {"format": 1, "version": "2026.1", "created_ms": ...,
     "files":  {"captioner/vision.onnx": {"sha256": "<64 hex>", "size": 123}, ...},
     "models": {"captioner": {"kind": "blip2-opt", "files": {...}, ...},
                "vae_encoder": {...}, "classifier": {...}},
     "versions": {"osfl": "0.1.0", "torch": "...", "transformers": "...", "onnx_opset": 17, ...}}

Trust chain: the server signs the artifact manifest (``protocol.artifacts``), whose ``meta``
holds ``{"kind": "edge-bundle", "version", "manifest_sha256"}``; ``manifest_sha256`` pins the
exact ``manifest.json`` bytes, which pin every file by sha256. So a site can check any unpacked
file against the server's key long after the tar is gone.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import errors as E
from .ids import is_id

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
ARTIFACT_PREFIX = "edge-bundle/"
LATEST = "latest"
META_KIND = "edge-bundle"
_SHA_RE = re.compile(r"[0-9a-f]{64}")
#: model roles a bundle may carry
MODEL_ROLES = ("captioner", "vae_encoder", "classifier")


def check_version(version: Any) -> str:
    """A bundle version: 1-64 letters, digits, '.', '_' or '-'; "latest" is reserved for the alias."""
    if not isinstance(version, str) or not is_id(version) or version == LATEST:
        raise E.MalformedBody("a bundle version is 1-64 letters, digits, '.', '_' or '-' (not 'latest')")
    return version


def artifact_name(version: str) -> str:
    """``edge-bundle/<version>``, or ``edge-bundle/latest`` for ``version="latest"``."""
    if version != LATEST:
        check_version(version)
    return ARTIFACT_PREFIX + version


def check_relpath(path: Any) -> str:
    """A file path inside a bundle: relative, '/'-separated, no '..', no empty or hidden parts."""
    ok = (isinstance(path, str) and 0 < len(path) <= 255 and not path.startswith("/") and "\\" not in path
          and "\x00" not in path and all(part and part not in (".", "..") and not part.startswith(".")
                                         for part in path.split("/")))
    if not ok:
        raise E.MalformedBody("a bundle file path is relative, '/'-separated, without '..' or hidden parts")
    return path


def validate_manifest(m: Any) -> dict[str, Any]:
    """Structural checks of a decoded ``manifest.json``; raises ``MalformedBody``."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise E.MalformedBody(f"bundle manifest: {msg}")

    need(isinstance(m, dict), "not a JSON object")
    need(m.get("format") == BUNDLE_FORMAT, f"format {m.get('format')!r} is not {BUNDLE_FORMAT}; update osfl")
    check_version(m.get("version"))
    files = m.get("files")
    need(isinstance(files, dict) and files, "'files' must be a non-empty map")
    for path, info in files.items():
        check_relpath(path)
        need(path != MANIFEST_NAME, f"'files' must not list {MANIFEST_NAME}")
        need(isinstance(info, dict) and isinstance(info.get("sha256"), str)
             and bool(_SHA_RE.fullmatch(info["sha256"])) and isinstance(info.get("size"), int) and info["size"] >= 0,
             f"file {path!r} needs a sha256 (64 hex digits) and a size")
    models = m.get("models")
    need(isinstance(models, dict) and models, "'models' must be a non-empty map")
    for role, entry in models.items():
        need(role in MODEL_ROLES, f"unknown model role {role!r}; expected {', '.join(MODEL_ROLES)}")
        need(isinstance(entry, dict) and isinstance(entry.get("kind"), str), f"model {role!r} needs a kind")
        listed = entry.get("files")
        need(isinstance(listed, dict), f"model {role!r} needs a 'files' map")
        for group in listed.values():
            need(isinstance(group, list) and all(p in files for p in group),
                 f"model {role!r} names a file that 'files' does not list")
    need(isinstance(m.get("versions", {}), dict), "'versions' must be a map")
    return m


def parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise E.MalformedBody("bundle manifest: not UTF-8 JSON") from None
    return validate_manifest(m)


def dump_manifest(m: dict[str, Any]) -> bytes:
    """The canonical bytes of a manifest (sorted keys, UTF-8), as written into the bundle."""
    validate_manifest(m)
    return json.dumps(m, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


def check_meta(meta: Any, version: str | None = None) -> dict[str, Any]:
    """The signed artifact ``meta`` of a bundle; ``version`` when the caller asked for one."""
    ok = (isinstance(meta, dict) and meta.get("kind") == META_KIND and isinstance(meta.get("manifest_sha256"), str)
          and bool(_SHA_RE.fullmatch(meta["manifest_sha256"])))
    if not ok:
        raise E.MalformedBody("the artifact is not an edge model bundle (its signed meta lacks kind or manifest_sha256)")
    check_version(meta.get("version"))
    if version is not None and version != LATEST and meta["version"] != version:
        raise E.MalformedBody(f"asked for bundle {version!r}, the server's signed manifest is for {meta['version']!r}")
    return meta
