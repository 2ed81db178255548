"""Prometheus metrics in the text exposition format, without opening another port.

The daemon rewrites ``STATE_DIR/metrics.prom`` atomically at each heartbeat; point node_exporter's
textfile collector at it (``--collector.textfile.directory``), or read ``osfl-server metrics``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from protocol.files import atomic_write

from .store import Store


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(store: Store, daemon: dict | None, alive: bool) -> str:
    counters = (daemon or {}).get("counters", {})
    out = [
        "# HELP osfl_up Whether the daemon's last heartbeat is recent.", "# TYPE osfl_up gauge",
        f"osfl_up {1 if alive else 0}",
        "# HELP osfl_requests_total Requests answered since the daemon started.", "# TYPE osfl_requests_total counter",
        f"osfl_requests_total {counters.get('requests', 0)}",
        "# HELP osfl_batches_total Group commits (one fsync each) since the daemon started.",
        "# TYPE osfl_batches_total counter", f"osfl_batches_total {counters.get('batches', 0)}",
        "# HELP osfl_payloads_stored_total Payloads stored since the daemon started.",
        "# TYPE osfl_payloads_stored_total counter", f"osfl_payloads_stored_total {counters.get('stored', 0)}",
        "# HELP osfl_rejected_total Requests refused since the daemon started, by error code.",
        "# TYPE osfl_rejected_total counter",
    ]
    out += [f'osfl_rejected_total{{code="{_esc(c)}"}} {n}' for c, n in sorted(counters.get("rejected", {}).items())]
    sites: dict[str, int] = {}
    for c in store.clients():
        sites[c.state] = sites.get(c.state, 0) + 1
    out += ["# HELP osfl_sites Sites by admission state.", "# TYPE osfl_sites gauge"]
    out += [f'osfl_sites{{state="{s}"}} {sites.get(s, 0)}' for s in ("pending", "accepted", "rejected", "revoked")]
    out += ["# HELP osfl_federation_sites_uploaded Sites that uploaded to each federation.",
            "# TYPE osfl_federation_sites_uploaded gauge"]
    feds = store.federations()
    out += [f'osfl_federation_sites_uploaded{{federation="{_esc(f.id)}",state="{f.state}"}} {store.count_sites(f.id)}'
            for f in feds]
    out += ["# HELP osfl_job_progress_ratio Progress of each federation's latest job.",
            "# TYPE osfl_job_progress_ratio gauge"]
    for f in feds:
        job = store.latest_job(f.id)
        if job and job["total"]:
            out.append(f'osfl_job_progress_ratio{{federation="{_esc(f.id)}",kind="{job["kind"]}",'
                       f'state="{job["state"]}"}} {job["done"] / job["total"]:.4f}')
    return "\n".join(out) + "\n"


def write_metrics(store: Store, path: Path, daemon: dict | None) -> None:
    # node_exporter's textfile collector reads it as another user: world-readable, like Prometheus expects
    atomic_write(path, render_metrics(store, daemon, alive=bool(daemon and daemon["state"] == "running")), mode=0o644)


def is_alive(daemon: dict | None, heartbeat_s: float) -> bool:
    return bool(daemon and daemon["state"] == "running"
                and time.time() * 1000 - daemon["heartbeat_ms"] < 3 * heartbeat_s * 1000)
