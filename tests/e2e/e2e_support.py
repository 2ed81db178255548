"""Loopback fixtures: a real daemon process on a free port, real sites with real keys.

The daemon is started with NOTIFY_SOCKET pointing at a datagram socket the test owns, so tests wait
for systemd's READY=1 instead of sleeping, and can see WATCHDOG and STOPPING too.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from edge_client.config import init_home
from edge_client.transport import Client
from server_daemon.cli import cli as server_cli
from server_daemon.ingest.config import load_config
from server_daemon.ingest.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Notifier:
    """Plays systemd's part of sd_notify: collects what the daemon sends."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(field in m.split("\n") for m in self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"daemon never sent {field}; got {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.drain()
        self.sock.close()


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.config = root / "server.toml"
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.notifier: Notifier | None = None
        res = self.osfl("init", "--bind", self.endpoint)
        self.key = res.output.strip().splitlines()[-1]
        self.cfg = load_config(self.config)

    def osfl(self, *args: str, expect: int = 0):
        res = CliRunner().invoke(server_cli, ["--config", str(self.config), *args], catch_exceptions=False)
        assert res.exit_code == expect, res.output
        return res

    def start(self, env: dict | None = None) -> None:
        self.notifier = Notifier(self.root / f"notify-{time.monotonic_ns()}.sock")
        e = dict(os.environ, NOTIFY_SOCKET=str(self.notifier.path), **(env or {}))
        self.log = open(self.root / "daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "server_daemon.cli", "--config", str(self.config), "run"],
                                     env=e, stdout=self.log, stderr=subprocess.STDOUT)
        self.notifier.wait_for("READY=1")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.proc = None
            self.log.close()
            self.notifier.close()
        return rc

    def store(self) -> Store:
        return Store(self.cfg.state_dir)

    def payload_count(self) -> int:
        s = self.store()
        try:
            return len(s.payloads())
        finally:
            s.close()


def make_site(server: Server, root: Path, site_id: str, *, accept: bool = True, timeout: float = 5.0,
              server_key: str | None = None) -> Client:
    cfg = init_home(root / site_id, server.endpoint, server_key or server.key, site_id)
    client = Client(cfg, timeout_s=timeout, retries=1)
    if accept:
        client.enroll()
        server.osfl("clients", "accept", client.keys.fingerprint)
    return client
