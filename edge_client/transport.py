"""The site's side of the channel: a CURVE-encrypted ZeroMQ DEALER with timeouts, retries, chunks.

One request is outstanding at a time. When no reply comes before the timeout the socket is thrown
away and a new one opened (ZeroMQ's "lazy pirate" pattern), and the request is signed again with a
fresh message id, so the server's replay protection never refuses a genuine retry. Every request is
idempotent on the server (uploads by digest, chunks by offset), so a retry after a lost reply is
harmless.

A socket monitor tells "nobody answers" (SERVER_UNREACHABLE) apart from "something answers but
cannot prove the pinned server key" (HANDSHAKE_FAILED): in the second case TCP connects and the
CURVE handshake then fails or the connection is dropped, on three attempts in a row or on the last
(once or twice is what a daemon restarting mid-handshake looks like, and is retried).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from protocol import errors as E
from protocol.artifacts import is_older, signed_at, verify_manifest
from protocol.constants import MAX_BODY_BYTES, MSG_ID_BYTES
from protocol.envelope import Reply, decode_reply, encode_request, pack
from protocol.keys import KeyPair

from .config import EdgeConfig

log = logging.getLogger(__name__)

_CONNECTED = zmq.EVENT_CONNECTED
_HANDSHAKE_OK = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0x1000)
_HANDSHAKE_FAILED = (getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0x0800)
                     | getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0x2000)
                     | getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", 0x4000))


class Client:
    """Requests to one server, signed with the site's key."""

    def __init__(self, cfg: EdgeConfig, keys: KeyPair | None = None, *, timeout_s: float | None = None,
                 retries: int | None = None):
        self.cfg = cfg
        self.keys = keys or cfg.keys()
        self.server_curve, self.server_sign = cfg.server_keys()
        self.timeout_s = cfg.timeout_s if timeout_s is None else timeout_s
        self.retries = cfg.retries if retries is None else retries
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self._events = 0

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        s = self.ctx.socket(zmq.DEALER)
        s.curve_secretkey = self.keys.curve_secret
        s.curve_publickey = self.keys.curve_public
        s.curve_serverkey = self.server_curve
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.monitor = s.get_monitor_socket(_CONNECTED | _HANDSHAKE_OK | _HANDSHAKE_FAILED
                                            | zmq.EVENT_DISCONNECTED)
        s.connect(self.cfg.endpoint)
        self.sock = s
        self._events = 0

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            self.sock.close(linger=0)
            self.sock = self.monitor = None

    def _drain_monitor(self) -> None:
        while self.monitor is not None:
            try:
                ev = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            self._events |= ev["event"]

    def _handshake_failed(self) -> bool:
        """libzmq reported a failed CURVE handshake: the pinned key is not the server's."""
        return bool(not self._events & _HANDSHAKE_OK and self._events & _HANDSHAKE_FAILED)

    def _dropped_before_handshake(self) -> bool:
        """TCP connected, then the connection went away before CURVE completed. A server that cannot
        prove the pinned key does this, but so does a daemon killed or restarting mid-handshake (and
        libzmq may report that as a failed handshake too): either counts as a key failure only when
        it happens on three consecutive attempts (or on the last one)."""
        return bool(not self._events & _HANDSHAKE_OK and self._events & _CONNECTED
                    and self._events & zmq.EVENT_DISCONNECTED)

    # ---- one request ------------------------------------------------------------------------

    def request(self, kind: str, body: bytes = b"", *, federation: str | None = None,
                include_public_key: bool = False) -> Reply:
        """Send one signed request and wait for its reply, retrying with backoff.

        Raises ``ServerUnreachable``, ``HandshakeFailed`` or the ``ProtocolError`` the server
        reported.
        """
        attempts = self.retries + 1
        failures = 0  # consecutive attempts whose CURVE handshake failed or was cut off
        for attempt in range(attempts):
            if self.sock is None:
                self._open()
            msg_id = os.urandom(MSG_ID_BYTES)
            frames = encode_request(kind, body, self.keys.signing, federation=federation, msg_id=msg_id,
                                    include_public_key=include_public_key)
            self.sock.send_multipart(frames, copy=len(body) < 65536)
            reply = self._wait(msg_id)
            if reply is not None:
                return reply.raise_for_error()
            bad = self._handshake_failed() or self._dropped_before_handshake()
            failures = failures + 1 if bad else 0
            self.close()
            if failures >= 3 or (failures and attempt + 1 == attempts):
                raise E.HandshakeFailed(f"{self.cfg.endpoint} answered but could not prove the pinned server "
                                        f"key (CURVE handshake failed)")
            if attempt + 1 < attempts:
                delay = min(0.25 * 2 ** attempt, 4.0)
                log.info("no reply from %s within %.1f s; retry %d/%d in %.2f s", self.cfg.endpoint,
                         self.timeout_s, attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise E.ServerUnreachable(f"no reply from {self.cfg.endpoint} after {attempts} attempt(s) of "
                                  f"{self.timeout_s:g} s each")

    def _wait(self, msg_id: bytes) -> Reply | None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(int(left * 1000) + 1))
            if self.monitor in ready:
                self._drain_monitor()
                # a failed or dropped handshake will not heal by waiting: give up on this attempt early
                if self._handshake_failed() or self._dropped_before_handshake():
                    return None
            if self.sock in ready:
                reply = decode_reply(self.sock.recv_multipart())
                if reply.re in (msg_id, b""):
                    return reply
                log.debug("dropped a late reply to an earlier attempt")
        self._drain_monitor()
        return None

    def call(self, kind: str, body: dict[str, Any] | None = None, *, federation: str | None = None,
             include_public_key: bool = False) -> dict[str, Any]:
        return self.request(kind, pack(body or {}), federation=federation,
                            include_public_key=include_public_key).data

    # ---- high-level operations --------------------------------------------------------------

    def enroll(self) -> dict[str, Any]:
        return self.call("enroll", {"site": self.cfg.site_id, "curve": self.keys.curve_public.decode(),
                                    "name": self.cfg.name}, include_public_key=True)

    def upload(self, payload: bytes | Path, federation: str, kind: str,
               on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Upload a payload (bytes, or a file streamed from disk so a 2 GiB payload needs no 2 GiB of
        memory): in one request when it fits, else in acknowledged, resumable chunks."""
        chunk = self.cfg.chunk_size
        src = _Source(payload)
        try:
            size = src.size
            if size <= min(chunk, MAX_BODY_BYTES - 4096):
                data = self.request("upload", src.read(0, size), federation=federation).data
                if on_progress:
                    on_progress(size, size)
                return data
            begin_body = {"kind": kind, "size": size, "sha256": src.sha256(), "chunk_size": chunk}
            begin = self.call("upload_begin", begin_body, federation=federation)
            if begin.get("duplicate"):
                if on_progress:
                    on_progress(size, size)
                return begin
            uid, offset = begin["upload_id"], int(begin["offset"])
            if offset:
                log.info("resuming upload %s at byte %d of %d", uid, offset, size)
            while offset < size:
                if on_progress:
                    on_progress(offset, size)
                piece = src.read(offset, chunk)
                try:
                    offset = int(self.call("upload_chunk", {"upload_id": uid, "offset": offset, "data": piece},
                                           federation=federation)["offset"])
                except E.ChunkOutOfOrder:
                    # the server holds a different amount than we thought: ask it where to continue
                    offset = int(self.call("upload_begin", begin_body, federation=federation)["offset"])
            if on_progress:
                on_progress(size, size)
            return self.call("upload_commit", {"upload_id": uid}, federation=federation)
        finally:
            src.close()

    def download(self, name: str, dest: Path, on_progress: Callable[[int, int], None] | None = None, *,
                 accept: Callable[[dict[str, Any]], None] | None = None,
                 allow_downgrade: bool = False) -> dict[str, Any]:
        """Fetch a signed artifact into ``dest``: chunked, resumable, verified before it is moved in place.

        The manifest must carry the pinned server key's signature and be for ``name``, and the file
        must have its sha256; otherwise nothing is written at ``dest``. When ``dest`` already holds
        a verified copy of ``name`` signed later than the offered one, the download is refused
        (``DowngradeRefused``) unless ``allow_downgrade``. ``accept(manifest)`` may refuse the
        manifest too (by raising), before any chunk is fetched. ``dest.manifest`` keeps manifest and
        signature so the file can be checked again later (``verify_artifact``). Returns the manifest.
        """
        info = self.call("artifact_info", {"name": name})
        try:
            manifest = verify_manifest(self.server_sign, info["manifest"], info["signature"], name=name)
        except (KeyError, TypeError):
            raise E.MalformedBody(f"the server's artifact_info for {name!r} lacks manifest or signature") from None
        dest = Path(dest)
        _refuse_downgrade(dest, manifest, self.server_sign, allow_downgrade)
        if accept is not None:
            accept(manifest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        stamp = dest.with_name(dest.name + ".part.sha256")
        sha, size = manifest["sha256"], manifest["size"]
        if not (part.exists() and stamp.exists() and stamp.read_text().strip() == sha.hex()
                and part.stat().st_size <= size):
            part.unlink(missing_ok=True)
            stamp.write_text(sha.hex())
            part.touch()
        offset = part.stat().st_size
        chunk = int(info.get("chunk_size") or self.cfg.chunk_size)
        with open(part, "r+b") as f:
            f.seek(offset)
            while offset < size:
                if on_progress:
                    on_progress(offset, size)
                data = self.call("artifact_chunk", {"name": name, "offset": offset,
                                                    "length": min(chunk, size - offset), "sha256": sha})["data"]
                if not data:
                    raise E.MalformedBody(f"the server sent an empty chunk of {name} at byte {offset}")
                f.write(data)
                offset += len(data)
            f.flush()
            os.fsync(f.fileno())
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.digest() != sha:
            part.unlink()
            stamp.unlink(missing_ok=True)
            raise E.PayloadDigestMismatch(f"{name}: the downloaded file's sha256 differs from the signed manifest; "
                                          f"it was discarded, run the command again")
        (dest.with_name(dest.name + ".manifest")).write_bytes(pack({"manifest": info["manifest"],
                                                                     "signature": info["signature"]}))
        os.replace(part, dest)
        stamp.unlink(missing_ok=True)
        if on_progress:
            on_progress(size, size)
        return manifest


def _stored(side: Path, server_sign_public: bytes, name: str | None = None) -> dict[str, Any]:
    """The verified manifest kept in a ``.manifest`` side file; ProtocolError when it is not one."""
    import msgpack

    try:
        stored = msgpack.unpackb(side.read_bytes(), raw=False)
        manifest, signature = stored["manifest"], stored["signature"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        raise E.BadSignature(f"{side} is not a stored signed manifest; fetch the file again") from None
    return verify_manifest(server_sign_public, manifest, signature, name=name)


def _refuse_downgrade(dest: Path, offered: dict[str, Any], server_sign_public: bytes, allow: bool) -> None:
    """Refuse to replace ``dest`` (verified, same name) with a copy the server signed earlier."""
    from .errors import DowngradeRefused

    side = dest.with_name(dest.name + ".manifest")
    if not dest.exists() or not side.exists():
        return
    try:
        installed = _stored(side, server_sign_public, name=offered["name"])
    except (OSError, E.ProtocolError):
        return  # not a verified copy of this artifact: nothing to protect, it is replaced
    if not is_older(offered, installed):
        return
    what = (f"the offered {offered['name']} (signed {signed_at(offered)}, sha256 {offered['sha256'].hex()[:16]}...) "
            f"is older than the one installed at {dest} (signed {signed_at(installed)}, "
            f"sha256 {installed['sha256'].hex()[:16]}...)")
    if not allow:
        raise DowngradeRefused(f"{what}; refusing to downgrade, the installed file was kept")
    log.warning("%s; replacing it anyway (--allow-downgrade)", what)


def verify_artifact(path: Path, server_sign_public: bytes, name: str | None = None) -> dict[str, Any]:
    """Check a downloaded file against its stored signed manifest (before every use); with ``name``,
    the manifest must be that artifact's (a model copied over from another federation is refused)."""
    path = Path(path)
    side = path.with_name(path.name + ".manifest")
    if not path.exists() or not side.exists():
        raise E.NotFound(f"{path} or its signed manifest {side} is missing; fetch it again")
    manifest = _stored(side, server_sign_public, name=name)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.digest() != manifest["sha256"]:
        raise E.PayloadDigestMismatch(f"{path} no longer matches its signed manifest (changed on disk); fetch it again")
    return manifest


class _Source:
    """Bytes in memory or a file on disk, read by offset."""

    def __init__(self, payload: bytes | Path):
        if isinstance(payload, (bytes, bytearray, memoryview)):
            self._mem, self._file = memoryview(payload), None
            self.size = len(self._mem)
        else:
            self._mem, self._file = None, open(payload, "rb")
            self.size = os.fstat(self._file.fileno()).st_size

    def read(self, offset: int, n: int) -> bytes:
        if self._mem is not None:
            return bytes(self._mem[offset:offset + n])
        self._file.seek(offset)
        return self._file.read(n)

    def sha256(self) -> bytes:
        if self._mem is not None:
            return hashlib.sha256(self._mem).digest()
        h = hashlib.sha256()
        self._file.seek(0)
        for block in iter(lambda: self._file.read(1 << 20), b""):
            h.update(block)
        return h.digest()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

