"""Row 5 of the hardening table on a real filesystem that fills up: a small tmpfs as the state directory.

The site gets DISK_FULL (not INTERNAL), the daemon stays up, answers `status`, starts again while
the disk is full, and takes uploads again once space is freed; nothing acknowledged is lost. Needs
root to mount the tmpfs (CI runs as root); skipped elsewhere.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest

from e2e_support import Server, make_site
from protocol import errors as E
from protocol.payloads import encode_payload
from server_daemon.ingest.config import load_config, set_config_keys


def _captions(n: int, salt: str) -> bytes:
    items = [{"label_index": i % 2, "caption": f"{salt} a grey animal on a sofa in the evening light {i:05d}"}
             for i in range(n)]
    return encode_payload({"osfl_payload": 1, "kind": "captions", "federation": "fed1", "labels": ["cat", "dog"],
                           "counts": [(n + 1) // 2, n // 2], "params": {}, "bundle": None, "created_ms": 1,
                           "data": {"captions": items, "scrubbed": 0}})


def _fill(directory) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]}); needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_survived(small_disk, tmp_path):
    server = Server(small_disk / "server")
    set_config_keys(server.config, "limits", {"min_free_bytes": 0})  # the real thing, not the early floor
    server.cfg = load_config(server.config)
    server.start()
    try:
        server.osfl("federation", "create", "fed1", "--classes", "cat,dog", "--methods", "captions", "--all-sites")
        site = make_site(server, tmp_path / "sites", "clinic")
        first = _captions(2000, "a")
        ack = site.upload(first, "fed1", "captions")
        _fill(small_disk)
        for attempt in ("inline", "chunked"):
            payload = _captions(200 if attempt == "inline" else 20_000, attempt)
            with pytest.raises(E.DiskFull):
                site.request("upload", payload, federation="fed1") if attempt == "inline" else \
                    site.upload(payload, "fed1", "captions")
        assert site.call("status")["state"] == "accepted"  # still answering
        # a restart while the disk is full: the daemon comes up again
        server.stop(signal.SIGTERM)
        server.start()
        assert site.call("status")["uploads"][0]["payload_id"] == ack["payload_id"]
        os.unlink(small_disk / "filler")
        second = _captions(20_000, "b")
        other = make_site(server, tmp_path / "sites", "clinic-2")
        assert other.upload(second, "fed1", "captions")["duplicate"] is False
        other.close()
        store = server.store()
        try:
            stored = {p.id: store.payload_bytes(p.id) for p in store.payloads("fed1")}
        finally:
            store.close()
        assert stored[ack["payload_id"]] == first and second in stored.values()
        site.close()
    finally:
        if server.proc is not None:
            server.stop(signal.SIGKILL)
