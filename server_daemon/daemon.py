"""The ingest daemon: a ZeroMQ ROUTER that verifies signed requests and stores payloads durably.

Lifecycle (modelled on uvicorn/gunicorn): start-up (open and recover the store, load recent message
ids, bind the CURVE socket, READY=1), main loop, drain, shutdown (STOPPING=1). The SIGTERM handler
only sets a flag; a second SIGTERM or SIGINT exits at once.

Group commit: each turn of the loop takes every request already waiting (up to ``batch_max``),
handles them inside one transaction, COMMITs (one fsync of the WAL) and only then sends the replies.
So no acknowledgement ever leaves before its data is on disk, and one fsync covers the whole batch.

Identity comes from Ed25519 signatures on every request; CURVE encrypts the channel and
authenticates the server to the site (its public key is pinned in the site's config). Any CURVE
client may connect: an unsigned or unknown request gets a reply with an error code, never data.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import zmq

from protocol import errors as E
from protocol.artifacts import check_name as check_artifact_name
from protocol.constants import PROTOCOL_VERSION
from protocol.envelope import Limits, ReplayGuard, Request, encode_reply, now_ms, open_request, unpack_body
from protocol.keys import KeyPair
from protocol.payloads import PAYLOAD_KINDS, decode_payload

from . import systemd
from .config import ServerConfig
from .jobs import Supervisor, job_summary
from .metrics import write_metrics
from .store import Client, Store

log = logging.getLogger(__name__)

SITE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: kinds whose handler writes more than one statement: they run inside a savepoint
MULTI_WRITE_KINDS = frozenset({"enroll", "upload_begin", "upload_commit"})


def upload_id_for(fingerprint: str, federation: str, kind: str, sha256: bytes) -> str:
    """Deterministic, so a site that lost its connection resumes the same upload after a restart."""
    return hashlib.sha256(f"{fingerprint}|{federation}|{kind}|".encode() + sha256).hexdigest()[:32]


@dataclass
class Stats:
    started_ms: int = field(default_factory=now_ms)
    requests: int = 0
    batches: int = 0
    stored: int = 0
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "batches": self.batches, "stored": self.stored,
                "rejected": dict(self.rejected)}


class Daemon:
    def __init__(self, cfg: ServerConfig, keys: KeyPair | None = None):
        self.cfg = cfg
        self.keys = keys or KeyPair.load(cfg.keys_dir, "server")
        self.limits = Limits(max_body=cfg.limits.max_body_bytes, min_version=cfg.limits.min_protocol_version,
                             max_version=PROTOCOL_VERSION, window_s=cfg.limits.replay_window_s)
        self.stopping = False
        self.stats = Stats()
        self._hb_requests = 0
        self._clients: dict[str, Client] = {}
        self._feds: dict = {}
        self._data_version = -1
        self.store: Store | None = None
        self.sock: zmq.Socket | None = None
        self.ctx: zmq.Context | None = None
        self.guard = ReplayGuard(cfg.limits.replay_window_s)

    # ---- start-up ---------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            log.warning("second signal %s: exiting now", signum)
            os._exit(1)
        log.info("signal %s: draining, then exiting", signum)
        self.stopping = True

    def start(self) -> None:
        self.store = Store(self.cfg.state_dir)
        since = now_ms() - int(2 * self.cfg.limits.replay_window_s * 1000)
        self.store.prune_seen(since)
        for msg_id, created in self.store.recent_msg_ids(since):
            self.guard.add(msg_id, created)
        self._refresh_clients()
        self.supervisor = Supervisor(self.cfg, self.store)
        self.supervisor.recover()
        self.ctx = zmq.Context()
        s = self.ctx.socket(zmq.ROUTER)
        s.curve_server = True
        s.curve_secretkey = self.keys.curve_secret
        s.curve_publickey = self.keys.curve_public
        # frames a little over the limit still get a FRAME_TOO_LARGE reply; far larger ones
        # would cost memory, so ZeroMQ drops that connection
        s.setsockopt(zmq.MAXMSGSIZE, 2 * self.cfg.limits.max_body_bytes + (1 << 20))
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.ROUTER_MANDATORY, 0)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.bind(self.cfg.server.bind)
        self.sock = s
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)
        self._heartbeat("running")
        log.info("listening on %s (protocol %d, server key fingerprint %s)", self.endpoint, PROTOCOL_VERSION,
                 self.keys.fingerprint)
        systemd.notify("READY=1", f"STATUS=listening on {self.endpoint}", f"MAINPID={os.getpid()}")

    def _heartbeat(self, state: str) -> None:
        with self.store.transaction():
            self.store.heartbeat(pid=os.getpid(), bind=getattr(self, "endpoint", self.cfg.server.bind), state=state,
                                 started_ms=self.stats.started_ms, counters=self.stats.as_dict())
        self._last_heartbeat = time.monotonic()
        try:
            write_metrics(self.store, self.cfg.state_dir / "metrics.prom", self.store.daemon_info())
        except OSError as exc:  # metrics are a convenience: never a reason to stop
            log.warning("cannot write metrics.prom: %s", exc)

    def _refresh_clients(self) -> None:
        """Reload sites and federations when another connection (the operator's CLI) changed them."""
        version = self.store.data_version()
        if version != self._data_version:
            self._clients = {c.fingerprint: c for c in self.store.clients()}
            self._feds = {f.id: f for f in self.store.federations()}
            self._data_version = version

    # ---- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain and shut down."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        try:
            self.serve()
        finally:
            self.shutdown()

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        watchdog = systemd.watchdog_interval_s()
        last_watchdog = last_tick = time.monotonic()
        batch_max = self.cfg.ingest.batch_max
        while not self.stopping:
            if poller.poll(200):
                self._turn(batch_max)
            t = time.monotonic()
            if t - last_tick >= 1.0:
                last_tick = t
                try:
                    if self.supervisor.tick():
                        self._data_version = -1  # our own writes: reload federations next batch
                except Exception:  # a job problem must never stop ingest
                    log.exception("job supervisor failed; ingest goes on")
            if watchdog and t - last_watchdog >= watchdog:
                systemd.notify("WATCHDOG=1")
                last_watchdog = t
            since = t - self._last_heartbeat
            # counters shown by `osfl-server status`: fresh within a second while busy
            if since >= self.cfg.ingest.heartbeat_s or (since >= 1.0 and self.stats.requests != self._hb_requests):
                self._hb_requests = self.stats.requests
                self._heartbeat("running")

    def _turn(self, batch_max: int) -> int:
        batch = []
        while len(batch) < batch_max:
            try:
                batch.append(self.sock.recv_multipart(zmq.NOBLOCK, copy=True))
            except zmq.Again:
                break
        if batch:
            self.handle_batch(batch)
        return len(batch)

    def drain(self) -> None:
        """Answer every request already received, for at most drain_s seconds."""
        deadline = time.monotonic() + self.cfg.ingest.drain_s
        while time.monotonic() < deadline and self._turn(self.cfg.ingest.batch_max):
            pass

    def shutdown(self) -> None:
        systemd.notify("STOPPING=1", "STATUS=draining")
        if self.sock is not None:
            self.drain()
            self.supervisor.stop()
            self.sock.close(linger=2000)
            self.ctx.term()
        if self.store is not None:
            self._heartbeat("stopped")
            self.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.store.close()
        log.info("stopped after %d requests (%d stored)", self.stats.requests, self.stats.stored)

    # ---- one batch: one transaction, one fsync, then the replies ------------------------------

    def handle_batch(self, batch: list[list[bytes]]) -> None:
        self._refresh_clients()
        replies = []
        remember: list[tuple[bytes, int]] = []
        store = self.store
        with store.transaction():
            for frames in batch:
                identity, frames = frames[0], frames[1:]
                replies.append([identity] + self._handle_one(frames, remember))
            if remember:
                store.remember(remember)
        # COMMIT has returned: everything acknowledged below is on disk
        self.stats.batches += 1
        self.stats.requests += len(batch)
        send = self.sock.send_multipart
        for r in replies:
            try:
                send(r, zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the peer went away; it will retry and get an idempotent answer
                log.debug("reply not sent: %s", exc)

    def _handle_one(self, frames: list[bytes], remember: list) -> list[bytes]:
        """One request inside the batch's transaction.

        Handlers check everything before they write, and the upload and chunk handlers write one
        statement last, so they need no savepoint of their own (a savepoint costs two statements
        per request on the hot path). Handlers that write more than once run inside one.
        """
        msg_id = b""
        db = self.store.db
        savepoint = False
        try:
            req = open_request(frames, self._key_for, self.guard, limits=self.limits)
            msg_id = req.header.msg_id
            savepoint = req.header.kind in MULTI_WRITE_KINDS
            if savepoint:
                db.execute("SAVEPOINT req")
            data = self._dispatch(req)
            if savepoint:
                db.execute("RELEASE req")
            remember.append((msg_id, req.header.created_ms))
            return encode_reply(msg_id, data=data)
        except Exception as exc:
            if savepoint:
                db.execute("ROLLBACK TO req")
                db.execute("RELEASE req")
            if not isinstance(exc, E.ProtocolError):
                log.exception("internal error while handling a request")
                exc = E.InternalError()
            cleanup = getattr(exc, "after_rollback", None)
            if cleanup is not None:
                cleanup()
            self.stats.rejected[exc.code] += 1
            log.debug("rejected %s: %s", exc.code, exc.message)
            return encode_reply(msg_id, error=exc)

    def _key_for(self, header) -> bytes:
        c = self._clients.get(header.fingerprint)
        if c is None:
            raise E.UnknownKey(f"key {header.fingerprint} is not enrolled here; run `osfl-edge enroll`")
        return c.public_key

    def _accepted(self, req: Request) -> Client:
        c = self._clients[req.header.fingerprint]
        if c.state == "accepted":
            return c
        err = {"pending": E.KeyPending, "rejected": E.KeyRejected, "revoked": E.KeyRevoked}[c.state]
        raise err(f"site {c.site} ({c.fingerprint}) is {c.state}"
                  + ("; ask the operator to run `osfl-server clients accept " + c.fingerprint + "`"
                     if c.state == "pending" else "; contact the operator"))

    def _dispatch(self, req: Request) -> dict:
        kind = req.header.kind
        if kind == "enroll":
            return self._enroll(req)
        if kind == "ping":
            return {"version": PROTOCOL_VERSION, "min_version": self.limits.min_version, "server_time_ms": now_ms()}
        if kind == "status":
            return self._status(req)
        client = self._accepted(req)
        if kind == "federation":
            return self._federation(req).public()
        if kind == "upload":
            return self._upload(req, client)
        if kind == "upload_begin":
            return self._upload_begin(req, client)
        if kind == "upload_chunk":
            return self._upload_chunk(req, client)
        if kind == "upload_commit":
            return self._upload_commit(req, client)
        if kind == "artifact_info":
            return self._artifact_info(req)
        if kind == "artifact_chunk":
            return self._artifact_chunk(req)
        raise E.UnknownKind(f"kind {kind!r} is not handled by this server")

    # ---- admission --------------------------------------------------------------------------

    def _enroll(self, req: Request) -> dict:
        body = unpack_body(req.body)
        site, curve, name = body.get("site"), body.get("curve"), body.get("name") or ""
        if not isinstance(site, str) or not SITE_ID_RE.match(site):
            raise E.MalformedBody("'site' must be 1-64 characters of letters, digits, '.', '_' or '-'")
        if not isinstance(curve, str) or len(curve) != 40 or not isinstance(name, str) or len(name) > 200:
            raise E.MalformedBody("'curve' must be a 40-character z85 CURVE public key and 'name' at most 200 characters")
        fp = req.header.fingerprint
        known = self._clients.get(fp)
        if known is not None:
            return {"state": known.state, "fingerprint": fp, "site": known.site}
        other = self.store.client_by_site(site)
        if other is not None:
            log.warning("SECURITY: site %r enrolled with key %s, but it is registered with key %s: refused "
                        "(possible impersonation; a site that really changed its key needs the operator to "
                        "revoke the old one and remove it)", site, fp, other.fingerprint)
            err = E.KeyConflict(f"site id {site!r} is registered with another key; if this site's key really "
                                f"changed, ask the operator")
            # the refusal must be on record although the request's own writes roll back
            err.after_rollback = lambda: self.store.audit("site", "enroll-refused-key-conflict", fp, site,
                                                          f"registered fingerprint {other.fingerprint}")
            raise err
        self.store.add_pending_client(fp, site, req.header.public_key, curve, name)
        self._data_version = -1  # our own write: reload the cache next batch
        self._clients[fp] = self.store.client(fp)
        return {"state": "pending", "fingerprint": fp, "site": site}

    def _status(self, req: Request) -> dict:
        c = self._clients[req.header.fingerprint]
        uploads = [{"federation": p.federation, "kind": p.kind, "payload_id": p.id, "size": p.size,
                    "received_ms": p.received_ms}
                   for p in self.store.payloads(fingerprint=c.fingerprint)]
        feds = {}
        if c.state == "accepted":
            for f in self.store.federations():
                job = self.store.latest_job(f.id)
                feds[f.id] = {"state": f.state, "received": self.store.count_sites(f.id), "quorum": f.quorum,
                              "classes": len(f.classes), "methods": list(f.methods),
                              "job": job_summary(job) if job else "",
                              "model": bool(self.store.artifact(f"model/{f.id}"))}
        return {"site": c.site, "state": c.state, "fingerprint": c.fingerprint, "uploads": uploads,
                "federations": feds}

    # ---- uploads ----------------------------------------------------------------------------

    def _federation(self, req: Request, *, for_upload: bool = False):
        fed_id = req.header.federation
        if not fed_id:
            raise E.MalformedHeader(f"a {req.header.kind} request names its federation in header field 'fed'")
        fed = self._feds.get(fed_id)
        if fed is None:
            raise E.UnknownFederation(f"no federation {fed_id!r} on this server; ask the operator for its id")
        if for_upload and fed.state != "open":
            raise E.FederationClosed(f"federation {fed_id!r} is {fed.state} and takes no more uploads")
        return fed

    def _check_kind(self, fed, kind: str) -> None:
        if kind not in PAYLOAD_KINDS:
            raise E.InvalidPayload(f"payload kind {kind!r} is not one of {', '.join(PAYLOAD_KINDS)}")
        if kind not in fed.methods:
            raise E.MethodNotAllowed(f"federation {fed.id!r} allows {', '.join(fed.methods)}; got {kind}")

    def _existing(self, fed_id: str, fp: str, kind: str, sha: bytes) -> dict | None:
        prior = self.store.payload_for(fed_id, fp, kind)
        if prior is None:
            return None
        if prior.sha256 != sha:
            raise E.PayloadConflict(f"this site already uploaded a different {kind} payload to {fed_id!r} "
                                    f"(sha256 {prior.sha256.hex()[:16]}...); one upload per site and method")
        return {"payload_id": prior.id, "sha256": prior.sha256, "size": prior.size, "duplicate": True}

    def _validate_payload(self, fed, raw: bytes) -> dict:
        payload = decode_payload(raw)
        if payload["federation"] != fed.id:
            raise E.InvalidPayload(f"the payload was built for federation {payload['federation']!r}, "
                                   f"not {fed.id!r}; rebuild it with --federation {fed.id}")
        self._check_kind(fed, payload["kind"])
        unknown = [c for c in payload["labels"] if c not in fed.classes]
        if unknown:
            raise E.ClassNotInFederation(f"class(es) {', '.join(map(repr, unknown[:5]))} are not in federation "
                                         f"{fed.id!r}, whose classes are {', '.join(fed.classes[:20])}")
        return payload

    def _upload(self, req: Request, client: Client) -> dict:
        fed = self._federation(req, for_upload=True)
        payload = self._validate_payload(fed, req.body)
        sha = req.header.body_sha256
        # insert first, look only on a conflict: one statement on the hot path instead of two
        pid = self.store.insert_payload(fed.id, client.fingerprint, payload["kind"], sha, len(req.body),
                                        req.header.msg_id, inline=req.body)
        if pid is None:
            return self._existing(fed.id, client.fingerprint, payload["kind"], sha)
        self.stats.stored += 1
        log.debug("stored payload %d from %s for %s (%d bytes)", pid, client.site, fed.id, len(req.body))
        return {"payload_id": pid, "sha256": sha, "size": len(req.body), "duplicate": False}

    def _upload_begin(self, req: Request, client: Client) -> dict:
        fed = self._federation(req, for_upload=True)
        body = unpack_body(req.body)
        kind, size, sha, chunk = body.get("kind"), body.get("size"), body.get("sha256"), body.get("chunk_size")
        if not (isinstance(kind, str) and isinstance(size, int) and isinstance(sha, bytes) and len(sha) == 32
                and isinstance(chunk, int)):
            raise E.MalformedBody("upload_begin needs kind (str), size (int), sha256 (32 bytes), chunk_size (int)")
        self._check_kind(fed, kind)
        if not (0 < size <= self.cfg.limits.max_payload_bytes):
            raise E.PayloadTooLarge(f"payloads may be 1 to {self.cfg.limits.max_payload_bytes} bytes; got {size}")
        if not (4096 <= chunk <= self.cfg.limits.max_body_bytes - 4096):
            raise E.MalformedBody(f"chunk_size must be 4096..{self.cfg.limits.max_body_bytes - 4096}; got {chunk}")
        dup = self._existing(fed.id, client.fingerprint, kind, sha)
        if dup:
            return dup | {"upload_id": "", "offset": size}
        uid = upload_id_for(client.fingerprint, fed.id, kind, sha)
        offset = self.store.open_upload(uid, fed.id, client.fingerprint, kind, size, sha, chunk)
        return {"upload_id": uid, "offset": offset, "chunk_size": chunk}

    def _open_upload(self, uid, client: Client) -> dict:
        up = self.store.upload(uid) if isinstance(uid, str) else None
        if up is None or up["fingerprint"] != client.fingerprint:
            raise E.UploadNotFound(f"no open upload {str(uid)[:40]!r} for this site; start again with upload_begin")
        return up

    def _upload_chunk(self, req: Request, client: Client) -> dict:
        body = unpack_body(req.body)
        up = self._open_upload(body.get("upload_id"), client)
        offset, data = body.get("offset"), body.get("data")
        if not isinstance(offset, int) or not isinstance(data, bytes) or not data:
            raise E.MalformedBody("upload_chunk needs offset (int) and data (non-empty bytes)")
        if offset < up["offset"]:
            # a retry of a chunk that already landed: idempotent, say where to continue
            return {"offset": up["offset"]}
        if offset > up["offset"]:
            raise E.ChunkOutOfOrder(f"the server holds {up['offset']} bytes of this upload; got a chunk at {offset}")
        if offset + len(data) > up["size"]:
            raise E.PayloadTooLarge(f"this chunk ends at byte {offset + len(data)}, past the announced "
                                    f"size {up['size']}")
        return {"offset": self.store.write_chunk(up["upload_id"], offset, data)}

    def _upload_commit(self, req: Request, client: Client) -> dict:
        body = unpack_body(req.body)
        up = self._open_upload(body.get("upload_id"), client)
        if up["offset"] != up["size"]:
            raise E.ChunkOutOfOrder(f"the server holds {up['offset']} of {up['size']} bytes; send the rest first")
        fed = self._federation(req, for_upload=True)
        if up["size"] <= 64 * 1024 * 1024:  # validate what the server can afford to parse in one piece
            try:
                self._validate_payload(fed, self.store.part_path(up["upload_id"]).read_bytes())
            except E.RequestError as err:
                err.after_rollback = lambda: self.store.reset_upload(up["upload_id"])
                raise
        rel, digest = self.store.finish_upload(up["upload_id"])
        if not rel:
            err = E.PayloadDigestMismatch(f"the assembled payload has sha256 {digest.hex()[:16]}..., the upload "
                                          f"announced {up['sha256'].hex()[:16]}...; upload it again")
            err.after_rollback = lambda: self.store.reset_upload(up["upload_id"])
            raise err
        pid = self.store.insert_payload(fed.id, client.fingerprint, up["kind"], digest, up["size"],
                                        req.header.msg_id, path=rel)
        if pid is None:  # the same payload arrived in one piece meanwhile
            return self._existing(fed.id, client.fingerprint, up["kind"], digest)
        self.stats.stored += 1
        return {"payload_id": pid, "sha256": digest, "size": up["size"], "duplicate": False}

    # ---- downloads of signed artifacts --------------------------------------------------------

    def _artifact(self, req: Request) -> tuple[dict, dict]:
        body = unpack_body(req.body)
        name = check_artifact_name(body.get("name"))
        art = self.store.artifact(name)
        if art is None:
            raise E.NotFound(f"the server has no {name!r} yet" + (
                "; the federation's model appears once training has finished" if name.startswith("model/") else ""))
        return body, art

    def _artifact_info(self, req: Request) -> dict:
        _, art = self._artifact(req)
        return {"manifest": art["manifest"], "signature": art["signature"],
                "chunk_size": self.cfg.limits.chunk_size}

    def _artifact_chunk(self, req: Request) -> dict:
        body, art = self._artifact(req)
        offset, length = body.get("offset"), body.get("length")
        if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset <= art["size"]
                and 0 < length <= self.cfg.limits.chunk_size):
            raise E.MalformedBody(f"artifact_chunk needs 0 <= offset <= {art['size']} and "
                                  f"0 < length <= {self.cfg.limits.chunk_size}")
        sha = body.get("sha256")
        if sha is not None and sha != art["sha256"]:
            raise E.NotFound(f"{art['name']} was republished since this download began; start it again")
        with open(self.store.state_dir / art["path"], "rb") as f:
            f.seek(offset)
            return {"data": f.read(length)}

