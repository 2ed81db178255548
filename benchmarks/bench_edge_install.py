"""What a site installs and how much memory captioning 1,000 images takes, from the base install only.

1. A fresh virtual environment with ``pip install <this checkout>`` (the base install: no extras,
   no torch). Reports the size of its site-packages (all of it, and without pip itself), the
   largest distributions, and that torch/transformers are absent.
2. A real server (this interpreter, which has the server extra) on loopback: ``osfl-server init``,
   ``edge-models export --tiny --int8``, a federation that takes captions.
3. A site that uses **only the fresh environment's** ``osfl-edge``: init, enroll (accepted), ``models
   pull``, then ``osfl-edge upload --data DIR --federation F --method captions`` for ``--images``
   images (64x64 PNG, two classes). The peak RSS of that upload process is read from its
   ``/proc/PID/status`` (VmHWM) while it runs; wall time and captions per minute are reported,
   and the server's store is checked for the payload.

Usage (needs the package index for step 1, or ``--venv`` with an existing environment):

    python benchmarks/bench_edge_install.py [--images 1000] [--venv DIR] [--threads 2] [--keep]

Goal (issue 5): base install under 150 MB.
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(map(str, cmd))}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def site_packages(venv: Path) -> Path:
    (sp,) = list((venv / "lib").glob("python*/site-packages"))
    return sp


def install_sizes(venv: Path) -> dict:
    sp = site_packages(venv)
    by_top: dict[str, int] = {}
    for entry in sp.iterdir():
        name = entry.name.split("-")[0].split(".")[0].lower().lstrip("_")
        size = dir_size(entry) if entry.is_dir() else entry.stat().st_size
        by_top[name] = by_top.get(name, 0) + size
    total = sum(by_top.values())
    tooling = sum(v for k, v in by_top.items() if k in ("pip", "setuptools", "distutils", "pkg_resources", "wheel"))
    has = sh([str(venv / "bin" / "python"), "-c",
              "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None "
              "for m in ('torch', 'transformers', 'diffusers', 'onnxruntime', 'tokenizers')}))"]).stdout
    return {"site_packages_mb": total / 1e6, "without_pip_mb": (total - tooling) / 1e6,
            "largest": sorted(((k, round(v / 1e6, 1)) for k, v in by_top.items()), key=lambda t: -t[1])[:8],
            "importable": json.loads(has)}


def make_venv(path: Path) -> float:
    t0 = time.perf_counter()
    sh([sys.executable, "-m", "venv", str(path)])
    sh([str(path / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(ROOT)], timeout=1800)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(cmd: list[str], env: dict) -> tuple[int, float, float, str]:
    """Run ``cmd``; return (exit code, seconds, peak RSS MB from VmHWM polled every 20 ms, output)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
        time.sleep(0.02)
    out = proc.stdout.read()
    return proc.returncode, time.perf_counter() - t0, peak, out


def make_images(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / ("a" if i % 2 == 0 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--venv", type=Path, default=None, help="use (or create) the environment here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-install-"))
    daemon = None
    try:
        venv = args.venv or tmp / "venv"
        if (venv / "bin" / "osfl-edge").exists():
            print(f"using the existing environment {venv}")
        else:
            secs = make_venv(venv)
            print(f"fresh environment with the base install: {venv} ({secs:.0f} s)")
        sizes = install_sizes(venv)
        print(f"installed size: {sizes['site_packages_mb']:.1f} MB in site-packages, "
              f"{sizes['without_pip_mb']:.1f} MB without pip/setuptools (goal < 150 MB)")
        print("largest: " + ", ".join(f"{k} {v} MB" for k, v in sizes["largest"]))
        print("importable: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in sizes["importable"].items()))

        # the server, with this interpreter (server extra)
        srv = [sys.executable, "-m", "server_daemon.cli", "--config", str(tmp / "server" / "server.toml")]
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        key = sh(srv + ["init", "--bind", endpoint], cwd=ROOT).stdout.strip().splitlines()[-1]
        t0 = time.perf_counter()
        sh(srv + ["edge-models", "export", "--tiny", "--int8", "--version", "bench"], cwd=ROOT)
        print(f"server: tiny edge bundle exported and published in {time.perf_counter() - t0:.1f} s")
        sh(srv + ["federation", "create", "fedb", "--classes", "a,b", "--methods", "captions", "--quorum", "2", "--all-sites"],
           cwd=ROOT)
        sock_path = tmp / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(60)
        daemon = subprocess.Popen(srv + ["run"], cwd=ROOT, env=dict(os.environ, NOTIFY_SOCKET=str(sock_path)),
                                  stdout=open(tmp / "daemon.log", "wb"), stderr=subprocess.STDOUT)
        while "READY=1" not in sock.recv(4096).decode().split("\n"):
            pass

        # the site, with the fresh environment only
        edge = [str(venv / "bin" / "osfl-edge"), "--home", str(tmp / "site")]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        sh(edge + ["init", "--server", endpoint, "--server-key", key, "--site-id", "bench"], env=env, cwd=tmp)
        sh(edge + ["enroll"], env=env, cwd=tmp)
        from protocol.keys import KeyPair

        sh(srv + ["clients", "accept", KeyPair.load(tmp / "site" / "keys", "site").fingerprint], cwd=ROOT)
        t0 = time.perf_counter()
        sh(edge + ["models", "pull"], env=env, cwd=tmp)
        print(f"site: models pull in {time.perf_counter() - t0:.1f} s")
        make_images(tmp / "data", args.images)
        rc, secs, peak, out = run_measured(edge + ["upload", "--data", str(tmp / "data"), "--federation", "fedb",
                                                  "--method", "captions", "--threads", str(args.threads),
                                                  "--batch-size", str(args.batch_size)], env)
        if rc != 0:
            raise SystemExit(f"osfl-edge upload failed ({rc}):\n{out[-3000:]}")
        print(out.strip().splitlines()[-1])
        from server_daemon.ingest.store import Store

        store = Store(tmp / "server" / "state")
        try:
            (row,) = store.payloads("fedb")
        finally:
            store.close()
        print(f"osfl-edge upload --method captions, {args.images} images: {secs:.1f} s wall "
              f"({args.images / secs * 60:.0f} images/min incl. start-up, reading, checking and upload), "
              f"peak RSS {peak:.0f} MB; payload {row.size} bytes stored")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
