"""Signed artifact names and dates, and the strict bundle tar layout (protocol side of issue rows 10, 12)."""
from __future__ import annotations

import io
import random
import tarfile

import msgpack
import pytest

from protocol import errors as E
from protocol.artifacts import is_older, manifest_bytes, sign_manifest, signed_at, verify_manifest
from protocol.bundles import MAX_PAX_BYTES, TAR_RECORD, TarReader, check_signed, validate_manifest
from protocol.keys import KeyPair

KEY = KeyPair.generate()
SHA = "ab" * 32
META = {"kind": "edge-bundle", "version": "2026.2", "format": 1, "manifest_sha256": SHA, "models": ["captioner"]}


def signed(name: str, meta: dict | None = None, created_ms: int = 1_700_000_000_000) -> tuple[bytes, bytes]:
    m = manifest_bytes(name, 10, b"\1" * 32, meta if meta is not None else {"kind": "onnx"}, created_ms)
    return m, sign_manifest(KEY.signing, m)


def test_verify_manifest_checks_the_name_when_given():
    m, sig = signed("model/fed1")
    assert verify_manifest(KEY.public, m, sig)["name"] == "model/fed1"
    assert verify_manifest(KEY.public, m, sig, name="model/fed1")["name"] == "model/fed1"
    with pytest.raises(E.BadSignature, match="model/other-fed.*model/fed1"):
        verify_manifest(KEY.public, m, sig, name="model/other-fed")


def test_verify_manifest_needs_created_ms():
    raw = msgpack.packb({"name": "model/fed1", "size": 1, "sha256": b"\0" * 32, "meta": {}}, use_bin_type=True)
    with pytest.raises(E.MalformedBody, match="created_ms"):
        verify_manifest(KEY.public, raw, sign_manifest(KEY.signing, raw))


def test_is_older_and_signed_at():
    old, new = ({"created_ms": t} for t in (1_000, 2_000))
    assert is_older(old, new) and not is_older(new, old) and not is_older(new, new)
    assert signed_at({"created_ms": 0}) == "1970-01-01 00:00:00 UTC"
    assert "created_ms" in signed_at({"created_ms": 10 ** 30})


@pytest.mark.parametrize("name, asked, meta, error", [
    ("edge-bundle/latest", "edge-bundle/latest", META, None),
    ("edge-bundle/2026.2", "edge-bundle/2026.2", META, None),
    ("edge-bundle/2026.1", "edge-bundle/latest", META, E.BadSignature),  # another name
    ("model/fed1", "edge-bundle/latest", META, E.BadSignature),
    ("edge-bundle/2026.1", "edge-bundle/2026.1", META, E.MalformedBody),  # meta names 2026.2
    ("edge-bundle/latest", "edge-bundle/latest", dict(META, version="latest"), E.MalformedBody),
    ("edge-bundle/latest", "edge-bundle/latest", dict(META, kind="onnx"), E.MalformedBody),
])
def test_check_signed(name, asked, meta, error):
    manifest = verify_manifest(KEY.public, *signed(name, meta))
    if error is None:
        assert check_signed(manifest, asked)["version"] == "2026.2"
    else:
        with pytest.raises(error):
            check_signed(manifest, asked)


def test_a_file_may_not_also_be_a_folder():
    files = {"captioner": {"sha256": SHA, "size": 1}, "captioner/vision.onnx": {"sha256": SHA, "size": 1}}
    m = {"format": 1, "version": "v1", "files": files,
         "models": {"captioner": {"kind": "x", "files": {"a": ["captioner/vision.onnx"]}}}}
    with pytest.raises(E.MalformedBody, match="folder"):
        validate_manifest(m)
    del files["captioner"]
    validate_manifest(m)


def _tar(members: list[tuple[str, bytes]], fmt=tarfile.PAX_FORMAT, **kw) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in kw.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _read_all(data: bytes) -> list[tuple[str, bytes]]:
    reader = TarReader(io.BytesIO(data), len(data))
    out = []
    while (m := reader.next()) is not None:
        out.append((m.name, reader.read(1 << 30)))
    return out


def test_reader_reads_what_tarfile_writes_including_pax_names():
    members = [("manifest.json", b"{}"), ("a" * 150 + "/\u00e9.bin", b"x" * 700), ("empty", b""), ("b" * 99, b"y")]
    data = _tar(members)
    assert len(data) % TAR_RECORD == 0
    assert _read_all(data) == members


@pytest.mark.parametrize("case", ["mtime", "uid", "mode", "uname", "gnu format", "ustar trailer cut",
                                  "pax comment", "big pax", "link"])
def test_reader_refuses_what_the_server_never_writes(case):
    members = [("manifest.json", b"{}")]
    if case in ("mtime", "uid", "mode", "uname"):
        data = _tar(members, **{"mtime": {"mtime": 5}, "uid": {"uid": 1}, "mode": {"mode": 0o755},
                                "uname": {"uname": "root"}}[case])
    elif case == "gnu format":
        data = _tar(members, tarfile.GNU_FORMAT)
    elif case == "ustar trailer cut":
        data = _tar(members)[:-512]
    elif case == "pax comment":
        data = _tar(members, pax_headers={"comment": "x"})
    elif case == "big pax":
        data = _tar(members, pax_headers={"path": "p" * (MAX_PAX_BYTES + 10)})
    else:
        data = _tar(members, type=tarfile.SYMTYPE, linkname="/etc/passwd")
    with pytest.raises(E.MalformedBody, match="bundle tar"):
        _read_all(data)


def test_reader_raises_only_malformed_body_on_random_input():
    """Changes anywhere but in file data (which the unpacker hashes) are refused, and only so."""
    rng = random.Random(5)
    good = _tar([("manifest.json", b"{}" * 100), ("f", b"z" * 1000)])
    not_data = [*range(0, 512), *range(712, 1536), *range(2536, 3000)]
    for _ in range(500):
        buf = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            p = rng.choice(not_data)
            buf[p] = rng.choice([v for v in range(256) if v != buf[p]])
        data = bytes(buf[:rng.choice([len(buf), rng.randrange(len(buf) + 1)])])
        if data == good:
            continue
        with pytest.raises(E.MalformedBody):
            _read_all(data)
