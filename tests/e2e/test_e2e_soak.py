"""The soak at CI size: 40 sites, 80 uploads (inline and chunked), 5 SIGKILLs, the disk filled once.

benchmarks/soak_ingest.py at full size is 1,000 sites and 100 kills. Without root (no tmpfs) the
disk is not filled, and the test says so in its output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak_ingest.py"


def test_nothing_acknowledged_is_lost_through_kills_and_a_full_disk():
    args = [sys.executable, str(SOAK), "--sites", "40", "--kills", "5", "--workers", "8", "--seed", "11", "--json"]
    if os.geteuid() != 0:
        args.append("--no-fill")
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    assert r["kills"] == 5
    assert r["acknowledged"] == r["uploads"] == 80 == r["found_byte_for_byte"]
    assert r["duplicated"] == 0 and r["unacknowledged_rows"] == 0 and r["verify_store_clean"]
    assert r["ok"] and out.returncode == 0
    # row 9: a daemon restarting under the sites is never mistaken for a wrong server key
    assert "HANDSHAKE_FAILED" not in r["errors_seen_by_sites"], r["errors_seen_by_sites"]
