"""Where a federation's jobs and reports live under the state directory.

Both the supervisor (in the daemon) and the workers (``server_daemon.jobs``) import this module,
so it imports nothing but the standard library.
"""
from __future__ import annotations

from pathlib import Path


def job_dir(cfg, federation: str) -> Path:
    """``STATE_DIR/jobs/FED``: the synthetic set, training checkpoints and the jobs' logs."""
    return Path(cfg.state_dir) / "jobs" / federation


def report_dir(cfg, federation: str) -> Path:
    """``STATE_DIR/reports/FED``: the sample grid, training curves and metrics shown in the report."""
    return Path(cfg.state_dir) / "reports" / federation
