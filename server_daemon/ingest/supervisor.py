"""The job supervisor the daemon runs: from stored payloads to a signed global model, in worker processes.

A federation moves ``open -> synthesizing -> training -> done`` (or ``failed``). Each stage is a
row in ``jobs``; the daemon's :class:`Supervisor` starts one worker process at a time
(``python -m server_daemon.jobs --config CFG run JOB``, code in ``server_daemon/jobs/``), so a GPU
fault or an out-of-memory kill takes down the worker, never ingest. Workers write their progress to
the store; the daemon reads the exit code and either queues the next stage or retries (up to
``[jobs] max_attempts``, each attempt resuming: synthesis skips finished shards, training continues
after its last epoch).

This module never imports the workers' code (it starts them by module name), nor numpy or torch.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from .config import ServerConfig
from .layout import job_dir
from .store import Store, now_ms

log = logging.getLogger(__name__)

STAGES = {"synthesis": "synthesizing", "training": "training"}


def job_summary(job: dict) -> str:
    """One line for `status` (operator and site): 'synthesis running 120/400 (generating images)'."""
    text = f"{job['kind']} {job['state']}"
    if job["total"]:
        text += f" {job['done']}/{job['total']}"
    if job["state"] in ("queued", "running") and job["detail"]:
        text += f" ({job['detail']})"
    if job["error"] and job["state"] != "done":
        text += f"; last error: {job['error'][:200]}"
    return text


# ---- the daemon's side --------------------------------------------------------------------------

class Supervisor:
    """Starts jobs when federations are ready, runs one worker at a time, reaps and retries."""

    def __init__(self, cfg: ServerConfig, store: Store):
        self.cfg = cfg
        self.store = store
        self.proc: subprocess.Popen | None = None
        self.job_id: int | None = None
        self.log_file = None

    def recover(self) -> None:
        """After a restart: jobs left 'running' by a dead worker go back to the queue (they resume)."""
        with self.store.transaction():
            for job in self.store.jobs(states=("running",)):
                log.warning("job %d (%s of %s) was running when the daemon stopped; it will resume",
                            job["id"], job["kind"], job["federation"])
                self.store.update_job(job["id"], state="queued", pid=None)

    def tick(self) -> bool:
        """One pass; returns True when it changed the store (the daemon then reloads its caches)."""
        changed = self._reap()
        if self.cfg.jobs.auto_start:
            changed |= self._trigger()
        if self.proc is None:
            changed |= self._start_next()
        return changed

    def _trigger(self) -> bool:
        changed = False
        now = now_ms()
        for fed in self.store.federations():
            if fed.state != "open":
                continue
            received = self.store.count_sites(fed.id)
            due = fed.deadline_ms is not None and now >= fed.deadline_ms
            if received >= fed.quorum or (due and received > 0):
                with self.store.transaction():
                    self.store.set_federation_state(fed.id, "synthesizing")
                    self.store.create_job(fed.id, "synthesis")
                log.info("federation %s: %d of %d sites uploaded%s; synthesis queued", fed.id, received,
                         fed.quorum, " (deadline)" if received < fed.quorum else "")
                changed = True
        return changed

    def _start_next(self) -> bool:
        queued = self.store.jobs(states=("queued",))
        if not queued:
            return False
        job = queued[0]
        jdir = job_dir(self.cfg, job["federation"])
        jdir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(jdir / f"{job['kind']}.log", "ab")
        cmd = [sys.executable, "-m", "server_daemon.jobs", "--config", str(self.cfg.path), "run", str(job["id"])]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.job_id = job["id"]
        with self.store.transaction():
            self.store.update_job(job["id"], state="running", pid=self.proc.pid, attempts=job["attempts"] + 1,
                                  started_ms=now_ms(), error="")
            self.store.set_federation_state(job["federation"], STAGES[job["kind"]])
        log.info("job %d: %s of %s started (attempt %d, pid %d)", job["id"], job["kind"], job["federation"],
                 job["attempts"] + 1, self.proc.pid)
        return True

    def _reap(self) -> bool:
        if self.proc is None:
            return False
        rc = self.proc.poll()
        if rc is None:
            return False
        self.log_file.close()
        job = self.store.job(self.job_id)
        self.proc, self.job_id = None, None
        fed = job["federation"]
        with self.store.transaction():
            if rc == 0 and job["state"] == "done":
                if job["kind"] == "synthesis":
                    self.store.create_job(fed, "training")
                else:
                    self.store.set_federation_state(fed, "done")
                log.info("job %d: %s of %s done", job["id"], job["kind"], fed)
            elif job["state"] == "cancelled":
                log.info("job %d: %s of %s cancelled", job["id"], job["kind"], fed)
            else:
                error = job["error"] or f"the worker exited with code {rc}"
                if job["attempts"] < self.cfg.jobs.max_attempts:
                    self.store.update_job(job["id"], state="queued", pid=None, error=error)
                    log.warning("job %d: %s of %s failed (%s); retrying (attempt %d of %d)", job["id"],
                                job["kind"], fed, error, job["attempts"] + 1, self.cfg.jobs.max_attempts)
                else:
                    self.store.update_job(job["id"], state="failed", pid=None, error=error, finished_ms=now_ms())
                    self.store.set_federation_state(fed, "failed")
                    log.error("job %d: %s of %s failed for good: %s (log: %s)", job["id"], job["kind"], fed, error,
                              job_dir(self.cfg, fed) / f"{job['kind']}.log")
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """On daemon shutdown: ask the worker to stop (it resumes later), then wait for it."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with self.store.transaction():
            job = self.store.job(self.job_id)
            if job and job["state"] == "running":
                self.store.update_job(self.job_id, state="queued", pid=None, attempts=max(0, job["attempts"] - 1))
        self.log_file.close()
        self.proc = None


def queue_synthesis(store: Store, federation: str, actor: str = "operator") -> int:
    """`osfl-server synthesize FED`: start (or restart) the pipeline for a federation now."""
    from ..errors import NotFoundError, StateError

    fed = store.federation(federation)
    if fed is None:
        raise NotFoundError(f"no federation {federation!r}; `osfl-server federation list` shows them")
    active = store.jobs(federation, states=("queued", "running"))
    if active:
        raise StateError(f"federation {federation} already has a {active[0]['kind']} job {active[0]['state']}; "
                         f"`osfl-server status` shows its progress")
    if store.count_sites(federation) == 0:
        raise StateError(f"federation {federation} has no payloads yet; nothing to synthesise from")
    with store.transaction():
        store.set_federation_state(federation, "synthesizing", actor)
        return store.create_job(federation, "synthesis", actor)
