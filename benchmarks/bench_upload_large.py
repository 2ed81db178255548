"""Large payloads: a chunked upload of SIZE bytes (default 2 GiB) from a file into a real daemon.

Prints throughput, the site process's peak RSS (the file is streamed, never held whole in memory)
and the daemon's peak RSS, then checks the stored blob's sha256. Needs about 2x SIZE of free disk.

    python benchmarks/bench_upload_large.py [--size-mib 2048] [--chunk-kib 1024]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_client.config import EdgeConfig, init_home  # noqa: E402
from edge_client.transport import Client  # noqa: E402
from protocol.keys import KeyPair, encode_server_key  # noqa: E402
from server_daemon.ingest.config import load_config, render_config  # noqa: E402
from server_daemon.ingest.store import Store  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--chunk-kib", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="osfl-big-", dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        (tmp / "server.toml").write_text(render_config(endpoint, "state"))
        cfg = load_config(tmp / "server.toml")
        store = Store(cfg.state_dir, create=True)
        sk = KeyPair.generate()
        sk.save(cfg.keys_dir, "server")
        store.create_federation("big", ["a", "b"], ["class_prompts"], 1, 1)
        site_cfg = init_home(tmp / "site", endpoint, encode_server_key(sk.curve_public, sk.public), "big-site")
        site_cfg = EdgeConfig(**{**site_cfg.__dict__, "chunk_size": args.chunk_kib * 1024, "timeout_s": 60.0})
        kp = site_cfg.keys()
        store.add_pending_client(kp.fingerprint, "big-site", kp.public, kp.curve_public.decode(), "")
        store.db.execute("UPDATE clients SET state='accepted'")
        store.close()

        src = tmp / "payload.bin"
        block = os.urandom(64 << 20)
        with open(src, "wb") as f:
            for _ in range(max(1, args.size_mib // 64)):
                f.write(block)
        size = src.stat().st_size
        proc = subprocess.Popen([sys.executable, "-m", "server_daemon", "--config", str(tmp / "server.toml"), "run"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            client = Client(site_cfg)
            t0 = time.perf_counter()
            reply = client.upload(src, "big", "class_prompts")
            dt = time.perf_counter() - t0
            daemon_rss = peak_rss_mib(proc.pid)
            client.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        store = Store(cfg.state_dir)
        [p] = store.payloads("big")
        blob = cfg.state_dir / p.path
        ok = p.sha256 == h.digest() and blob.stat().st_size == size
        site_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"uploaded {size / 2**20:,.0f} MiB in {dt:.1f} s: {size / 2**20 / dt:,.0f} MiB/s "
              f"({args.chunk_kib} KiB chunks, each fsynced before its ack)")
        print(f"peak RSS: site process {site_rss:,.0f} MiB (includes the 64 MiB block used to write the file), "
              f"daemon {daemon_rss:,.0f} MiB")
        print(f"stored blob sha256 matches: {ok}; reply payload_id {reply['payload_id']}")


if __name__ == "__main__":
    main()
