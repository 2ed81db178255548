"""Keys: Ed25519 signing keys (identity) and CURVE key pairs (transport encryption).

A site is identified by its Ed25519 public key; its *fingerprint* is what operators compare and type.
The server publishes one *server key string* that pins both its CURVE public key (for encryption)
and its Ed25519 public key (for what it signs, such as models): ``osfl1-`` + base64url of
curve(32) | ed25519(32) | sha256(both)[:4]. The checksum turns a mistyped key into a clear error.
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .constants import FINGERPRINT_HEX_CHARS, PUBLIC_KEY_BYTES
from .errors import BadServerKey

SERVER_KEY_PREFIX = "osfl1-"


def fingerprint(public_key: bytes) -> str:
    """Stable short id of an Ed25519 public key (32 hex characters)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"expected a {PUBLIC_KEY_BYTES}-byte Ed25519 public key, got {len(public_key)} bytes")
    return hashlib.sha256(public_key).hexdigest()[:FINGERPRINT_HEX_CHARS]


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def write_secret(path: Path, data: bytes) -> None:
    """Create a secret file readable by its owner only (0600), atomically; never overwrite one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask cannot widen it, an earlier tmp file cannot either
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.exists():
        tmp.unlink()
        raise FileExistsError(f"{path} already exists; refusing to overwrite a key")
    os.rename(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.rename(tmp, path)


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 signing key and a CURVE key pair, as kept on disk by a site or the server."""

    signing: Ed25519PrivateKey
    curve_public: bytes  # z85, 40 bytes
    curve_secret: bytes  # z85, 40 bytes

    @property
    def public(self) -> bytes:
        return public_bytes(self.signing)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    @classmethod
    def generate(cls) -> "KeyPair":
        curve_public, curve_secret = zmq.curve_keypair()
        return cls(Ed25519PrivateKey.generate(), curve_public, curve_secret)

    def save(self, directory: Path, stem: str) -> None:
        """Secret files 0600, public files 0644, in separate files as pyzmq's auth does."""
        directory = Path(directory)
        write_secret(directory / f"{stem}.sign.key", private_bytes(self.signing).hex().encode() + b"\n")
        write_secret(directory / f"{stem}.curve.key", self.curve_secret + b"\n")
        write_public(directory / f"{stem}.sign.pub", self.public.hex().encode() + b"\n")
        write_public(directory / f"{stem}.curve.pub", self.curve_public + b"\n")

    @classmethod
    def load(cls, directory: Path, stem: str) -> "KeyPair":
        directory = Path(directory)
        paths = [directory / f"{stem}.{n}" for n in ("sign.key", "curve.key", "curve.pub")]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"key files missing: {', '.join(missing)}")
        for p in paths[:2]:
            mode = p.stat().st_mode & 0o777
            if mode & 0o077:
                raise PermissionError(f"{p} is readable by others (mode {mode:o}); run chmod 600 {p}")
        raw = bytes.fromhex(paths[0].read_text().strip())
        return cls(Ed25519PrivateKey.from_private_bytes(raw),
                   paths[2].read_bytes().strip(), paths[1].read_bytes().strip())


def encode_server_key(curve_public_z85: bytes, sign_public: bytes) -> str:
    curve = z85.decode(curve_public_z85)
    raw = curve + sign_public
    return SERVER_KEY_PREFIX + base64.urlsafe_b64encode(raw + hashlib.sha256(raw).digest()[:4]).decode().rstrip("=")


def decode_server_key(text: str) -> tuple[bytes, bytes]:
    """Return (curve public key as z85, Ed25519 public key) from a server key string."""
    text = text.strip()
    if not text.startswith(SERVER_KEY_PREFIX):
        raise BadServerKey(f"a server key starts with {SERVER_KEY_PREFIX!r}; got one starting "
                           f"{text[:6]!r}. Copy it from `osfl-server init` or `osfl-server key`")
    body = text[len(SERVER_KEY_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, TypeError):
        raise BadServerKey("the server key is not valid base64url; copy it again from the operator") from None
    if len(raw) != 68:
        raise BadServerKey(f"a server key holds 68 bytes, this one {len(raw)}; copy it again from the operator")
    if hashlib.sha256(raw[:64]).digest()[:4] != raw[64:]:
        raise BadServerKey("the server key's checksum does not match: it was mistyped; copy it again")
    return z85.encode(raw[:32]), raw[32:64]
