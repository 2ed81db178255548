"""How far each lever takes one-shot class prompts: the generator and the classifier recipe.

For each generator directory given, the generator score of `pretrain-tiny`
(server_daemon/lab/generator_score.py: 300 generated images per class, 20 DPM-Solver steps,
guidance 3, seed 0) is computed with the benchmark's recipe (McMahan CNN, shift/flip, cosine, 30
epochs) and, on the very same generated images, with the recipe the earlier README table used (the
6k-parameter tiny ResNet, no augmentation, constant lr, 40 epochs). Both are scored on the real
test set (Fashion-MNIST: the official 10,000 images). The third lever, synthetic images per class,
is the sweep of bench_oneshot_vs_fedavg.py.

The generator committed before this benchmark (2.5 epochs of pretraining) is in git history:

    git archive 163b0af models/sd-fashion-tiny | tar -x -C /tmp/old-generator
    python benchmarks/bench_levers.py /tmp/old-generator/models/sd-fashion-tiny models/sd-fashion-tiny \
        --labels "earlier checkpoint (git 163b0af)" models/sd-fashion-tiny

Writes benchmarks/results/levers.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results"
#: the recipe of the earlier README table, as changes to the benchmark's
OLD_RECIPE = {"arch": "tiny", "augment": False, "lr_schedule": "constant", "weight_decay": 2e-4, "epochs": 40}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generators", nargs="+", help="pipeline directories (e.g. the old and the new generator)")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--labels", nargs="+", help="names for the generators in the table (default: their paths)")
    ap.add_argument("--record", action="store_true",
                    help="also store each generator's score in its osfl_pretrain.json (as pretrain-tiny --score-only)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    from server_daemon.lab.generator_score import generator_score, read_pretrain_json, write_score

    if args.labels and len(args.labels) != len(args.generators):
        ap.error(f"{len(args.labels)} --labels for {len(args.generators)} generators")
    labels = args.labels or args.generators
    rows = []
    for pipe, label in zip(args.generators, labels):
        meta = read_pretrain_json(pipe) or {}
        unet = meta.get("unet", {})
        print(f"== {pipe}: {unet.get('steps')} UNet steps ({unet.get('epochs', 0):.1f} epochs)", flush=True)
        s = generator_score(pipe, args.dataset, per_class=args.per_class, threads=args.threads,
                            compare={"old": OLD_RECIPE})
        if args.record:
            write_score(pipe, {k: v for k, v in s.items() if k != "compare"})
        rows.append({"generator": label, "unet_steps": unet.get("steps"), "epochs": unet.get("epochs"),
                     "cnn_recipe": s["accuracy"], "old_recipe": s["compare"]["old"]["accuracy"],
                     "seconds": s["seconds"], "test_images": s["test_images"]})
        print(f"   CNN recipe {s['accuracy']:.3f}; old recipe {s['compare']['old']['accuracy']:.3f}", flush=True)
    lines = [f"# Levers: generator and classifier recipe ({args.per_class} generated images per class, "
             f"{rows[0]['test_images']} real test images)", "",
             "| generator | UNet steps (epochs of its data) | old recipe: tiny ResNet, no augmentation | "
             "benchmark recipe: CNN, shift/flip, cosine |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['generator']}` | {r['unet_steps']} ({(r['epochs'] or 0):.1f}) | {r['old_recipe']:.3f} | "
                     f"{r['cnn_recipe']:.3f} |")
    lines.append(f"\nMachine: {platform.machine()}, torch threads {args.threads}.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "levers.md").write_text("\n".join(lines) + "\n")
    (out / "levers.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
