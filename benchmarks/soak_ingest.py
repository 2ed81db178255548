"""Soak: many sites upload while the daemon is SIGKILLed again and again and the disk fills up once.

A real daemon on loopback, its state directory on a small tmpfs (so the disk can really fill; needs
root, else the fill is skipped and said so). ``--sites`` sites, already accepted, each upload two
payloads: class_prompts inline, and captions of about 300 KB in 64 KiB chunks,
from ``--workers`` threads, each retrying until acknowledged (as ``osfl-edge upload`` would be
rerun). Meanwhile the daemon is killed with SIGKILL ``--kills`` times at random moments and
restarted, and once, half-way, the tmpfs is filled to the last byte for two seconds.

Afterwards, with the daemon stopped: every acknowledged payload must be in the store byte for byte,
under the id it was acknowledged with; no (site, kind) is stored twice; nothing unacknowledged is
half-stored; ``verify-store`` is clean. Prints one table (``--json``: one object) and exits 1 when
any of that fails. Usage::

    python benchmarks/soak_ingest.py [--sites 1000] [--kills 100] [--workers 32] [--seed 1] [--no-fill]

``tests/e2e/test_e2e_soak.py`` runs a CI-sized version (40 sites, 5 kills, one fill).
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_client.config import EdgeConfig  # noqa: E402
from edge_client.transport import Client  # noqa: E402
from protocol import errors as E  # noqa: E402
from protocol.keys import KeyPair, encode_server_key  # noqa: E402
from protocol.payloads import encode_payload  # noqa: E402
from server_daemon.ingest.config import load_config, render_config, set_config_keys  # noqa: E402
from server_daemon.ingest.maintenance import verify_store  # noqa: E402
from server_daemon.ingest.store import Store  # noqa: E402

FED = "soak"
CLASSES = ["cat", "dog", "car", "bus"]


def _payloads(i: int) -> list[tuple[str, bytes]]:
    """Site i's two uploads: class prompts in one request, and captions (about 300 KB) in chunks."""
    head = {"osfl_payload": 1, "federation": FED, "labels": CLASSES, "params": {}, "bundle": None,
            "created_ms": 1}
    prompts = encode_payload({"osfl_payload": 1, "kind": "class_prompts", **head, "counts": [i % 7, 1, 0, 2],
                              "data": {"domain": f"scans {i}"}})
    items = [{"label_index": k % 4, "caption": f"site {i} image {k}: a grey thing on a wooden table, seen close up"}
             for k in range(4000)]
    counts = [sum(1 for it in items if it["label_index"] == c) for c in range(4)]
    captions = encode_payload({"osfl_payload": 1, "kind": "captions", **head, "counts": counts,
                               "data": {"captions": items, "scrubbed": 0}})
    return [("class_prompts", prompts), ("captions", captions)]


class Daemon:
    def __init__(self, root: Path, state_root: Path):
        self.root = root
        self.config = root / "server.toml"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.config.write_text(render_config(self.endpoint, str(state_root / "state")))
        set_config_keys(self.config, "limits", {"min_free_bytes": 0})  # let the disk fill for real
        self.cfg = load_config(self.config)
        Store(self.cfg.state_dir, create=True).close()
        keys = KeyPair.generate()
        keys.save(self.cfg.keys_dir, "server")
        self.key = encode_server_key(keys.curve_public, keys.public)
        self.proc: subprocess.Popen | None = None
        self.log = open(root / "daemon.log", "ab")

    def start(self, timeout: float = 60.0) -> None:
        path = self.root / f"notify-{time.monotonic_ns()}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        env = dict(os.environ, NOTIFY_SOCKET=str(path))
        self.proc = subprocess.Popen([sys.executable, "-m", "server_daemon.cli", "--config", str(self.config), "run"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while True:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    if "READY=1" in sock.recv(4096).decode().split("\n"):
                        return
                except socket.timeout:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon did not become ready (exit {self.proc.poll()}); see "
                                       f"{self.root / 'daemon.log'}")
        finally:
            sock.close()
            path.unlink(missing_ok=True)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem has not one byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def soak(sites: int, kills: int, workers: int, seed: int, fill: bool, deadline_s: float) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="osfl-soak-"))
    disk = work / "disk"
    # room for every payload (a 300 KB blob each, and its part while it uploads) and the WAL: the disk
    # is full only while the soak fills it
    mounted = fill and _mount_tmpfs(disk, 96 + sites)
    if not mounted:
        disk.mkdir(exist_ok=True)
    daemon = Daemon(work, disk)
    store = Store(daemon.cfg.state_dir)
    store.create_federation(FED, CLASSES, ["class_prompts", "captions"], 4, sites + 1)
    site_keys = []
    for i in range(sites):
        k = KeyPair.generate()
        with store.transaction():
            store.add_pending_client(k.fingerprint, f"site-{i:04d}", k.public, k.curve_public.decode(), "")
        store.transition(k.fingerprint, "accept")
        site_keys.append(k)
    store.close()
    payloads = [p for i in range(sites) for p in _payloads(i)]  # upload j is site j // 2's
    daemon.start()

    acks: dict[int, dict] = {}
    errors: collections.Counter = collections.Counter()
    todo: queue.Queue = queue.Queue()
    for j in rng.sample(range(len(payloads)), len(payloads)):
        todo.put(j)
    stop = threading.Event()
    t0 = time.monotonic()

    def uploader() -> None:
        while not stop.is_set():
            try:
                j = todo.get_nowait()
            except queue.Empty:
                return
            i = j // 2
            kind, raw = payloads[j]
            cfg = EdgeConfig(home=work / "sites", site_id=f"site-{i:04d}", name="", endpoint=daemon.endpoint,
                             server_key=daemon.key, timeout_s=3.0, retries=2, chunk_size=64 * 1024)
            while not stop.is_set():
                client = Client(cfg, site_keys[i])
                try:
                    reply = client.upload(raw, FED, kind)
                    acks[j] = {"payload_id": reply["payload_id"], "duplicate": reply["duplicate"]}
                    break
                except E.ProtocolError as exc:
                    errors[exc.code] += 1
                    time.sleep(0.2 + rng.random() * 0.3)
                finally:
                    client.close()

    threads = [threading.Thread(target=uploader, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    filled_at = kills // 2 if mounted else -1
    disk_full_s = 0.0
    for k in range(kills):
        if not any(t.is_alive() for t in threads):
            break
        time.sleep(rng.uniform(0.05, 0.4))
        daemon.kill()
        if k == filled_at:
            daemon.start()
            filler = _fill(disk)
            t_fill = time.monotonic()
            time.sleep(2.0)
            filler.unlink()
            disk_full_s = time.monotonic() - t_fill
            daemon.kill()
        daemon.start()
    kills_done = k + 1 if kills else 0
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    stop.set()
    wall = time.monotonic() - t0
    rc = daemon.stop()

    # ---- the check: every ack byte for byte, no duplicate, verify-store clean ----
    store = Store(daemon.cfg.state_dir)
    site_of = {c.fingerprint: c.site for c in store.clients()}
    rows = store.payloads(FED)
    per_site = collections.Counter((site_of[p.fingerprint], p.kind) for p in rows)
    by_id = {p.id: p for p in rows}
    found = sum(1 for j, a in acks.items()
                if a["payload_id"] in by_id and store.payload_bytes(a["payload_id"]) == payloads[j][1]
                and (site_of[by_id[a["payload_id"]].fingerprint], by_id[a["payload_id"]].kind)
                == (f"site-{j // 2:04d}", payloads[j][0]))
    store.close()
    report = verify_store(daemon.cfg.state_dir)
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    return {
        "sites": sites, "uploads": len(payloads), "kills": kills_done, "disk_filled": mounted, "disk_full_seconds": round(disk_full_s, 1),
        "acknowledged": len(acks), "found_byte_for_byte": found, "stored_rows": len(rows),
        "duplicated": sum(1 for n in per_site.values() if n > 1), "unacknowledged_rows": len(rows) - len(acks),
        "verify_store_clean": report.clean, "errors_seen_by_sites": dict(errors), "daemon_exit": rc,
        "wall_s": round(wall, 1), "state": str(work),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-fill", action="store_true", help="do not fill the disk (no tmpfs needed)")
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds the uploads may take after the kills")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = soak(args.sites, args.kills, args.workers, args.seed, not args.no_fill, args.deadline)
    ok = (r["acknowledged"] == r["uploads"] == r["found_byte_for_byte"] and r["duplicated"] == 0
          and r["verify_store_clean"] and r["unacknowledged_rows"] == 0)
    if args.json:
        print(json.dumps(r | {"ok": ok}))
    else:
        for k, v in r.items():
            print(f"{k:24} {v}")
        print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
