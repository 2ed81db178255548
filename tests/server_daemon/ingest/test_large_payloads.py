"""Chunked payloads larger than 64 MiB are checked at commit, in bounded memory, never stored unparsed."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import msgpack

from protocol.methods.captions import MAX_CAPTION_CHARS

N_CAPTIONS = 140_000  # x ~500 bytes: a payload of about 70 MiB
CHUNK = 4 * 1024 * 1024 - 8192


def _write_captions_payload(path, *, counts_off_by: int = 0) -> int:
    """A valid captions payload (or one whose last count is wrong), packed as it streams to disk."""
    labels = ["cat", "dog"]
    half = N_CAPTIONS // 2
    head = {"osfl_payload": 1, "kind": "captions", "federation": "fed1", "labels": labels,
            "counts": [half, N_CAPTIONS - half + counts_off_by], "params": {}, "bundle": None, "created_ms": 0}
    packer = msgpack.Packer(use_bin_type=True)
    text = ("a grey cat on a sofa " * 40)[:MAX_CAPTION_CHARS - 12]
    with open(path, "wb") as f:
        f.write(packer.pack_map_header(len(head) + 1))
        for k, v in head.items():
            f.write(packer.pack(k) + packer.pack(v))
        f.write(packer.pack("data") + packer.pack_map_header(2) + packer.pack("captions"))
        f.write(packer.pack_array_header(N_CAPTIONS))
        for i in range(N_CAPTIONS):
            f.write(packer.pack({"label_index": 0 if i < half else 1, "caption": f"{text} {i}"}))
        f.write(packer.pack("scrubbed") + packer.pack(0))
    return path.stat().st_size


def _upload_file(ingest, key, path):
    size = path.stat().st_size
    sha = hashlib.sha256(path.read_bytes()).digest()
    r = ingest.call("upload_begin", key, {"kind": "captions", "size": size, "sha256": sha, "chunk_size": CHUNK},
                    federation="fed1")
    assert r.ok, r.message
    uid = r.data["upload_id"]
    with open(path, "rb") as f:
        for off in range(0, size, CHUNK):
            rc = ingest.call("upload_chunk", key, {"upload_id": uid, "offset": off, "data": f.read(CHUNK)},
                             federation="fed1")
            assert rc.ok, rc.message
    return ingest.call("upload_commit", key, {"upload_id": uid}, federation="fed1")


def test_a_payload_over_64_mib_is_checked_at_commit(ingest, tmp_path):
    ingest.federation(classes=("cat", "dog"))
    key = ingest.site()
    bad = tmp_path / "bad.osfl"
    assert _write_captions_payload(bad, counts_off_by=1) > 64 * 1024 * 1024
    r = _upload_file(ingest, key, bad)
    assert (r.ok, r.code) == (False, "INVALID_PAYLOAD") and "counts" in r.message
    assert ingest.store.payloads() == [] and not list(ingest.store.parts_dir.iterdir())

    good = tmp_path / "good.osfl"
    _write_captions_payload(good)
    r = _upload_file(ingest, key, good)
    assert r.ok and r.data["size"] == good.stat().st_size, r.message


def test_streaming_check_memory_does_not_grow_with_the_payload(tmp_path):
    path = tmp_path / "big.osfl"
    size = _write_captions_payload(path)
    probe = ("import resource, sys\n"
             "from protocol.payloads import validate_stream\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "if sys.argv[1] == 'check':\n"
             "    with open(sys.argv[2], 'rb') as f: validate_stream(f)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    grown_kib = int(subprocess.run([sys.executable, "-c", probe, "check", str(path)], check=True,
                                   capture_output=True, text=True).stdout)
    # the Unpacker's buffer and one caption at a time: a few MiB, not the 70 MiB of the payload
    assert grown_kib * 1024 < size / 4, f"checking a {size >> 20} MiB payload grew the process by {grown_kib} KiB"
