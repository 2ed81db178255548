"""Signed artifacts: files the server hands to sites (the global model, the edge model bundle).

The server signs a *manifest* with its Ed25519 key (the one pinned in every site's server key
string): ``SIGNATURE_CONTEXT_ARTIFACT | manifest bytes``, where the manifest is a msgpack map
``{"name", "size", "sha256", "meta", "created_ms"}``. A site downloads the file in chunks, then
checks the manifest signature, the manifest's name (the one it asked for) and the file's sha256
before it moves the file into place, so a file that did not come from the pinned server, or that
the server signed under another name, is never used. ``created_ms`` orders two manifests of the
same name: a site refuses to replace what it has with an older one unless told to
(``is_older``).
"""
from __future__ import annotations

import re
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import errors as E
from .ids import ID_PATTERN

SIGNATURE_CONTEXT_ARTIFACT = b"osfl-artifact\x00"
#: artifact names: "model/<federation>" for a global model, "edge-bundle/<version>" for edge models
NAME_RE = re.compile(rf"[a-z][a-z0-9-]{{0,31}}/{ID_PATTERN}")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise E.MalformedBody("an artifact name looks like 'model/<federation>' or 'edge-bundle/<version>'")
    return name


def manifest_bytes(name: str, size: int, sha256: bytes, meta: dict[str, Any], created_ms: int) -> bytes:
    check_name(name)
    return msgpack.packb({"name": name, "size": size, "sha256": sha256, "meta": meta, "created_ms": created_ms},
                         use_bin_type=True)


def sign_manifest(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    return key.sign(SIGNATURE_CONTEXT_ARTIFACT + manifest)


def verify_manifest(server_sign_public: bytes, manifest: bytes, signature: bytes,
                    name: str | None = None) -> dict[str, Any]:
    """Check the server's signature, then decode; with ``name``, check it is that artifact's manifest.

    Raises BadSignature (not signed by the key, or signed for another name: the signature does not
    vouch for what was asked) or MalformedBody.
    """
    try:
        Ed25519PublicKey.from_public_bytes(server_sign_public).verify(signature, SIGNATURE_CONTEXT_ARTIFACT + manifest)
    except (InvalidSignature, ValueError):
        raise E.BadSignature("the artifact manifest is not signed by the pinned server key; refusing it") from None
    try:
        m = msgpack.unpackb(manifest, raw=False, strict_map_key=True)
        ok = (isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("size"), int)
              and isinstance(m.get("sha256"), bytes) and len(m["sha256"]) == 32 and isinstance(m.get("meta"), dict)
              and isinstance(m.get("created_ms"), int) and not isinstance(m["created_ms"], bool))
    except Exception:
        ok = False
    if not ok:
        raise E.MalformedBody("the artifact manifest lacks name, size, sha256, meta or created_ms")
    if name is not None and m["name"] != name:
        raise E.BadSignature(f"asked for {name[:80]!r}, the server's signed manifest is for {m['name'][:80]!r}; "
                             f"refusing it")
    return m


def is_older(offered: dict[str, Any], installed: dict[str, Any]) -> bool:
    """Whether the ``offered`` (verified) manifest was signed before the ``installed`` one.

    The site refuses such a downgrade unless its user asks for it (``--allow-downgrade``): a
    replayed old, validly signed manifest must not silently bring back an old model.
    """
    return int(offered["created_ms"]) < int(installed["created_ms"])


def signed_at(manifest: dict[str, Any]) -> str:
    """When the server signed ``manifest``, for messages: ``2026-01-02 03:04:05 UTC``."""
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(int(manifest["created_ms"]) / 1000, tz=timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return f"created_ms={manifest.get('created_ms')!r}"
