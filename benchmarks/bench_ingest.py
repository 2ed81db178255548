"""Ingest benchmark: verified, durable class_prompts payloads per second into one real daemon.

For each concurrency (sites sending at once, each waiting for its ack before the next upload, as
a real site does), it starts a fresh daemon, enrolls and accepts the sites, pre-signs every
request (so the clients' signing does not compete for the CPU while we measure), then sends them
over CURVE on loopback and counts acknowledged uploads. It reports:

- payloads/s of wall time, and payloads per second of the daemon's own CPU time ("per core");
- the raw Ed25519 verify rate measured in this same process (ratio: daemon per-core rate / raw);
- the same run with group commit off (batch_max=1: one fsync per message) as the baseline;
- bytes on the wire for a 10-class class_prompts upload (all four frames).

Every ack still comes only after COMMIT (synchronous=FULL, WAL fsynced). Usage:

    python benchmarks/bench_ingest.py [--sites 1,8,64] [--messages 6000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from protocol.envelope import decode_reply, encode_request, signed_bytes  # noqa: E402
from protocol.keys import KeyPair, decode_server_key  # noqa: E402
from protocol.payloads import encode_payload  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def payload(fed: str) -> bytes:
    return encode_payload({"osfl_payload": 1, "kind": "class_prompts", "federation": fed, "labels": CLASSES,
                           "counts": [500] * 10, "params": {}, "bundle": None, "created_ms": int(time.time() * 1000),
                           "data": {"domain": None}})


def raw_verify_rate(n: int = 20000) -> float:
    k = KeyPair.generate()
    frames = encode_request("upload", payload("f"), k.signing, federation="f")
    msg = signed_bytes(frames[0], frames[1], frames[2])
    pub = k.public
    t = timeit.timeit(lambda: Ed25519PublicKey.from_public_bytes(pub).verify(frames[3], msg), number=n)
    return n / t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_worker(endpoint: str, server_curve: bytes, jobs: list[tuple[bytes, bytes, list[list[bytes]]]],
                  start_evt, out_q) -> None:
    """Drive several sites' sockets at once: one outstanding request per site."""
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for curve_pub, curve_sec, frames in jobs:
        s = ctx.socket(zmq.DEALER)
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve_pub, curve_sec, server_curve
        s.linger = 0
        s.connect(endpoint)
        socks.append([s, frames, 0])
        poller.register(s, zmq.POLLIN)
    start_evt.wait()
    t0 = time.perf_counter()
    for entry in socks:
        entry[0].send_multipart(entry[1][0])
    by_sock = {entry[0]: entry for entry in socks}
    acked = failed = 0
    pending = len(socks)
    while pending:
        for s, _ in poller.poll(30000) or [(None, None)]:
            if s is None:
                raise TimeoutError("no reply for 30 s")
            entry = by_sock[s]
            reply = decode_reply(s.recv_multipart())
            if reply.ok:
                acked += 1
            else:
                failed += 1
            entry[2] += 1
            if entry[2] < len(entry[1]):
                s.send_multipart(entry[1][entry[2]])
            else:
                pending -= 1
    out_q.put((acked, failed, t0, time.perf_counter()))
    for entry in socks:
        entry[0].close()
    ctx.term()


def run_once(n_sites: int, n_messages: int, batch_max: int, workers: int) -> dict:
    from server_daemon.ingest.config import load_config, render_config
    from server_daemon.ingest.store import Store

    with tempfile.TemporaryDirectory(prefix="osfl-bench-") as tmp:
        tmp = Path(tmp)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg_text = render_config(endpoint, "state").replace("batch_max = 512", f"batch_max = {batch_max}")
        (tmp / "server.toml").write_text(cfg_text)
        cfg = load_config(tmp / "server.toml")
        store = Store(cfg.state_dir, create=True)
        server_keys = KeyPair.generate()
        server_keys.save(cfg.keys_dir, "server")
        per_site = max(1, n_messages // n_sites)
        feds = [f"f{i}" for i in range(per_site)]
        sites = [KeyPair.generate() for _ in range(n_sites)]
        with store.transaction():
            for f in feds:
                store.db.execute("INSERT INTO federations VALUES (?,?,?,?,?,?,?,?,?)",
                                 (f, __import__("json").dumps(CLASSES), '["class_prompts"]', 400, 1000, None, "open",
                                  0, "{}"))
            for i, k in enumerate(sites):
                store.add_pending_client(k.fingerprint, f"site-{i}", k.public, k.curve_public.decode(), "")
                store.db.execute("UPDATE clients SET state='accepted' WHERE fingerprint=?", (k.fingerprint,))
        store.close()
        bodies = {f: payload(f) for f in feds}
        jobs = [(k.curve_public, k.curve_secret,
                 [encode_request("upload", bodies[f], k.signing, federation=f) for f in feds]) for k in sites]
        prof = os.environ.get("OSFL_BENCH_PROFILE")  # a path: write the daemon's cProfile there
        cmd = [sys.executable] + (["-m", "cProfile", "-o", prof] if prof else []) + [
            "-m", "server_daemon", "--config", str(tmp / "server.toml"), "run"]
        proc = subprocess.Popen(cmd,
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # ready when a ping-free probe can connect: poll the heartbeat row the daemon writes at start
            deadline = time.time() + 30
            while time.time() < deadline:
                s = Store(cfg.state_dir)
                info = s.daemon_info()
                s.close()
                if info and info["state"] == "running":
                    break
                time.sleep(0.05)
            server_curve = decode_server_key_from(server_keys)
            start = mp.Event()
            q: mp.Queue = mp.Queue()
            chunks = [jobs[i::workers] for i in range(workers)]
            procs = [mp.Process(target=client_worker, args=(endpoint, server_curve, c, start, q))
                     for c in chunks if c]
            for p in procs:
                p.start()
            time.sleep(0.5 + 0.01 * n_sites)  # let every CURVE handshake finish before the clock starts
            cpu0 = cpu_seconds(proc.pid)
            start.set()
            results = [q.get(timeout=600) for _ in procs]
            cpu1 = cpu_seconds(proc.pid)
            for p in procs:
                p.join()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        s = Store(cfg.state_dir)
        stored = len(s.payloads())
        s.close()
        acked = sum(r[0] for r in results)
        failed = sum(r[1] for r in results)
        wall = max(r[3] for r in results) - min(r[2] for r in results)
        assert failed == 0, f"{failed} uploads were refused"
        assert stored == acked, f"acked {acked} but stored {stored}"
        return {"acked": acked, "wall_s": wall, "per_s": acked / wall, "daemon_cpu_s": cpu1 - cpu0,
                "per_cpu_s": acked / max(cpu1 - cpu0, 1e-9)}


def decode_server_key_from(keys: KeyPair) -> bytes:
    from protocol.keys import encode_server_key

    return decode_server_key(encode_server_key(keys.curve_public, keys.public))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", default="1,8,64")
    ap.add_argument("--messages", type=int, default=6000, help="uploads per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    ap.add_argument("--no-baseline", action="store_true", help="skip the batch_max=1 runs")
    args = ap.parse_args()

    k = KeyPair.generate()
    frames = encode_request("upload", payload("fed-1"), k.signing, federation="fed-1")
    wire = sum(len(f) for f in frames)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; zmq {zmq.zmq_version()}")
    print(f"10-class class_prompts upload: payload {len(frames[2])} B, on the wire {wire} B in 4 frames "
          f"(header {len(frames[1])} B, signature 64 B; before CURVE's framing)")
    verify = statistics.median(raw_verify_rate() for _ in range(3))
    print(f"raw Ed25519 verify (cryptography, this process): {verify:,.0f}/s per core")
    print()
    print(f"{'sites':>5}  {'mode':>14}  {'payloads/s':>10}  {'per CPU-s':>10}  {'vs verify':>9}  runs")
    modes = [("group commit", 512)] + ([] if args.no_baseline else [("fsync each", 1)])
    for n in [int(x) for x in args.sites.split(",")]:
        for label, batch in modes:
            runs = [run_once(n, args.messages if batch > 1 else min(args.messages, 1500), batch,
                             min(args.workers, n)) for _ in range(args.repeats)]
            wall = statistics.median(r["per_s"] for r in runs)
            cpu = statistics.median(r["per_cpu_s"] for r in runs)
            print(f"{n:>5}  {label:>14}  {wall:>10,.0f}  {cpu:>10,.0f}  {cpu / verify:>8.2f}x  {len(runs)}"
                  f"  (median; {runs[0]['acked']} uploads each)")


if __name__ == "__main__":
    main()
