"""Run a one-shot federation for real: a daemon on loopback and K sites played by `osfl-edge`.

Every step is the production code path, in separate processes, as an operator and the sites would
run it (the same way ``server_daemon/lab/demo.py`` does):

- the server: ``python -m server_daemon --config C init|federation create|clients accept|jobs|...``
  and the daemon ``... run`` (readiness awaited on its sd_notify READY=1);
- each site: ``python -m edge_client.cli --home H init|enroll|prepare|upload|fetch-model|evaluate``
  on an ImageFolder of its own images. The edge client never shares a process with the server
  (and ``server_daemon`` never imports ``edge_client``), so the payload is built, signed, sent over
  CURVE, verified, stored, planned, synthesised and trained on exactly as in a deployment.

:class:`LoopbackFederation` owns the work directory, the daemon and the sites; :meth:`run` drives
one federation from payloads to a signed, fetched model and returns the bytes and stage times.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from server_daemon.ingest.config import load_config, set_config_keys
from server_daemon.ingest.supervisor import job_summary
from server_daemon.ingest.store import Store

log = logging.getLogger(__name__)


class SimulationError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_imagefolder(root: Path, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> Path:
    """PNG files under root/CLASS/; grey images stay grey (the edge reads them as RGB)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, (im, y) in enumerate(zip(images, labels)):
        d = root / classes[int(y)]
        d.mkdir(exist_ok=True)
        Image.fromarray(np.asarray(im)).save(d / f"{i:06d}.png", compress_level=1)
    return root


class LoopbackFederation:
    """A server work directory, a running daemon and enrolled sites (context manager)."""

    def __init__(self, work: Path, synthesis: dict, training: dict, verbose: bool = True, threads: int = 0):
        self.work = Path(work)
        self.cfg = self.work / "server" / "server.toml"
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.synthesis, self.training = synthesis, training
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None
        self.sites: dict[str, Path] = {}
        self.server_key = ""
        # OMP_NUM_THREADS for the daemon and its job workers: 1 is far faster on a machine shared with
        # other work (torch's threads spin at every op's barrier while a sibling is descheduled)
        self.env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))

    # -- processes
    def _sh(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise SimulationError(f"`{' '.join(args[:6])} ...` failed (exit {res.returncode}):\n"
                                  f"{(res.stdout + res.stderr)[-3000:]}")
        return res

    def server(self, *args: str) -> subprocess.CompletedProcess:
        return self._sh("-m", "server_daemon", "--config", str(self.cfg), *args)

    def edge(self, site: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self._sh("-m", "edge_client.cli", "--home", str(self.sites[site]), *args, timeout=timeout)

    def __enter__(self) -> "LoopbackFederation":
        self.work.mkdir(parents=True, exist_ok=True)
        self.server_key = self.server("init", "--bind", self.endpoint).stdout.strip().splitlines()[-1]
        set_config_keys(self.cfg, "synthesis", self.synthesis)
        set_config_keys(self.cfg, "training", self.training)
        notify_path = self.work / "server" / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._log = open(self.work / "server" / "daemon.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server_daemon", "--config", str(self.cfg), "run"],
                                     env=dict(self.env, NOTIFY_SOCKET=str(notify_path)), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SimulationError(f"the daemon exited with {self.proc.returncode}; see {self._log.name}")
            self._notify.settimeout(0.5)
            try:
                if b"READY=1" in self._notify.recv(4096).split(b"\n"):
                    return self
            except socket.timeout:
                pass
        raise SimulationError("the daemon did not report READY=1 within two minutes")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        self._notify.close()

    # -- sites
    def enroll(self, site: str) -> None:
        home = self.work / "sites" / site
        self.sites[site] = home
        self.edge(site, "init", "--server", self.endpoint, "--server-key", self.server_key, "--site-id", site)
        self.edge(site, "enroll")
        fp = [c for c in json.loads(self.server("clients", "list", "--json").stdout) if c["site"] == site][0]
        self.server("clients", "accept", fp["fingerprint"])

    # -- one federation
    def run(self, fed: str, classes: Sequence[str], site_dirs: dict[str, Path], images_per_class: int,
            method: str = "class-prompts", domain: str = "", timeout: float = 7200) -> dict:
        """Create ``fed``, have every site prepare + upload, wait for the model, fetch it; return facts."""
        t0 = time.monotonic()
        self.server("federation", "create", fed, "--classes", ",".join(classes), "--methods", method,
                    "--images-per-class", str(images_per_class), "--quorum", str(len(site_dirs)),
                    "--sites", ",".join(site_dirs))
        payload_bytes, prepare_s = {}, 0.0
        for site, data in site_dirs.items():
            if site not in self.sites:
                self.enroll(site)
            payload = self.sites[site] / f"{fed}.osfl"
            t = time.monotonic()
            self.edge(site, "prepare", "--data", str(data), "--federation", fed, "--method", method,
                      "--out", str(payload), *(["--domain", domain] if domain else []))
            self.edge(site, "upload", str(payload))
            prepare_s += time.monotonic() - t
            payload_bytes[site] = payload.stat().st_size
        sites_s = time.monotonic() - t0
        last = ""
        deadline = time.monotonic() + timeout
        # progress is read from the store in this process (SQLite WAL: a reader never blocks the
        # daemon); `osfl-server status` shows the same rows but costs a Python start per poll
        store = Store(load_config(self.cfg).state_dir)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise SimulationError(f"the daemon exited with {self.proc.returncode}; see {self._log.name}")
                state = store.federation(fed).state
                job = store.latest_job(fed)
                line = job_summary(job) if job else ""
                if self.verbose and line != last:
                    last = line
                    print(f"    {fed}: {state}: {line}", flush=True)
                if state in ("done", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise SimulationError(f"federation {fed} did not finish within {timeout:.0f} s")
                time.sleep(1.0)
        finally:
            store.close()
        if state != "done":
            raise SimulationError(f"federation {fed} failed: {last}; see {self.work / 'server' / 'daemon.log'}")
        jobs = json.loads(self.server("jobs", fed, "--json").stdout)
        stage_s = {}
        for j in jobs:
            if j["started_ms"] and j["finished_ms"]:
                stage_s[j["kind"]] = round((j["finished_ms"] - j["started_ms"]) / 1000, 1)
        first = next(iter(site_dirs))
        model = self.sites[first] / "models" / f"{fed}.onnx"
        t = time.monotonic()
        self.edge(first, "fetch-model", "--federation", fed)
        fetch_s = time.monotonic() - t
        training_result = next((j.get("result") for j in jobs if j["kind"] == "training"), None)
        return {"model": model, "payload_bytes": payload_bytes, "sites_s": round(sites_s, 1),
                "prepare_upload_s": round(prepare_s, 1), "synthesis_s": stage_s.get("synthesis"),
                "training_s": stage_s.get("training"), "fetch_s": round(fetch_s, 1),
                "total_s": round(time.monotonic() - t0, 1), "training_result": training_result,
                "synthetic_dir": load_config(self.cfg).state_dir / "jobs" / fed / "synthetic"}

    def evaluate(self, site: str, model: Path, test_dir: Path, verify: bool = True) -> dict:
        args = ["evaluate", "--model", str(model), "--data", str(test_dir), "--json", "--batch-size", "256"]
        if not verify:
            args.append("--no-verify")
        return json.loads(self.edge(site, *args).stdout)
