"""`make demo`: a whole federation on this machine, over loopback, with the real programs.

It initialises a server with a generator model, starts the daemon (waiting for its systemd
READY=1, as systemd would), creates a federation, then plays three hospitals: each makes a small
ImageFolder, runs `osfl-edge init`, `enroll`, `prepare`, `inspect` and `upload` as separate
processes (the edge client never shares a process with the server), while the operator accepts
each site. The quorum starts synthesis and training in worker processes; each site then runs
`osfl-edge fetch-model` (signed, verified) and `osfl-edge evaluate` on its own images. The daemon
is stopped with SIGTERM, the report is written, and one table is printed.

The generator is a tiny Stable-Diffusion-architecture model with random weights (written by
`osfl-server tiny-models`), unless --model-dir names a real one: with random weights the images
are noise, so the accuracy is near chance. The loop, not the quality, is what this shows.

Everything lives in a work directory (default ./demo-run, wiped at start) so it can be looked at
afterwards: the server's config, store and log, each site's config, keys and payload file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["circle", "square", "triangle"]
SITES = [("hospital-north", {"circle": 12, "square": 2, "triangle": 0}),
         ("hospital-south", {"circle": 0, "square": 10, "triangle": 4}),
         ("clinic-east", {"circle": 3, "square": 3, "triangle": 9})]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def draw(shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
    d = ImageDraw.Draw(im)
    c = tuple(int(v) for v in rng.integers(150, 256, 3))
    r = int(rng.integers(6, 13))
    x, y = (int(v) for v in rng.integers(r, size - r, 2))
    if shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    elif shape == "square":
        d.rectangle([x - r, y - r, x + r, y + r], fill=c)
    else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=c)
    return im


def make_site_data(root: Path, counts: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        if n == 0:
            continue
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw(cls, rng).save(root / cls / f"img{i:03d}.png")


def sh(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"demo step failed: {' '.join(args[:4])} ... (exit {res.returncode})")
    return res


def server(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return sh("-m", "server_daemon", "--config", str(cfg), *args)


def edge(home: Path, *args: str) -> subprocess.CompletedProcess:
    return sh("-m", "edge_client.cli", "--home", str(home), *args)


def wait_ready(notify: socket.socket, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode} before it was ready; see its log")
        notify.settimeout(0.5)
        try:
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return
        except socket.timeout:
            pass
    raise SystemExit("the daemon did not report READY=1 within a minute")


def set_keys(config: Path, section: str, values: dict) -> None:
    """Change keys of one [section] of the config written by `osfl-server init`."""
    lines, current = config.read_text().splitlines(), None
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip("[] ")
        key = line.split("=", 1)[0].strip()
        if current == section and "=" in line and not line.lstrip().startswith("#") and key in values:
            v = values[key]
            lines[i] = f"{key} = " + (f'"{v}"' if isinstance(v, str) else ("true" if v is True else
                                                                           "false" if v is False else str(v)))
    config.write_text("\n".join(lines) + "\n")


def wait_done(cfg: Path, fed: str, proc: subprocess.Popen, timeout: float = 900) -> dict:
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}; see its log")
        info = json.loads(server(cfg, "status", "--json").stdout)
        f = [x for x in info["federations"] if x["id"] == fed][0]
        line = f"{f['state']}: {f['job']}"
        if line != last:
            print(f"      {line}")
            last = line
        if f["state"] in ("done", "failed"):
            return f
        time.sleep(1.0)
    raise SystemExit(f"federation {fed} did not finish within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="demo-run", help="where everything is written (wiped first)")
    ap.add_argument("--model-dir", default=None, help="a local diffusers directory (default: a tiny random one)")
    ap.add_argument("--images-per-class", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    work = Path(args.workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = work / "server" / "server.toml"
    endpoint = f"tcp://127.0.0.1:{free_port()}"

    print(f"[1/7] server: init at {cfg.parent}, listening on {endpoint}")
    key = server(cfg, "init", "--bind", endpoint).stdout.strip().splitlines()[-1]
    model_dir = args.model_dir
    if model_dir is None:
        model_dir = str(work / "models" / "sd-tiny")
        server(cfg, "tiny-models", str(work / "models"))
    set_keys(cfg, "synthesis", {"model_dir": model_dir, "steps": 4, "guidance": 2.0, "batch_size": 16,
                                "shard_size": 32})
    set_keys(cfg, "training", {"arch": "tiny", "image_size": 32, "epochs": args.epochs, "batch_size": 32,
                               "val_fraction": 0.2})
    server(cfg, "federation", "create", "demo", "--classes", ",".join(CLASSES), "--methods", "class-prompts",
           "--images-per-class", str(args.images_per_class), "--quorum", str(len(SITES)))

    print("[2/7] server: starting the daemon (waits for sd_notify READY=1)")
    notify_path = work / "server" / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log = open(work / "server" / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server_daemon", "--config", str(cfg), "run"],
                            env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)), stdout=log,
                            stderr=subprocess.STDOUT)
    rows = []
    try:
        wait_ready(notify, proc)
        for i, (site, counts) in enumerate(SITES):
            home = work / "sites" / site
            data = work / "sites" / f"{site}-images"
            make_site_data(data, counts, seed=i)
            print(f"[3/7] {site}: init, enroll; operator accepts; prepare, inspect, upload")
            edge(home, "init", "--server", endpoint, "--server-key", key, "--site-id", site)
            edge(home, "enroll")
            fp = [c for c in json.loads(server(cfg, "clients", "list", "--json").stdout) if c["site"] == site][0]
            server(cfg, "clients", "accept", fp["fingerprint"])
            payload = home / "payload.osfl"
            edge(home, "prepare", "--data", str(data), "--federation", "demo", "--method", "class-prompts",
                 "--out", str(payload))
            (home / "inspect.txt").write_text(edge(home, "inspect", str(payload)).stdout)
            up = edge(home, "upload", str(payload)).stdout.strip()
            status = json.loads(edge(home, "status", "--json").stdout)
            rows.append([site, sum(counts.values()), payload.stat().st_size, status["state"], up, None])
        print("[4/7] server: quorum reached; synthesis, then training, in worker processes")
        fed_state = wait_done(cfg, "demo", proc)
        if fed_state["state"] == "done":
            print("[5/7] sites: fetch the signed model, evaluate it on their own images")
            for row in rows:
                home = work / "sites" / row[0]
                edge(home, "fetch-model", "--federation", "demo")
                res = json.loads(edge(home, "evaluate", "--model", str(home / "models" / "demo.onnx"), "--data",
                                      str(work / "sites" / f"{row[0]}-images"), "--json").stdout)
                row[5] = res["accuracy"]
        print("      " + server(cfg, "status").stdout.strip().replace("\n", "\n      "))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        log.close()
        notify.close()
    print(f"[6/7] daemon stopped with SIGTERM (exit {rc}); reading the store back")
    fed = json.loads(server(cfg, "federation", "show", "demo", "--json").stdout)
    stored = {p["site"]: p for p in fed["payloads"]}
    report = server(cfg, "report", "demo").stdout.strip()
    print(f"[7/7] {report}")
    print()
    print(f"{'site':16}  {'images':>6}  {'payload bytes':>13}  {'stored':6}  {'accuracy':>8}")
    for site, n, size, state, _, acc in rows:
        ok = "yes" if site in stored and stored[site]["size"] == size else "NO"
        print(f"{site:16}  {n:>6}  {size:>13}  {ok:6}  " + ("-" if acc is None else f"{acc:>8.3f}"))
    print()
    print(f"{len(stored)}/{len(SITES)} payloads stored durably; federation {fed['state']}; everything is under {work}")
    print("Each site's inspect.txt shows exactly what left it; the report has the sample grid and curves.")
    if args.model_dir is None:
        print(f"The generator has random weights, so the accuracy is near chance ({1 / len(CLASSES):.2f}) by design.")
    ok = len(stored) == len(SITES) and rc == 0 and fed["state"] == "done"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
