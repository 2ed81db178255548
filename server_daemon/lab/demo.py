"""`make demo`: a whole federation on this machine, over loopback, with the real programs.

It initialises a server with a generator model, starts the daemon (waiting for its systemd
READY=1, as systemd would), creates a federation, then plays three hospitals: each makes a small
ImageFolder, runs `osfl-edge init`, `enroll`, `prepare`, `inspect` and `upload` as separate
processes (the edge client never shares a process with the server), while the operator accepts
each site. The quorum starts synthesis and training in worker processes; each site then runs
`osfl-edge fetch-model` (signed, verified) and `osfl-edge evaluate` on its own images. The daemon
is stopped with SIGTERM, the report is written, and one table is printed.

The hospitals hold real images: Fashion-MNIST classes from the small real subset committed in
server_daemon/lab/simulate/data/ (MIT-licensed), split with a strong label skew. The generator is the
small Stable-Diffusion-architecture model trained here on the other half of Fashion-MNIST and
committed under models/sd-fashion-tiny (`osfl-server pretrain-tiny`; models/README.md), so the
global model, trained only on synthetic images, is scored on real held-out test images and the
accuracy means something. --model-dir names another generator; without the committed one the
demo falls back to a tiny model with random weights (accuracy near chance by design).

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
from PIL import Image

from server_daemon.ingest.config import set_config_keys
from server_daemon.lab.simulate.datasets import FASHION_CLASSES, fashion_mnist_subset, pad32

CLASSES = list(FASHION_CLASSES)
PRETRAINED = Path(__file__).resolve().parents[2] / "models" / "sd-fashion-tiny"
#: label skew: each site holds a few classes (images from the committed real subset)
SITES = [("hospital-north", {"t-shirt": 12, "trouser": 10, "pullover": 8, "dress": 3}),
         ("hospital-south", {"coat": 10, "sandal": 12, "shirt": 6, "sneaker": 2}),
         ("clinic-east", {"sneaker": 10, "bag": 12, "ankle_boot": 10, "dress": 6})]
TEST_IMAGES = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_site_data(root: Path, counts: dict[str, int], seed: int) -> None:
    """Real Fashion-MNIST images of the committed subset's sites' part, as an ImageFolder."""
    data = fashion_mnist_subset("train")
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        if n == 0:
            continue
        (root / cls).mkdir(parents=True, exist_ok=True)
        pick = rng.choice(np.flatnonzero(data.labels == CLASSES.index(cls)), n, replace=False)
        for i, k in enumerate(pick):
            Image.fromarray(pad32(data.images[k:k + 1])[0]).save(root / cls / f"img{i:03d}.png")


def make_test_data(root: Path, n: int) -> None:
    """Real held-out Fashion-MNIST test images (the committed subset's test part), as an ImageFolder."""
    data = fashion_mnist_subset("test")
    pick = np.random.default_rng(99).choice(len(data), n, replace=False)
    for i, k in enumerate(pick):
        d = root / CLASSES[int(data.labels[k])]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pad32(data.images[k:k + 1])[0]).save(d / f"test{i:04d}.png")


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
    ap.add_argument("--model-dir", default=None,
                    help="a local diffusers directory (default: the committed models/sd-fashion-tiny)")
    ap.add_argument("--images-per-class", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=30)
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
    random_weights = False
    if model_dir is None and (PRETRAINED / "model_index.json").is_file():
        model_dir = str(PRETRAINED)
    elif model_dir is None:
        random_weights = True
        model_dir = str(work / "models" / "sd-tiny")
        server(cfg, "tiny-models", str(work / "models"))
    # the small model's settings (ALGORITHMS.md): DPM-Solver, 20 steps, guidance 3, "" as negative prompt
    set_config_keys(cfg, "synthesis", {"model_dir": model_dir, "scheduler": "dpm", "steps": 20, "guidance": 3.0,
                                "negative_prompt": "", "batch_size": 100, "shard_size": 100})
    set_config_keys(cfg, "training", {"arch": "tiny", "image_size": 32, "epochs": args.epochs, "batch_size": 32,
                               "val_fraction": 0.2, "augment": False})
    server(cfg, "federation", "create", "demo", "--classes", ",".join(CLASSES), "--methods", "class-prompts",
           "--images-per-class", str(args.images_per_class), "--quorum", str(len(SITES)),
           "--sites", ",".join(name for name, _ in SITES))

    print("[2/7] server: starting the daemon (waits for sd_notify READY=1)")
    notify_path = work / "server" / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log = open(work / "server" / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server_daemon", "--config", str(cfg), "run"],
                            env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)), stdout=log,
                            stderr=subprocess.STDOUT)
    rows = []
    test_acc = None
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
            print("[5/7] sites: fetch the signed model, evaluate it on their own images and on real test images")
            test_dir = work / "test-images"
            make_test_data(test_dir, TEST_IMAGES)
            for row in rows:
                home = work / "sites" / row[0]
                edge(home, "fetch-model", "--federation", "demo")
                res = json.loads(edge(home, "evaluate", "--model", str(home / "models" / "demo.onnx"), "--data",
                                      str(work / "sites" / f"{row[0]}-images"), "--json").stdout)
                row[5] = res["accuracy"]
            first = work / "sites" / rows[0][0]
            test_acc = json.loads(edge(first, "evaluate", "--model", str(first / "models" / "demo.onnx"), "--data",
                                       str(test_dir), "--json").stdout)["accuracy"]
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
    if test_acc is not None:
        print(f"Global model (trained only on synthetic images) on {TEST_IMAGES} real held-out Fashion-MNIST test "
              f"images: accuracy {test_acc:.3f} (chance {1 / len(CLASSES):.2f}); each site saw at most 4 of the "
              f"{len(CLASSES)} classes.")
    if random_weights:
        print(f"models/sd-fashion-tiny is missing, so the generator has random weights and the accuracy is near "
              f"chance ({1 / len(CLASSES):.2f}) by design.")
    ok = len(stored) == len(SITES) and rc == 0 and fed["state"] == "done"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
