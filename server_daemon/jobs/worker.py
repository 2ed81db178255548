"""Run one job in this process: the worker entry point the supervisor starts."""
from __future__ import annotations

import logging
import time

from ..ingest.config import ServerConfig, load_config
from ..ingest.store import Store, now_ms

log = logging.getLogger(__name__)


def _runner(kind: str):
    """The runner of a job kind, imported only when a worker runs one."""
    if kind == "synthesis":
        from .synthesis import run_synthesis_job
        return run_synthesis_job
    if kind == "training":
        from .training import run_training_job
        return run_training_job
    raise ValueError(f"no runner for job kind {kind!r}")


def run_job(cfg: ServerConfig, job_id: int) -> int:
    store = Store(cfg.state_dir)
    job = store.job(job_id)
    if job is None:
        log.error("no job %d", job_id)
        return 2
    log.info("job %d: %s of federation %s (attempt %d)", job_id, job["kind"], job["federation"], job["attempts"])
    t0 = time.monotonic()
    try:
        result = _runner(job["kind"])(cfg, store, job)
    except BaseException as exc:  # the worker's whole purpose is to report what went wrong
        log.exception("job %d failed", job_id)
        with store.transaction():
            store.update_job(job_id, error=f"{type(exc).__name__}: {exc}"[:2000])
        return 1
    result["seconds"] = round(time.monotonic() - t0, 2)
    with store.transaction():
        store.update_job(job_id, state="done", finished_ms=now_ms(), result=result, pid=None)
    log.info("job %d done in %.1f s", job_id, result["seconds"])
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m server_daemon.jobs", description="run one osfl job (the daemon does)")
    ap.add_argument("--config", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("job_id", type=int)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    return run_job(cfg, args.job_id)

