"""The site's copy of the edge model bundle: pull it from the server, unpack it safely, check it before use.

Layout under the site home (``osfl-edge --home``)::

    edge-models/
      current                  the version in use (one line)
      downloads/               the tar while it downloads (resumable; removed once unpacked)
      bundles/<version>/       manifest.json, the model files, and signed.msgpack

``pull`` downloads ``edge-bundle/<version>`` (default ``latest``) through the signed, chunked,
resumable ``Client.download``: the signed manifest must be for the name asked (for ``latest``, its
meta names the real version, which is what gets installed and recorded in ``current``), must not
be older than the current bundle's signed manifest (unless ``allow_downgrade``), and the tar's
sha256 must match it. The tar is then read strictly (``protocol.bundles.TarReader``: any
truncated, corrupt or odd tar is refused) into a temporary folder next to ``bundles/``; every
member must be listed in ``manifest.json`` with the same size and sha256, and ``manifest.json``
itself must have the sha256 the signed meta names. Only then is the folder renamed into place and
``current`` switched, so a crash or a tampered file never leaves a half-installed bundle in use.

``load_bundle`` checks an installed bundle before use: the stored signature against the pinned
server key, the manifest's sha256 against the signed meta, and every file's size (or, with
``full=True``, its sha256). Format: ``protocol/bundles.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack

from protocol import errors as PE
from protocol.artifacts import is_older, signed_at, verify_manifest
from protocol.bundles import (LATEST, MANIFEST_NAME, MAX_MANIFEST_BYTES, TarReader, artifact_name, check_meta,
                              check_signed, check_version, parse_manifest)
from protocol.files import atomic_write, file_sha256

from .errors import BundleError, DowngradeRefused, IntegrityError

log = logging.getLogger(__name__)

SIGNED_NAME = "signed.msgpack"
_REPULL = ("run `osfl-edge models pull` to install it again; if the check keeps failing, tell the operator "
           "(someone may be tampering with it)")


@dataclass(frozen=True)
class Bundle:
    """An installed, checked bundle: its folder, version and manifest."""

    path: Path
    version: str
    manifest: dict[str, Any]

    def model(self, role: str) -> dict[str, Any]:
        entry = self.manifest["models"].get(role)
        if entry is None:
            have = ", ".join(sorted(self.manifest["models"])) or "none"
            raise BundleError(f"edge model bundle {self.version} has no {role} (it has: {have})",
                              fix="ask the operator to export a bundle with it (`osfl-server edge-models export`), "
                                  "then run `osfl-edge models pull`")
        return entry

    def file(self, rel: str) -> Path:
        return self.path / rel


def models_dir(home: Path) -> Path:
    """Where bundles live: ``HOME/edge-models`` (``HOME/models`` holds fetched global models)."""
    return Path(home) / "edge-models"


def current_version(home: Path) -> str | None:
    path = models_dir(home) / "current"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def installed_versions(home: Path) -> list[str]:
    root = models_dir(home) / "bundles"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / MANIFEST_NAME).exists())


def _download_dest(home: Path, name: str) -> Path:
    return models_dir(home) / "downloads" / (name.replace("/", "--") + ".tar")


def pull(client, home: Path, version: str | None = None,
         on_progress: Callable[[int, int], None] | None = None, *, allow_downgrade: bool = False) -> Bundle:
    """Download, verify and install bundle ``version`` (default: the server's latest); make it current.

    A bad signature or digest on download is the transport's ``BadSignature`` /
    ``PayloadDigestMismatch``; a manifest signed for another name, or a tar whose content disagrees
    with its signed manifest, is an ``IntegrityError``; a bundle signed before the current one is a
    ``DowngradeRefused`` (checked before a byte of the tar is fetched) unless ``allow_downgrade``.
    Either way nothing is installed.
    """
    wanted = version or LATEST
    try:
        name = artifact_name(wanted)
    except PE.ProtocolError:
        raise BundleError(f"{wanted!r} is not a bundle version", fix="give a version such as 2026.1, or none for the latest") from None
    dest = _download_dest(home, name)

    def accept(manifest: dict[str, Any]) -> None:
        _signed_meta(manifest, name)
        check_downgrade(home, manifest, allow_downgrade)

    try:
        manifest = client.download(name, dest, on_progress=on_progress, accept=accept)  # signature and sha256 checked
        meta = _signed_meta(manifest, name)
        side = dest.with_name(dest.name + ".manifest")
        bundle = install(dest, home, meta, side.read_bytes(), allow_downgrade=allow_downgrade)
    finally:
        dest.unlink(missing_ok=True)
        dest.with_name(dest.name + ".manifest").unlink(missing_ok=True)
    if wanted == LATEST:
        log.info("%s is edge model bundle %s, now current", name, bundle.version)
    return bundle


def _signed_meta(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        return check_signed(manifest, name)
    except PE.BadSignature as exc:
        raise IntegrityError(f"{name}: {exc.message}; nothing was installed") from None
    except PE.ProtocolError as exc:
        raise BundleError(f"{name}: {exc.message}", fix="ask the operator to publish the bundle again") from None


def _stored_manifest(path: Path) -> dict[str, Any] | None:
    """The artifact manifest in a bundle folder's ``signed.msgpack`` (not verified), or None."""
    try:
        stored = msgpack.unpackb((path / SIGNED_NAME).read_bytes(), raw=False)
        manifest = msgpack.unpackb(stored["manifest"], raw=False)
        int(manifest["created_ms"])
        return manifest if isinstance(manifest.get("meta"), dict) else None
    except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException):
        return None


def check_downgrade(home: Path, offered: dict[str, Any], allow: bool = False) -> None:
    """Refuse a bundle signed before the current one (``DowngradeRefused``), unless ``allow``.

    The same version again is never a downgrade (``edge-bundle/<v>`` and ``edge-bundle/latest``
    are signed a moment apart); a current bundle whose signed manifest is unreadable is not
    compared (it fails ``load_bundle`` and gets replaced).
    """
    current = current_version(home)
    version = offered.get("meta", {}).get("version")
    if current is None or version == current:
        return
    installed = _stored_manifest(models_dir(home) / "bundles" / current)
    if installed is None:
        log.warning("the current edge model bundle %s has no readable signed manifest; not comparing dates", current)
        return
    if not is_older(offered, installed):
        return
    what = (f"the offered edge model bundle {str(version)[:64]} ({offered.get('name')}, signed {signed_at(offered)}) "
            f"is older than the installed {current} (signed {signed_at(installed)})")
    if not allow:
        raise DowngradeRefused(f"{what}; refusing to downgrade, nothing was installed")
    log.warning("%s; installing it anyway (--allow-downgrade)", what)


def install(tar_path: Path, home: Path, meta: dict[str, Any], signed: bytes, *,
            allow_downgrade: bool = False) -> Bundle:
    """Unpack a downloaded bundle tar into ``models/bundles/<version>``, checking every member.

    ``signed`` is the verified ``{"manifest", "signature"}`` the download kept; a bundle signed
    before the current one is refused unless ``allow_downgrade``.
    """
    version = check_version(meta["version"])
    try:
        offered = msgpack.unpackb(msgpack.unpackb(signed, raw=False)["manifest"], raw=False)
        int(offered["created_ms"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        raise IntegrityError(f"edge model bundle {version}: its signed manifest is unreadable; nothing was installed",
                             fix=_REPULL) from None
    check_downgrade(home, offered, allow_downgrade)
    root = models_dir(home) / "bundles"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = root / version
    if final.exists():
        try:
            bundle = _check(final, meta, full=True)
        except (BundleError, IntegrityError) as exc:
            log.warning("installed bundle %s fails its check (%s); installing it again", version, exc.message)
            shutil.rmtree(final)
        else:
            atomic_write(final / SIGNED_NAME, signed, mode=0o644)
            set_current(home, version)
            return bundle
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    try:
        _unpack(tar_path, tmp, meta)
        atomic_write(tmp / SIGNED_NAME, signed, mode=0o644)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    set_current(home, version)
    return Bundle(final, version, parse_manifest((final / MANIFEST_NAME).read_bytes()))


def _unpack(tar_path: Path, dest: Path, meta: dict[str, Any]) -> None:
    def refuse(msg: str) -> IntegrityError:
        return IntegrityError(f"edge model bundle {meta['version']}: {msg}; nothing was installed",
                           fix="run `osfl-edge models pull` again; if it repeats, tell the operator")

    try:
        with open(tar_path, "rb") as f:
            _unpack_members(TarReader(f, os.fstat(f.fileno()).st_size), dest, meta, refuse)
    except PE.ProtocolError as exc:  # the tar's layout (TarReader)
        raise refuse(exc.message) from None


def _unpack_members(tar: TarReader, dest: Path, meta: dict[str, Any], refuse: Callable[[str], IntegrityError]) -> None:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME:
        raise refuse(f"the tar does not start with {MANIFEST_NAME}")
    if first.size > MAX_MANIFEST_BYTES:
        raise refuse(f"{MANIFEST_NAME} has {first.size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may")
    raw = tar.read(first.size)
    if hashlib.sha256(raw).hexdigest() != meta["manifest_sha256"]:
        raise refuse(f"{MANIFEST_NAME} is not the one the server signed (sha256 differs)")
    try:
        manifest = parse_manifest(raw)
    except PE.ProtocolError as exc:
        raise refuse(exc.message) from None
    if manifest["version"] != meta["version"]:
        raise refuse(f"the manifest says version {manifest['version']!r}")
    (dest / MANIFEST_NAME).write_bytes(raw)
    expected = manifest["files"]
    order = sorted(expected)  # the order pack_bundle writes them in: anything else is not its tar
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        rel = member.name
        if len(seen) >= len(order) or rel != order[len(seen)]:
            why = "not a listed file" if rel not in expected else "listed twice" if rel in seen else "out of order"
            raise refuse(f"unexpected tar member {rel[:80]!r} ({why}; the listed files come in sorted order)")
        info = expected[rel]
        if member.size != info["size"]:
            raise refuse(f"{rel} has {member.size} bytes, the manifest says {info['size']}")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(target, "wb") as out:
            for block in iter(tar.read, b""):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != info["sha256"]:
            raise refuse(f"{rel} does not match its sha256 in the manifest (changed or corrupt)")
        seen.add(rel)
    missing = sorted(set(expected) - seen)
    if missing:
        raise refuse(f"{len(missing)} file(s) listed in the manifest are missing from the tar, e.g. {missing[0]}")


def set_current(home: Path, version: str) -> None:
    check_version(version)
    root = models_dir(home)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(root / "current", version + "\n", mode=0o644)


def _check(path: Path, meta: dict[str, Any], *, full: bool) -> Bundle:
    version = meta["version"]
    try:
        raw = (path / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"edge model bundle {version} at {path} has no {MANIFEST_NAME}") from None
    if hashlib.sha256(raw).hexdigest() != meta["manifest_sha256"]:
        raise IntegrityError(f"edge model bundle {version}: {MANIFEST_NAME} was changed after it was installed",
                             fix=_REPULL)
    try:
        manifest = parse_manifest(raw)
    except PE.ProtocolError as exc:
        raise IntegrityError(f"edge model bundle {version}: {exc.message}", fix=_REPULL) from None
    for rel, info in manifest["files"].items():
        f = path / rel
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"edge model bundle {version}: {rel} is missing", fix=_REPULL) from None
        if size != info["size"] or (full and file_sha256(f) != info["sha256"]):
            raise IntegrityError(f"edge model bundle {version}: {rel} was changed on disk (size or sha256 differs "
                                 f"from the signed manifest)", fix=_REPULL)
    return Bundle(path, version, manifest)


def load_bundle(home: Path, server_sign_public: bytes, version: str | None = None, *, full: bool = False) -> Bundle:
    """The installed bundle ``version`` (default: current), checked against the pinned server key.

    Checks the stored server signature, the manifest's sha256 and each file's size; ``full=True``
    hashes every file too. Raises ``BundleError`` (exit code MODELS) when nothing is installed,
    ``IntegrityError`` (INTEGRITY) when a check fails; each says how to fix it.
    """
    version = version or current_version(home)
    if version is None:
        raise BundleError(f"no edge model bundle is installed in {models_dir(home)}",
                          fix="run `osfl-edge models pull` (the server sends its signed captioner bundle)")
    path = models_dir(home) / "bundles" / version
    try:
        stored = msgpack.unpackb((path / SIGNED_NAME).read_bytes(), raw=False)
        signed = verify_manifest(server_sign_public, stored["manifest"], stored["signature"])
        meta = check_meta(signed["meta"], version)
        if signed["name"] not in (artifact_name(version), artifact_name(LATEST)):
            raise PE.BadSignature(f"its stored signed manifest is for {signed['name'][:80]!r}")
    except FileNotFoundError:
        raise BundleError(f"edge model bundle {version} is not installed in {models_dir(home)}") from None
    except PE.ProtocolError as exc:
        raise IntegrityError(f"edge model bundle {version}: {exc.message}", fix=_REPULL) from None
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        raise IntegrityError(f"edge model bundle {version}: its stored signature is unreadable", fix=_REPULL) from None
    return _check(path, meta, full=full)


def describe(home: Path) -> list[dict[str, Any]]:
    """Installed bundles for ``osfl-edge models list``: version, current, models, size."""
    cur = current_version(home)
    rows = []
    for version in installed_versions(home):
        path = models_dir(home) / "bundles" / version
        try:
            manifest = json.loads((path / MANIFEST_NAME).read_text())
            models = {role: entry.get("kind") for role, entry in manifest.get("models", {}).items()}
            size = sum(int(f.get("size", 0)) for f in manifest.get("files", {}).values())
            created = manifest.get("created_ms")
        except (OSError, ValueError, AttributeError):
            models, size, created = {}, 0, None
        rows.append({"version": version, "current": version == cur, "models": models, "size": size,
                     "created_ms": created, "path": str(path)})
    return rows
