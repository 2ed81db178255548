"""Jobs: from stored payloads to a signed global model, in worker processes.

A federation moves ``open -> synthesizing -> training -> done`` (or ``failed``). Each stage is a
row in ``jobs``; the daemon's :class:`Supervisor` starts one worker process at a time
(``python -m server_daemon.jobs --config CFG run JOB``), so a GPU fault or an out-of-memory kill
takes down the worker, never ingest. Workers write their progress to the store; the daemon reads
the exit code and either queues the next stage or retries (up to ``[jobs] max_attempts``, each
attempt resuming: synthesis skips finished shards, training continues after its last epoch).

Nothing here imports torch at module level; the worker imports synthesis and training on start.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from protocol.payloads import decode_payload

from .config import ServerConfig, load_config
from .store import Store, now_ms

log = logging.getLogger(__name__)

STAGES = {"synthesis": "synthesizing", "training": "training"}


def job_dir(cfg: ServerConfig, federation: str) -> Path:
    return cfg.state_dir / "jobs" / federation


def report_dir(cfg: ServerConfig, federation: str) -> Path:
    return cfg.state_dir / "reports" / federation


def _device(name: str) -> str | None:
    return None if name in ("", "auto") else name


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
    from .errors import NotFoundError, StateError

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


# ---- the worker's side --------------------------------------------------------------------------

class _Progress:
    """Writes progress to the store at most twice a second (each write is a small fsynced commit)."""

    def __init__(self, store: Store, job_id: int, detail: str = ""):
        self.store, self.job_id, self.detail, self.last = store, job_id, detail, 0.0

    def __call__(self, done: int, total: int, detail: str | None = None, force: bool = False) -> None:
        t = time.monotonic()
        if force or t - self.last >= 0.5 or done >= total:
            with self.store.transaction():
                self.store.update_job(self.job_id, done=int(done), total=int(total), detail=detail or self.detail)
            self.last = t


def _site_names(store: Store) -> dict[str, str]:
    return {c.fingerprint: c.site for c in store.clients()}


def run_synthesis_job(cfg: ServerConfig, store: Store, job: dict) -> dict:
    from .synthesis import GenerationParams, load_engine, plan_from_payloads, run_synthesis, write_sample_grid

    fed = store.federation(job["federation"])
    names = _site_names(store)
    payloads = {names.get(p.fingerprint, p.fingerprint): decode_payload(store.payload_bytes(p.id))
                for p in store.payloads(fed.id)}
    syn = cfg.synthesis
    params = GenerationParams(scheduler=syn.scheduler or None, steps=syn.steps, guidance=syn.guidance,
                              height=syn.size or None, width=syn.size or None, batch_size=syn.batch_size,
                              save_size=syn.save_size or None)
    plan = plan_from_payloads(fed.id, payloads, labels=list(fed.classes), images_per_class=fed.images_per_class,
                              params=params, negative_prompt=syn.negative_prompt)
    progress = _Progress(store, job["id"], "loading the generator")
    progress(0, len(plan.images), force=True)
    engine = load_engine(syn.model_dir, device=_device(syn.device))
    out = job_dir(cfg, fed.id) / "synthetic"
    progress.detail = "generating images"
    result = run_synthesis(plan, engine, out, shard_size=syn.shard_size, progress=sys.stderr.isatty(),
                           on_progress=progress)
    rdir = report_dir(cfg, fed.id)
    rdir.mkdir(parents=True, exist_ok=True)
    write_sample_grid(out, rdir / "samples.png", labels=list(fed.classes))
    return {"images": len(plan.images), "generated": result.generated, "shards": result.shards,
            "shards_skipped": result.shards_skipped, "sites": sorted(payloads),
            "images_per_s": round(result.images_per_s, 2)}


def run_training_job(cfg: ServerConfig, store: Store, job: dict) -> dict:
    from protocol.keys import KeyPair

    from .training import train_classifier

    fed = store.federation(job["federation"])
    tr = cfg.training
    progress = _Progress(store, job["id"], "training")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))

    def on_epoch_end(metrics: dict) -> bool:
        acc = metrics.get("val_acc")
        progress(int(metrics.get("epoch", 0)), tr.epochs, force=True,
                 detail=f"epoch {metrics.get('epoch')}: val acc " + ("-" if acc is None else f"{acc:.3f}"))
        return stop["now"]  # True stops after this epoch's checkpoint; the next attempt resumes

    result = train_classifier(job_dir(cfg, fed.id) / "synthetic", job_dir(cfg, fed.id) / "training",
                              arch=tr.arch, image_size=tr.image_size, epochs=tr.epochs, batch_size=tr.batch_size,
                              lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay,
                              val_fraction=tr.val_fraction, seed=tr.seed, device=_device(tr.device), augment=tr.augment,
                              labels=list(fed.classes), progress=sys.stderr.isatty(), on_epoch_end=on_epoch_end)
    if not result.completed:
        raise InterruptedError("training stopped before its last epoch; it resumes on the next attempt")
    rdir = report_dir(cfg, fed.id)
    rdir.mkdir(parents=True, exist_ok=True)
    if result.curves_path:
        shutil.copyfile(result.curves_path, rdir / "curves.png")
    if result.metrics_path:
        shutil.copyfile(result.metrics_path, rdir / "metrics.json")
    keys = KeyPair.load(cfg.keys_dir, "server")
    meta = {"federation": fed.id, "labels": list(result.labels), "arch": tr.arch, "image_size": tr.image_size,
            "epochs": tr.epochs, "best_epoch": result.best_epoch, "val_acc": result.best_val_acc,
            "format": "onnx", "input": "pixel_values float32 NCHW RGB in [0,1]", "output": "logits"}
    art = store.publish_artifact(f"model/{fed.id}", result.onnx_path, meta, keys.signing)
    return {"model": f"model/{fed.id}", "sha256": art["sha256"].hex(), "size": art["size"],
            "val_acc": result.best_val_acc, "best_epoch": result.best_epoch}


RUNNERS = {"synthesis": run_synthesis_job, "training": run_training_job}


def run_job(cfg: ServerConfig, job_id: int) -> int:
    store = Store(cfg.state_dir)
    job = store.job(job_id)
    if job is None:
        log.error("no job %d", job_id)
        return 2
    log.info("job %d: %s of federation %s (attempt %d)", job_id, job["kind"], job["federation"], job["attempts"])
    t0 = time.monotonic()
    try:
        result = RUNNERS[job["kind"]](cfg, store, job)
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


if __name__ == "__main__":
    sys.exit(main())
