"""Progress of a running job, written to its row for `osfl-server status` and the site's `status`."""
from __future__ import annotations

import time

from ..ingest.store import Store


class Progress:
    """Writes progress to the store at most twice a second (each write is a small fsynced commit)."""

    def __init__(self, store: Store, job_id: int, detail: str = ""):
        self.store, self.job_id, self.detail, self.last = store, job_id, detail, 0.0

    def __call__(self, done: int, total: int, detail: str | None = None, force: bool = False) -> None:
        t = time.monotonic()
        if force or t - self.last >= 0.5 or done >= total:
            with self.store.transaction():
                self.store.update_job(self.job_id, done=int(done), total=int(total), detail=detail or self.detail)
            self.last = t


def device(name: str) -> str | None:
    """The config's device setting as the runners take it: "" and "auto" pick the best available."""
    return None if name in ("", "auto") else name
