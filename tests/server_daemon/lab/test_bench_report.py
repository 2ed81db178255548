"""The README table's builder (benchmarks/bench_oneshot_vs_fedavg.py --report): mean +- std over
seeds, and the best baseline chosen by the sites' held-out accuracy, never by the test set."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_oneshot_vs_fedavg.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_oneshot_vs_fedavg", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(out: Path, cell: str, seed: int, part: str, rows: list[dict]) -> None:
    where = out / "cells" / cell / f"seed-{seed}" / part
    where.mkdir(parents=True)
    meta = {"site_images": 100, "test_images": 50, "wall_s": 1.0, "config": {"rounds": [1, 10, 50]}}
    (where / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))


def _baseline(method, epochs, rounds, test, held, lr=0.03):
    return {"method": method, "setting": "", "rounds": rounds, "local_epochs": epochs, "lr": lr, "mu": None,
            "accuracy": test, "heldout_acc": held, "upload_bytes_per_site": 1000 * rounds, "wall_s": 1.0}


def test_report_takes_the_baseline_best_on_held_out_images_and_averages_seeds(tmp_path):
    bench = _bench()
    for seed, (one, cen) in enumerate([(0.80, 0.90), (0.70, 0.88)]):
        _write(tmp_path, "a-dirichlet0.01", seed, "oneshot", [
            {"method": "one-shot class-prompts", "images_per_class": 10, "accuracy": one - 0.1,
             "upload_bytes_per_site": 200},
            {"method": "one-shot class-prompts", "images_per_class": 100, "accuracy": one, "upload_bytes_per_site": 200}])
        rows = [{"method": "centralized", "accuracy": cen}]
        for r, (t1, t5) in {1: (0.2, 0.3), 10: (0.4, 0.5), 50: (0.6, 0.65)}.items():
            # E=5 scores better on the test set, but E=1 is better on the sites' held-out images
            rows += [_baseline("FedAvg", 1, r, t1, 0.7), _baseline("FedAvg", 5, r, t5, 0.5)]
        _write(tmp_path, "a-dirichlet0.01", seed, "baselines", rows)
    text = bench.report(tmp_path)
    head = next(line for line in text.splitlines() if line.startswith("| a-dirichlet0.01 |"))
    assert "| 0.750 ± 0.071 (2) (100) | 0.750 ± 0.071 (2) (100) | 0.890 ± 0.014 (2) |" in head
    assert "0.200 ± 0.000 (2) / 0.400 ± 0.000 (2) / 0.600 ± 0.000 (2)" in head
    assert "FedAvg E=1, lr 0.03" in head and "E=5" not in head
    summary = json.loads((tmp_path / "oneshot_vs_fedavg.json").read_text())
    assert summary["a-dirichlet0.01"]["oneshot"] == [0.8, 0.7]
    # a third seed with the one-shot run at the smaller count only: the column takes the common count
    _write(tmp_path, "a-dirichlet0.01", 2, "oneshot", [
        {"method": "one-shot class-prompts", "images_per_class": 10, "accuracy": 0.5, "upload_bytes_per_site": 200}])
    head = next(line for line in bench.report(tmp_path).splitlines() if line.startswith("| a-dirichlet0.01 |"))
    assert head.startswith("| a-dirichlet0.01 | 0.600 ± 0.100 (3) (10) | 0.750 ± 0.071 (2) (100) |")
    assert (tmp_path / "a-dirichlet0.01-accuracy_vs_images.png").is_file()


def test_presets_only_change_what_they_name():
    bench = _bench()
    args = bench.argparse.Namespace(preset="session", **{k: None for k in bench.DEFAULTS})
    s = bench.settings(args)
    assert s["site_images"] == 5000 and s["seeds"] == [0]
    assert s["local_epochs"] == [1, 5] and s["rounds"] == [1, 10, 50]
    args.local_epochs = [5]
    assert bench.settings(args)["local_epochs"] == [5]
