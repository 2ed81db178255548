"""Keys on disk (0600, never overwritten, refused when readable by others), fingerprints, server key strings."""
from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest
import zmq

from protocol import errors as E
from protocol import keys
from protocol.constants import FINGERPRINT_HEX_CHARS, PUBLIC_KEY_BYTES
from protocol.keys import KeyPair, decode_server_key, encode_server_key, fingerprint

SECRET_FILES = ("site.sign.key", "site.curve.key")
PUBLIC_FILES = ("site.sign.pub", "site.curve.pub")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def saved(tmp_path):
    pair = KeyPair.generate()
    pair.save(tmp_path / "keys", "site")
    return pair, tmp_path / "keys"


def test_save_writes_secret_files_0600(saved):
    _, d = saved
    for name in SECRET_FILES:
        assert _mode(d / name) == 0o600, name
    for name in PUBLIC_FILES:
        assert (d / name).exists()
    assert sorted(p.name for p in d.iterdir()) == sorted(SECRET_FILES + PUBLIC_FILES), "no temp files left"


def test_save_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        KeyPair.generate().save(tmp_path, "site")
    finally:
        os.umask(old)
    for name in SECRET_FILES:
        assert _mode(tmp_path / name) == 0o600


def test_save_refuses_to_overwrite(saved):
    pair, d = saved
    before = (d / "site.sign.key").read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        KeyPair.generate().save(d, "site")
    assert (d / "site.sign.key").read_bytes() == before
    assert not list(d.glob("*.tmp"))


def test_load_round_trip(saved):
    pair, d = saved
    loaded = KeyPair.load(d, "site")
    assert loaded.public == pair.public and loaded.fingerprint == pair.fingerprint
    assert loaded.curve_public == pair.curve_public and loaded.curve_secret == pair.curve_secret
    assert len(loaded.curve_public) == len(loaded.curve_secret) == 40
    assert (d / "site.sign.pub").read_text().strip() == pair.public.hex()


@pytest.mark.parametrize("name", SECRET_FILES)
def test_load_refuses_secret_readable_by_others(saved, name):
    _, d = saved
    os.chmod(d / name, 0o644)
    with pytest.raises(PermissionError) as info:
        KeyPair.load(d, "site")
    assert "chmod 600" in str(info.value) and name in str(info.value) and "644" in str(info.value)


def test_load_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="site.sign.key"):
        KeyPair.load(tmp_path, "site")


def test_fingerprint_length_and_value():
    pub = bytes(range(PUBLIC_KEY_BYTES))
    fp = fingerprint(pub)
    assert len(fp) == FINGERPRINT_HEX_CHARS == 32
    assert fp == hashlib.sha256(pub).hexdigest()[:32] and fp == fp.lower()
    assert KeyPair.generate().fingerprint != KeyPair.generate().fingerprint


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_fingerprint_rejects_wrong_length(n):
    with pytest.raises(ValueError, match="32-byte"):
        fingerprint(bytes(n))


def _server_key() -> tuple[str, bytes, bytes]:
    curve_pub, _ = zmq.curve_keypair()
    sign_pub = KeyPair.generate().public
    return encode_server_key(curve_pub, sign_pub), curve_pub, sign_pub


def test_server_key_round_trip():
    text, curve_pub, sign_pub = _server_key()
    assert text.startswith(keys.SERVER_KEY_PREFIX) and len(text) == 97
    assert decode_server_key(text) == (curve_pub, sign_pub)
    assert decode_server_key(f"  {text}\n") == (curve_pub, sign_pub)  # pasted with whitespace


def test_server_key_known_answer():
    curve = bytes(range(32))
    sign = bytes(range(32, 64))
    raw = curve + sign
    expected = "osfl1-" + base64.urlsafe_b64encode(raw + hashlib.sha256(raw).digest()[:4]).decode().rstrip("=")
    assert encode_server_key(zmq.utils.z85.encode(curve), sign) == expected


def _mistype(text: str, at: int) -> str:
    c = text[at]
    return text[:at] + ("B" if c != "B" else "C") + text[at + 1:]


@pytest.mark.parametrize("at", [6, 20, 50, 89])
def test_mistyped_server_key_fails_the_checksum(at):
    text, _, _ = _server_key()
    with pytest.raises(E.BadServerKey, match="checksum") as info:
        decode_server_key(_mistype(text, at))
    assert info.value.code == "BAD_SERVER_KEY" and info.value.number == 602


@pytest.mark.parametrize("text", ["", "osfl2-AAAA", "OSFL1-AAAA", "tcp://server:5555", "osfl-abc"])
def test_server_key_wrong_prefix(text):
    with pytest.raises(E.BadServerKey, match="starts with 'osfl1-'"):
        decode_server_key(text)


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda t: t[:-1], id="one char short"),
    pytest.param(lambda t: t + "AAAA", id="four chars long"),
    pytest.param(lambda t: t[:40], id="truncated"),
    pytest.param(lambda t: t[:30] + "*" + t[31:], id="not base64url"),
])
def test_server_key_wrong_length_or_alphabet(mangle):
    text, _, _ = _server_key()
    with pytest.raises(E.BadServerKey):
        decode_server_key(mangle(text))
