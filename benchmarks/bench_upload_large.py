"""Large payloads: a chunked upload of a real payload of about SIZE bytes from a file into a real daemon.

The payload is a valid ``captions`` payload (the largest kind today: at most 1,000,000 captions of
512 characters, about 500 MiB), written as it streams to disk. The daemon checks it at commit while
it streams (bounded memory), so random bytes would be refused, as they must. Prints throughput, the
site process's peak RSS (the file is streamed, never held whole in memory) and the daemon's peak
RSS, then checks the stored blob's sha256. Needs about 2x SIZE of free disk.

    python benchmarks/bench_upload_large.py [--size-mib 480] [--chunk-kib 1024]
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


def write_captions(path: Path, size: int) -> None:
    """A valid captions payload of about ``size`` bytes, packed as it streams to disk."""
    import msgpack

    per = 500  # bytes per packed caption item, about
    n = min(max(1, size // per), 1_000_000)
    half = n // 2
    text = ("a grey patch of skin with a darker ring, seen close up in daylight " * 8)[:470]
    packer = msgpack.Packer(use_bin_type=True)
    head = {"osfl_payload": 1, "kind": "captions", "federation": "big", "labels": ["a", "b"],
            "counts": [half, n - half], "params": {}, "bundle": None, "created_ms": 0}
    with open(path, "wb") as f:
        f.write(packer.pack_map_header(len(head) + 1))
        for k, v in head.items():
            f.write(packer.pack(k) + packer.pack(v))
        f.write(packer.pack("data") + packer.pack_map_header(2) + packer.pack("captions"))
        f.write(packer.pack_array_header(n))
        for i in range(n):
            f.write(packer.pack({"label_index": 0 if i < half else 1, "caption": f"{text} {i}"}))
        f.write(packer.pack("scrubbed") + packer.pack(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=480)
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
        store.create_federation("big", ["a", "b"], ["captions"], 1, 1)
        site_cfg = init_home(tmp / "site", endpoint, encode_server_key(sk.curve_public, sk.public), "big-site")
        site_cfg = EdgeConfig(**{**site_cfg.__dict__, "chunk_size": args.chunk_kib * 1024, "timeout_s": 60.0})
        kp = site_cfg.keys()
        store.add_pending_client(kp.fingerprint, "big-site", kp.public, kp.curve_public.decode(), "")
        store.db.execute("UPDATE clients SET state='accepted'")
        store.close()

        src = tmp / "payload.osfl"
        write_captions(src, args.size_mib << 20)
        size = src.stat().st_size
        proc = subprocess.Popen([sys.executable, "-m", "server_daemon", "--config", str(tmp / "server.toml"), "run"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            client = Client(site_cfg)
            t0 = time.perf_counter()
            reply = client.upload(src, "big", "captions")
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
        print(f"peak RSS: site process {site_rss:,.0f} MiB, daemon {daemon_rss:,.0f} MiB (it checked the whole "
              f"payload at commit)")
        print(f"stored blob sha256 matches: {ok}; reply payload_id {reply['payload_id']}")


if __name__ == "__main__":
    main()
