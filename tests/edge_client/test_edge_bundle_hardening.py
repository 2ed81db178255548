"""Hardening of the site's bundle install: malformed tars, names, downgrades (issue rows 10 and 12).

Every malformed tar (truncated, corrupt, odd member types, huge sizes, path tricks) is refused
with the project's own ``IntegrityError`` and leaves nothing behind; a signed manifest for another
name is refused; a bundle signed before the current one is refused unless ``allow_downgrade``.
The fuzz run is ``benchmarks/bench_fuzz_bundles.py`` with fewer inputs.
"""
from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from edge_client.bundle import (SIGNED_NAME, current_version, install, installed_versions, load_bundle, models_dir,
                                pull)
from edge_client.errors import BundleError, DowngradeRefused, IntegrityError
from protocol import errors as PE
from protocol.artifacts import manifest_bytes, sign_manifest, verify_manifest
from protocol.keys import KeyPair
from server_daemon.edge_models.bundle import bundle_meta, pack_bundle, write_manifest

ROOT = Path(__file__).resolve().parents[2]
SERVER = KeyPair.generate()
T0 = 1_700_000_000_000


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fuzz_bundles", ROOT / "benchmarks" / "bench_fuzz_bundles.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def make_src(root: Path, version: str) -> Path:
    d = root / f"src-{version}"
    (d / "captioner").mkdir(parents=True)
    (d / "captioner" / "vision.onnx").write_bytes(f"vision graph {version} ".encode() * 50)
    (d / "captioner" / "tokenizer.json").write_text('{"model": {}}')
    write_manifest(d, version, {"captioner": {"kind": "blip2-opt", "files": {
        "vision": ["captioner/vision.onnx"], "tokenizer": ["captioner/tokenizer.json"]}}}, versions={"osfl": "test"})
    return d


def signed(meta: dict, created_ms: int, name: str | None = None, key: KeyPair = SERVER) -> tuple[bytes, bytes]:
    m = manifest_bytes(name or f"edge-bundle/{meta['version']}", 1, b"\0" * 32, meta, created_ms)
    return m, sign_manifest(key.signing, m)


def packed(m: bytes, sig: bytes) -> bytes:
    return msgpack.packb({"manifest": m, "signature": sig}, use_bin_type=True)


def bundle(tmp_path: Path, version: str) -> tuple[Path, dict]:
    src = make_src(tmp_path, version)
    return pack_bundle(src, tmp_path / f"{version}.tar"), bundle_meta((src / "manifest.json").read_bytes())


def assert_nothing_installed(home: Path) -> None:
    assert current_version(home) is None
    root = models_dir(home) / "bundles"
    assert not root.exists() or list(root.iterdir()) == []


# ---- row 12: malformed tars -----------------------------------------------------------------

def test_fuzzed_bundle_tars_are_all_refused_cleanly(tmp_path):
    """2,000 mutants of a valid tiny bundle: no crash, none accepted, nothing left behind."""
    tally = _bench().fuzz(2000, seed=12, workdir=tmp_path)
    report = {label: n for label, n in tally.rows()}
    assert report["inputs"] == 2000
    examples = [(kind, outcome) for kind, outcome, _ in tally.failures[:5]]
    assert report["crashed"] == 0, examples
    assert report["accepted while mutated"] == 0, examples
    assert report["left behind"] == 0, examples
    assert report["refused cleanly"] == 2000


def _valid(tmp_path: Path) -> tuple[bytes, dict, list]:
    tar, meta = bundle(tmp_path, "v1")
    with tarfile.open(tar) as t:
        offsets = [(m.name, m.offset, m.offset_data, m.size) for m in t.getmembers()]
    return tar.read_bytes(), meta, offsets


def _header_edit(data: bytes, header: int, off: int, value: bytes) -> bytes:
    buf = bytearray(data)
    buf[header + off:header + off + len(value)] = value
    block = buf[header:header + 512]
    buf[header + 148:header + 156] = b"%06o\0 " % (sum(block[:148]) + 256 + sum(block[156:]))
    return bytes(buf)


def _rebuilt(members: list[tarfile.TarInfo], payloads: list[bytes], fmt=tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in zip(members, payloads):
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


CASES = ["truncated in a header", "truncated in data", "truncated trailer", "empty file", "one zero block",
         "flipped data byte", "flipped header byte", "flipped padding byte", "garbage after the end",
         "symlink member", "hardlink member", "directory member", "fifo member", "char device member",
         "huge size", "size past the end", "base-256 size", "GNU long name", "PAX unknown record",
         "PAX size lie", "absolute path", "dot-dot path", "duplicate member", "out of order", "gzip instead"]


@pytest.mark.parametrize("case", CASES)
def test_malformed_tar_is_refused_with_an_integrity_error(tmp_path, case):
    data, meta, offsets = _valid(tmp_path)
    _, h1, d1, s1 = offsets[1]  # the first model file
    last_end = offsets[-1][2] + -(-offsets[-1][3] // 512) * 512

    def member(name: str, kind=tarfile.REGTYPE, size=0, **kw) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, size
        for k, v in kw.items():
            setattr(info, k, v)
        return info

    manifest_raw = data[offsets[0][2]:offsets[0][2] + offsets[0][3]]
    head = [member("manifest.json", size=len(manifest_raw))]
    if case == "truncated in a header":
        bad = data[:h1 + 100]
    elif case == "truncated in data":
        bad = data[:d1 + s1 // 2]
    elif case == "truncated trailer":
        bad = data[:last_end + 512]
    elif case == "empty file":
        bad = b""
    elif case == "one zero block":
        bad = bytes(512)
    elif case == "flipped data byte":
        bad = data[:d1 + 3] + bytes([data[d1 + 3] ^ 1]) + data[d1 + 4:]
    elif case == "flipped header byte":
        bad = data[:h1 + 10] + bytes([data[h1 + 10] ^ 4]) + data[h1 + 11:]
    elif case == "flipped padding byte":
        pad = d1 + s1  # s1 is not a multiple of 512 here
        assert s1 % 512
        bad = data[:pad] + b"\x01" + data[pad + 1:]
    elif case == "garbage after the end":
        bad = data + b"trailing garbage"
    elif case in ("symlink member", "hardlink member", "directory member", "fifo member", "char device member"):
        kind = {"symlink member": tarfile.SYMTYPE, "hardlink member": tarfile.LNKTYPE,
                "directory member": tarfile.DIRTYPE, "fifo member": tarfile.FIFOTYPE,
                "char device member": tarfile.CHRTYPE}[case]
        evil = member("captioner/tokenizer.json", kind, linkname="/etc/passwd")
        bad = _rebuilt([*head, evil], [manifest_raw, b""])
    elif case == "huge size":
        bad = _header_edit(data, h1, 124, b"77777777777\0")
    elif case == "size past the end":
        bad = _header_edit(data, h1, 124, b"%011o\0" % (len(data) * 4))
    elif case == "base-256 size":
        bad = _header_edit(data, h1, 124, b"\x80" + bytes(10) + b"\x10")
    elif case == "GNU long name":
        bad = _rebuilt([*head, member("captioner/" + "x" * 120, size=3)], [manifest_raw, b"abc"], tarfile.GNU_FORMAT)
    elif case == "PAX unknown record":
        bad = _rebuilt([*head, member("captioner/tokenizer.json", size=3, pax_headers={"comment": "hi"})],
                       [manifest_raw, b"abc"])
    elif case == "PAX size lie":
        bad = _rebuilt([*head, member("captioner/tokenizer.json", size=3, pax_headers={"size": "99999999999"})],
                       [manifest_raw, b"abc"])
    elif case == "absolute path":
        bad = _header_edit(data, h1, 0, b"/etc/passwd".ljust(100, b"\0"))
    elif case == "dot-dot path":
        bad = _header_edit(data, h1, 0, b"captioner/../../../evil".ljust(100, b"\0"))
    elif case == "duplicate member":
        seg = data[h1:offsets[2][1]]
        bad = data[:offsets[2][1]] + seg + data[offsets[2][1]:len(data) - len(seg)]
    elif case == "out of order":
        (a0, a1), (b0, b1) = (h1, offsets[2][1]), (offsets[2][1], last_end)
        bad = data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:]
    else:  # gzip
        import gzip
        bad = gzip.compress(data)
    assert bad != data
    tar = tmp_path / "bad.tar"
    tar.write_bytes(bad)
    home = tmp_path / "home"
    m, sig = signed(meta, T0)
    with pytest.raises(IntegrityError) as info:
        install(tar, home, meta, packed(m, sig))
    assert info.value.exit_code == 12 and "nothing was installed" in str(info.value)
    assert_nothing_installed(home)
    assert not (tmp_path / "evil").exists()


def test_the_valid_tar_still_installs(tmp_path):
    data, meta, _ = _valid(tmp_path)
    (tmp_path / "ok.tar").write_bytes(data)
    m, sig = signed(meta, T0)
    b = install(tmp_path / "ok.tar", tmp_path / "home", meta, packed(m, sig))
    assert b.version == "v1" and installed_versions(tmp_path / "home") == ["v1"]


# ---- row 10: downgrades ---------------------------------------------------------------------

def test_an_older_bundle_is_refused_unless_allowed(tmp_path):
    home = tmp_path / "home"
    tar1, meta1 = bundle(tmp_path, "v1")
    tar2, meta2 = bundle(tmp_path, "v2")
    install(tar2, home, meta2, packed(*signed(meta2, T0 + 5000)))
    with pytest.raises(DowngradeRefused) as info:
        install(tar1, home, meta1, packed(*signed(meta1, T0)))
    err = info.value
    assert isinstance(err, IntegrityError) and err.exit_code == 12
    assert "v1" in err.message and "v2" in err.message and "older" in err.message
    assert "--allow-downgrade" in str(err)
    assert current_version(home) == "v2" and installed_versions(home) == ["v2"]
    # on purpose: installed, and current
    b = install(tar1, home, meta1, packed(*signed(meta1, T0)), allow_downgrade=True)
    assert b.version == "v1" and current_version(home) == "v1"
    # going forward again needs no flag
    install(tar2, home, meta2, packed(*signed(meta2, T0 + 5000)))
    assert current_version(home) == "v2"


def test_the_same_version_under_latest_is_not_a_downgrade(tmp_path):
    """edge-bundle/<v> is signed a moment before edge-bundle/latest: pulling either is fine."""
    home = tmp_path / "home"
    tar, meta = bundle(tmp_path, "v3")
    install(tar, home, meta, packed(*signed(meta, T0 + 2, name="edge-bundle/latest")))
    install(tar, home, meta, packed(*signed(meta, T0 + 1)))
    assert current_version(home) == "v3"


class FakeClient:
    """Serves one signed manifest and tar like ``Client.download``, but checks nothing itself, so
    ``pull`` must do its own checks; records whether any bytes were fetched."""

    def __init__(self, tar: Path, manifest: bytes, signature: bytes):
        self.tar, self.manifest, self.signature = tar, manifest, signature
        self.fetched = False
        self.server_sign = SERVER.public

    def download(self, name, dest, on_progress=None, *, accept=None, allow_downgrade=False):
        manifest = verify_manifest(SERVER.public, self.manifest, self.signature)  # no name given: lax
        if accept is not None:
            accept(manifest)
        self.fetched = True
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.tar.read_bytes())
        dest.with_name(dest.name + ".manifest").write_bytes(packed(self.manifest, self.signature))
        return manifest


def test_pull_latest_installs_and_records_the_real_version(tmp_path):
    home = tmp_path / "home"
    tar, meta = bundle(tmp_path, "2026.2")
    c = FakeClient(tar, *signed(meta, T0, name="edge-bundle/latest"))
    b = pull(c, home)
    assert b.version == "2026.2" and current_version(home) == "2026.2"
    assert load_bundle(home, SERVER.public, full=True).version == "2026.2"
    assert not any((models_dir(home) / "downloads").iterdir())


@pytest.mark.parametrize("served_as", ["edge-bundle/2026.1", "edge-bundle/other", "model/fed1"])
def test_pull_refuses_a_manifest_signed_for_another_name(tmp_path, served_as):
    home = tmp_path / "home"
    tar, meta = bundle(tmp_path, "2026.1")
    c = FakeClient(tar, *signed(meta, T0, name=served_as))
    asked = "2026.1" if served_as != "edge-bundle/2026.1" else None  # None: latest
    with pytest.raises(IntegrityError) as info:
        pull(c, home, asked)
    assert info.value.exit_code == 12 and served_as in info.value.message
    assert not c.fetched
    assert_nothing_installed(home)


def test_pull_refuses_a_version_whose_meta_names_another(tmp_path):
    home = tmp_path / "home"
    tar, meta = bundle(tmp_path, "2026.2")
    c = FakeClient(tar, *signed(meta, T0, name="edge-bundle/2026.1"))  # validly signed, inconsistent
    with pytest.raises((BundleError, IntegrityError)):
        pull(c, home, "2026.1")
    assert not c.fetched
    assert_nothing_installed(home)


def test_pull_refuses_an_older_bundle_before_fetching_it(tmp_path):
    home = tmp_path / "home"
    tar2, meta2 = bundle(tmp_path, "v2")
    pull(FakeClient(tar2, *signed(meta2, T0 + 10, name="edge-bundle/latest")), home)
    tar1, meta1 = bundle(tmp_path, "v1")
    old = FakeClient(tar1, *signed(meta1, T0, name="edge-bundle/latest"))  # a replayed old "latest"
    with pytest.raises(DowngradeRefused) as info:
        pull(old, home)
    assert not old.fetched and "v1" in info.value.message and "v2" in info.value.message
    assert current_version(home) == "v2" and installed_versions(home) == ["v2"]
    assert pull(old, home, allow_downgrade=True).version == "v1"
    assert current_version(home) == "v1"


def test_load_bundle_refuses_a_stored_manifest_for_another_name(tmp_path):
    home = tmp_path / "home"
    tar, meta = bundle(tmp_path, "v1")
    b = install(tar, home, meta, packed(*signed(meta, T0)))
    load_bundle(home, SERVER.public)
    (b.path / SIGNED_NAME).write_bytes(packed(*signed(meta, T0, name="edge-bundle/v9")))
    with pytest.raises(IntegrityError, match="edge-bundle/v9"):
        load_bundle(home, SERVER.public)


def test_cli_commands_offer_allow_downgrade():
    from edge_client.cli import cli

    for args in (["fetch-model", "--help"], ["models", "pull", "--help"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0 and "--allow-downgrade" in res.output, args


def test_downgrade_refused_is_an_integrity_error():
    assert issubclass(DowngradeRefused, IntegrityError) and DowngradeRefused.exit_code == 12
    assert issubclass(PE.BadSignature, PE.ProtocolError)
