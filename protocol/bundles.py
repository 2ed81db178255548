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

The tar itself is read by ``TarReader``, strictly: only the layout the server's ``tarfile`` writes
(POSIX ustar headers with canonical fields and checksum, optional PAX ``path``/``size`` records,
regular files, zero padding, two zero blocks padded to a 10240-byte record, nothing after). It
streams, never seeks, and never holds more than one header (or ``MAX_PAX_BYTES``) in memory, so a
truncated, mutated or hostile tar is refused with ``MalformedBody`` rather than half-parsed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from . import errors as E
from .ids import is_id

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
ARTIFACT_PREFIX = "edge-bundle/"
LATEST = "latest"
META_KIND = "edge-bundle"
_SHA_RE = re.compile(r"[0-9a-f]{64}")
#: tar layout: header and padding unit, and the record the end-of-archive blocks are padded to
TAR_BLOCK = 512
TAR_RECORD = 10240
#: the largest PAX extended header and manifest.json a site reads into memory
MAX_PAX_BYTES = 64 << 10
MAX_MANIFEST_BYTES = 16 << 20
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
    folders = {path.rsplit("/", 1)[0] for path in files if isinstance(path, str) and "/" in path}
    folders |= {f.rsplit("/", i)[0] for f in folders for i in range(1, f.count("/") + 1)}
    for path, info in files.items():
        check_relpath(path)
        need(path != MANIFEST_NAME, f"'files' must not list {MANIFEST_NAME}")
        need(path not in folders and path.split("/", 1)[0] != MANIFEST_NAME,
             f"file {path[:80]!r} is also the folder of another listed file")
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


def check_signed(manifest: dict[str, Any], asked: str) -> dict[str, Any]:
    """The (verified) artifact manifest of a bundle the site asked for as ``asked``
    (``edge-bundle/<version>`` or ``edge-bundle/latest``): its name must be ``asked`` and its meta a
    bundle's, with a real version (the one asked for, unless ``latest``). Returns the meta."""
    if manifest.get("name") != asked:
        raise E.BadSignature(f"asked for {asked[:80]!r}, the server's signed manifest is for "
                             f"{str(manifest.get('name'))[:80]!r}")
    if not asked.startswith(ARTIFACT_PREFIX):
        raise E.MalformedBody(f"{asked[:80]!r} is not an edge bundle name")
    return check_meta(manifest.get("meta"), asked[len(ARTIFACT_PREFIX):])


class TarMember(NamedTuple):
    name: str
    size: int


_ZERO_BLOCK = bytes(TAR_BLOCK)
#: (start, end) of the ustar string fields: name, linkname, uname, gname, prefix
_STRINGS = ((0, 100), (157, 257), (265, 297), (297, 329), (345, 500))
#: (start, end) of the numeric fields: mode, uid, gid, size, mtime; then devmajor, devminor
_NUMBERS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148))
_DEVICES = ((329, 337), (337, 345))
#: the fixed header fields the server writes (``pack_bundle``): uid, gid, mtime 0, uname and gname
#: empty; mode 0o644 for a file, 0 for a PAX header. Pinned so that no header byte goes unchecked.
_FIXED = tuple((a, b"0" * (b - a - 1) + b"\0" if a < 265 else bytes(b - a))
               for a, b in ((108, 116), (116, 124), (136, 148), (265, 297), (297, 329)))
_FILE_MODE = {"0": 0o644, "\0": 0o644, "x": 0}
_PAX_KEYS = ("path", "size")


def _bad(msg: str) -> E.MalformedBody:
    return E.MalformedBody(f"bundle tar: {msg}")


def _octal(field: bytes) -> int:
    # tarfile writes len-1 zero-padded octal digits and a NUL; anything else is not its header
    if len(field) < 2 or field[-1] != 0 or not all(0x30 <= c <= 0x37 for c in field[:-1]):
        raise _bad("a header number is not in canonical octal form")
    return int(field[:-1], 8)


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    if end >= 0 and field[end:].count(0) != len(field) - end:
        raise _bad("a header text field has bytes after its end")
    try:
        return (field if end < 0 else field[:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("a header text field is not UTF-8") from None


def _check_header(block: bytes) -> str:
    """Checks of one ustar header block; returns its type flag."""
    chksum = b"%06o\x00 " % (sum(block[:148]) + 8 * 0x20 + sum(block[156:]))
    if block[148:156] != chksum:
        raise _bad("a header's checksum is wrong (the tar is corrupt)")
    if block[257:265] != b"ustar\x0000":
        raise _bad("a header is not a POSIX ustar header")
    if block[500:].count(0) != len(block) - 500:
        raise _bad("a header has bytes in its unused tail")
    kind = chr(block[156])
    if kind not in _FILE_MODE:
        raise _bad(f"a member of type {kind!r} is not a regular file")
    for a, b in _STRINGS:
        _text(block[a:b])
    for a, b in _NUMBERS:
        _octal(block[a:b])
    for a, b in _DEVICES:  # NULs (Python >= 3.9's tarfile) or zeros (older ones)
        if block[a:b] != bytes(b - a) and _octal(block[a:b]) != 0:
            raise _bad("a member has device numbers")
    if block[157] != 0:
        raise _bad("a member is a link")
    if _octal(block[100:108]) != _FILE_MODE[kind] or any(block[a:a + len(v)] != v for a, v in _FIXED):
        raise _bad("a header's mode, owner or time is not what the server writes")
    return kind


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits or not digits.isdigit() or digits.startswith(b"0"):
            raise _bad("a PAX record has no valid length")
        record = data[pos:pos + int(digits)]
        if len(record) != int(digits) or not record.endswith(b"\n"):
            raise _bad("a PAX record's length is wrong")
        key, eq, value = record[len(digits) + 1:-1].partition(b"=")
        try:
            k, v = key.decode("ascii"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("a PAX record is not UTF-8") from None
        if not eq or k not in _PAX_KEYS or k in out:
            raise _bad(f"PAX record {k[:20]!r} is not one a bundle uses (only path and size, once each)")
        if k == "size" and not (v.isdigit() and v.isascii() and (v == "0" or not v.startswith("0")) and len(v) < 20):
            raise _bad("a PAX size is not a decimal number")
        out[k] = v
        pos += len(record)
    return out


class TarReader:
    """Reads a bundle tar strictly and in one pass; every departure from the layout raises
    ``MalformedBody`` (see the module docstring). ``next()`` gives the next member (``None`` at
    the end, once the end-of-archive blocks are checked); ``read()`` its data."""

    def __init__(self, f: BinaryIO, total_size: int):
        self.f, self.total, self.pos = f, total_size, 0
        self._left = self._pad = 0
        self._done = False

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise _bad(f"it ends at byte {self.pos + len(data)}, inside a member or header (truncated)")
        self.pos += n
        return data

    def read(self, n: int = 1 << 20) -> bytes:
        """Up to ``n`` more bytes of the current member's data; ``b""`` once it is all read."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        data = self._read(n)
        self._left -= n
        return data

    def _zeros(self, n: int, what: str) -> None:
        while n > 0:
            step = min(n, 1 << 16)
            if self._read(step).count(0) != step:
                raise _bad(f"{what} is not zero")
            n -= step

    def next(self) -> TarMember | None:
        if self._done:
            return None
        while self.read():  # skip what the caller left unread
            pass
        self._zeros(self._pad, "the padding after a member")
        self._pad = 0
        block = self._read(TAR_BLOCK)
        if block == _ZERO_BLOCK:
            self._end()
            return None
        kind = _check_header(block)
        pax: dict[str, str] = {}
        if kind == "x":
            size = _octal(block[124:136])
            if size > MAX_PAX_BYTES:
                raise _bad(f"a PAX header of {size} bytes is larger than {MAX_PAX_BYTES}")
            pax = _parse_pax(self._read(size))
            self._zeros(-size % TAR_BLOCK, "the padding after a PAX header")
            block = self._read(TAR_BLOCK)
            if block == _ZERO_BLOCK:
                raise _bad("a PAX header is not followed by a member")
            kind = _check_header(block)
        if kind not in ("0", "\0"):
            raise _bad(f"a member of type {kind!r} is not a regular file")
        if "path" in pax:
            name = pax["path"]
            # tarfile also writes the name, cut to 100 ASCII bytes ('?' for others), in the ustar field
            if block[0:100] != name.encode("ascii", "replace")[:100].ljust(100, b"\0") or block[345:500].strip(b"\0"):
                raise _bad("a member's ustar name disagrees with its PAX path")
        else:
            prefix, base = _text(block[345:500]), _text(block[0:100])
            name = f"{prefix}/{base}" if prefix else base
        size = int(pax["size"]) if "size" in pax else _octal(block[124:136])
        if self.pos + size + (-size % TAR_BLOCK) + 2 * TAR_BLOCK > self.total:
            raise _bad(f"member {name[:80]!r} claims {size} bytes, more than the rest of the tar")
        self._left, self._pad = size, -size % TAR_BLOCK
        return TarMember(name, size)

    def _end(self) -> None:
        # two zero blocks, then zeros up to a whole record: exactly what tarfile writes, nothing more
        end = self.pos - TAR_BLOCK
        expected = -(-(end + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD
        if self.total != expected:
            raise _bad(f"it is {self.total} bytes; after its last member it should end at byte {expected}")
        self._zeros(expected - self.pos, "the end of the archive")
        if self.f.read(1):
            raise _bad("it has bytes after the end of the archive")
        self._done = True
