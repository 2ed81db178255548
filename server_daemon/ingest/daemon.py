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
What each request does is in ``handlers.py``; this module is the socket, the loop and the lifecycle.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import zmq

from zmq.utils import z85

from protocol.constants import PROTOCOL_VERSION
from protocol.keys import KeyPair

from . import systemd
from .config import ServerConfig
from .handlers import Handlers, Stats, is_disk_full
from .metrics import write_metrics
from .store import Store
from .supervisor import Supervisor

log = logging.getLogger(__name__)

#: where libzmq looks for the ZAP handler of a context (RFC 27)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"

class Daemon:
    def __init__(self, cfg: ServerConfig, keys: KeyPair | None = None):
        self.cfg = cfg
        self.keys = keys or KeyPair.load(cfg.keys_dir, "server")
        self.stopping = False
        self.stats = Stats()
        self._hb_requests = 0
        self.store: Store | None = None
        self.handlers: Handlers | None = None
        self.sock: zmq.Socket | None = None
        self.ctx: zmq.Context | None = None

    # ---- start-up ---------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            log.warning("second signal %s: exiting now", signum)
            os._exit(1)
        log.info("signal %s: draining, then exiting", signum)
        self.stopping = True

    def start(self) -> None:
        self.store = Store(self.cfg.state_dir)
        self.handlers = Handlers(self.cfg, self.store, stats=self.stats)
        self.supervisor = Supervisor(self.cfg, self.store)
        # housekeeping writes: on a full disk the daemon still starts (and answers DISK_FULL)
        self._tolerate_full_disk("prune old message ids", self.handlers.load_recent_ids)
        self.handlers.refresh()
        self._tolerate_full_disk("requeue interrupted jobs", self.supervisor.recover)
        self._expire_uploads()
        self.ctx = zmq.Context()
        # our own ZAP handler, answered from the loop: it admits every CURVE client (an unknown one
        # still gets error replies) and hands the client's CURVE key to each request as User-Id, so
        # a request is accepted only on a connection with the key its site enrolled with
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        s = self.ctx.socket(zmq.ROUTER)
        s.zap_domain = b"osfl"
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

    def _tolerate_full_disk(self, what: str, fn) -> bool:
        try:
            fn()
            return True
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.error("disk full: could not %s (%s); the daemon goes on and answers DISK_FULL", what, exc)
            return False

    def _expire_uploads(self) -> None:
        """Open uploads untouched for ``[limits] upload_expiry_s`` are discarded (rows and part files)."""
        before = int((time.time() - self.cfg.limits.upload_expiry_s) * 1000)

        def expire() -> None:
            with self.store.transaction():
                n = self.store.expire_uploads(before)
            if n:
                log.info("discarded %d open upload(s) untouched for %.0f s", n, self.cfg.limits.upload_expiry_s)

        self._tolerate_full_disk("expire stale uploads", expire)
        self._last_expiry = time.monotonic()

    def _heartbeat(self, state: str) -> None:
        def beat() -> None:
            with self.store.transaction():
                self.store.heartbeat(pid=os.getpid(), bind=getattr(self, "endpoint", self.cfg.server.bind),
                                     state=state, started_ms=self.stats.started_ms, counters=self.stats.as_dict())

        self._tolerate_full_disk("write the heartbeat", beat)
        self._last_heartbeat = time.monotonic()
        try:
            write_metrics(self.store, self.cfg.state_dir / "metrics.prom", self.store.daemon_info())
        except OSError as exc:  # metrics are a convenience: never a reason to stop
            log.warning("cannot write metrics.prom: %s", exc)

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
        poller.register(self.zap, zmq.POLLIN)
        watchdog = systemd.watchdog_interval_s()
        last_watchdog = last_tick = time.monotonic()
        batch_max = self.cfg.ingest.batch_max
        while not self.stopping:
            ready = dict(poller.poll(200))
            if self.zap in ready:
                self._answer_zap()
            if self.sock in ready:
                self._turn(batch_max)
            t = time.monotonic()
            if t - last_tick >= 1.0:
                last_tick = t
                try:
                    if self.supervisor.tick():
                        self.handlers.invalidate()  # our own writes: reload federations next batch
                except Exception:  # a job problem must never stop ingest
                    log.exception("job supervisor failed; ingest goes on")
            if t - self._last_expiry >= 60.0:
                self._expire_uploads()
            if watchdog and t - last_watchdog >= watchdog:
                systemd.notify("WATCHDOG=1")
                last_watchdog = t
            since = t - self._last_heartbeat
            # counters shown by `osfl-server status`: fresh within a second while busy
            if since >= self.cfg.ingest.heartbeat_s or (since >= 1.0 and self.stats.requests != self._hb_requests):
                self._hb_requests = self.stats.requests
                self._heartbeat("running")

    def _answer_zap(self) -> None:
        """Answer every waiting ZAP request (RFC 27): 200 with the client's CURVE key (z85) as User-Id."""
        while True:
            try:
                msg = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id = (msg + [b"", b""])[:2]
            mechanism, credentials = (msg[5], msg[6:]) if len(msg) >= 6 else (b"", [])
            if version != b"1.0" or mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
                self.zap.send_multipart([b"1.0", request_id, b"400", b"CURVE only", b"", b""])
                continue
            self.zap.send_multipart([b"1.0", request_id, b"200", b"OK", z85.encode(credentials[0]), b""])

    def _turn(self, batch_max: int) -> int:
        batch, keys = [], []
        while len(batch) < batch_max:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                keys.append(frames[-1].get("User-Id"))
            except zmq.ZMQError:  # no ZAP metadata (cannot happen with our handler bound): no binding check
                keys.append(None)
            batch.append([f.bytes for f in frames])
        if batch:
            self.handle_batch(batch, keys)
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
            self.zap.close(linger=0)
            self.ctx.term()
        if self.store is not None:
            self._heartbeat("stopped")
            self._tolerate_full_disk("checkpoint the WAL",
                                     lambda: self.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
            self.store.close()
        log.info("stopped after %d requests (%d stored)", self.stats.requests, self.stats.stored)

    # ---- one batch: one transaction, one fsync, then the replies ------------------------------

    def handle_batch(self, batch: list[list[bytes]], curve_keys: list[str | None] | None = None) -> None:
        """Every request of the batch in one transaction, then the replies (after COMMIT only)."""
        replies = self.handlers.handle_batch(batch, curve_keys)
        # COMMIT has returned: everything acknowledged below is on disk
        send = self.sock.send_multipart
        for identity, reply in replies:
            try:
                send([identity] + reply, zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the peer went away; it will retry and get an idempotent answer
                log.debug("reply not sent: %s", exc)
