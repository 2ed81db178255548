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

from protocol.constants import PROTOCOL_VERSION
from protocol.keys import KeyPair

from . import systemd
from .config import ServerConfig
from .handlers import Handlers, Stats
from .metrics import write_metrics
from .store import Store
from .supervisor import Supervisor

log = logging.getLogger(__name__)

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
        self.handlers.load_recent_ids()
        self.handlers.refresh()
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
                        self.handlers.invalidate()  # our own writes: reload federations next batch
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
        self.handlers.refresh()
        replies = []
        remember: list[tuple[bytes, int]] = []
        store = self.store
        with store.transaction():
            for frames in batch:
                identity, frames = frames[0], frames[1:]
                replies.append([identity] + self.handlers.handle(frames, remember))
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
