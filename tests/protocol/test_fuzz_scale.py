"""Fuzzing at CI scale: 10,000 mutants per target of benchmarks/bench_fuzz.py (10^6 in the benchmark).

Zero crashes (an exception that is not the project's own, or an INTERNAL reply from the handlers),
zero mutated signed frames accepted, and the in-memory and streaming payload checks always agree.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fuzz.py"


def test_ten_thousand_mutants_per_target():
    out = subprocess.run([sys.executable, str(BENCH), "--n", "10000", "--seed", "7", "--json"],
                         capture_output=True, text=True, timeout=600)
    results = json.loads(out.stdout)
    assert set(results) == {"frames", "payloads", "handlers"}
    for name, c in results.items():
        assert c.get("crashed", 0) == 0, (name, c)
        assert c.get("forged", 0) == 0, (name, c)
        assert c.get("disagreed", 0) == 0, (name, c)
        assert c["inputs"] == 10000 and c.get("refused", 0) > 5000, (name, c)  # the mutants did reach the checks
    assert out.returncode == 0
