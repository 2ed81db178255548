"""Caption benchmark: our onnxruntime path vs transformers' PyTorch generate(), same model, same images.

Each path runs in its own subprocess, so each peak RSS is that path's alone:

- ``torch``: ``Blip2ForConditionalGeneration.from_pretrained`` + ``BlipImageProcessor`` +
  ``generate(max_new_tokens=M)`` (greedy) + ``batch_decode`` — what a site would run with PyTorch;
- ``onnx-fp32`` / ``onnx-int8``: ``edge_client.captioning.Captioner`` on the exported bundle
  (vision + Q-Former graph, KV-cache decoder, ``tokenizers``), no torch imported; ``-lowmem``:
  the same with ``low_memory=True`` (no pre-packed weight copies; weights memory-mapped when the
  bundle has external data, which the export writes for graphs over 100 MB).

Each worker loads its model, captions one warm-up batch, then times captioning ``--images``
images (preprocess, generate, decode) in batches of ``--batch-size`` with ``--threads`` threads
(torch.set_num_threads / onnxruntime intra-op threads). It reports captions per minute, the peak
RSS of the process (VmHWM: imports + weights + activations), load time, and whether the
fp32 captions equal PyTorch's. Ratios are ONNX over PyTorch.

Seeded models (nothing downloaded): ``--size tiny`` (default; overhead-bound) or
``--size opt2.7b-slice`` (BLIP-2 OPT-2.7b's real widths and vocabulary, 2 layers per part: every
matrix multiply has its real shape, so the per-layer cost is realistic):

    python benchmarks/bench_captions.py [--size tiny] [--images 64] [--batch-size 8] [--threads 2] [--max-new-tokens 20]
    python benchmarks/bench_captions.py --size opt2.7b-slice --images 16 --batch-size 4

Real weights (a local BLIP-2 OPT directory, e.g. a saved Salesforce/blip2-opt-2.7b), exported once:

    osfl-server edge-models export --blip2 /models/blip2-opt-2.7b --int8 --no-publish --out /tmp/blip2-bundle
    python benchmarks/bench_captions.py --model /models/blip2-opt-2.7b --bundle /tmp/blip2-bundle \\
        --images 32 --batch-size 4 --threads 2 --max-new-tokens 30 [--image-dir /data/some-images]

(``--bundle`` may be left out: the script then exports into a temporary folder first, which for
2.7B parameters needs about twice the model's size in RAM.)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = ("torch", "onnx-fp32", "onnx-int8", "onnx-fp32-lowmem", "onnx-int8-lowmem")


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a
    worker started by a parent that had imported torch would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_images(n: int, image_dir: str | None, seed: int = 0):
    """``n`` RGB images: from ``image_dir`` (cycled) or seeded noise-and-shapes at 224x224."""
    import numpy as np
    from PIL import Image, ImageDraw

    if image_dir:
        files = sorted(p for p in Path(image_dir).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise SystemExit(f"no .png/.jpg images under {image_dir}")
        return [Image.open(files[i % len(files)]).convert("RGB") for i in range(n)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        d = ImageDraw.Draw(im)
        x, y = rng.integers(0, 150, 2)
        d.ellipse([int(x), int(y), int(x) + 60, int(y) + 60], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        out.append(im)
    return out


# ---- workers (run in subprocesses) ----------------------------------------------------------------

def worker(args) -> dict:
    images = load_images(args.images + args.batch_size, args.image_dir)
    warm, timed = images[:args.batch_size], images[args.batch_size:]
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if args.worker == "torch":
        import torch
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration, BlipImageProcessor

        torch.set_num_threads(args.threads)
        model = Blip2ForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
        proc = BlipImageProcessor.from_pretrained(args.model)
        tok = AutoTokenizer.from_pretrained(args.model)
        prompt = model.config.num_query_tokens + 1

        def caption(batch):
            with torch.inference_mode():
                px = proc(batch, return_tensors="pt")["pixel_values"]
                out = model.generate(pixel_values=px, max_new_tokens=args.max_new_tokens)
            return [t.strip() for t in tok.batch_decode(out[:, prompt:], skip_special_tokens=True)]
    else:
        from edge_client.bundle import Bundle
        from edge_client.captioning import Captioner

        manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
        cap = Captioner(Bundle(Path(args.bundle), manifest["version"], manifest), threads=args.threads,
                        batch_size=args.batch_size, precision=args.worker.split("-")[1],
                        max_new_tokens=args.max_new_tokens, low_memory=args.worker.endswith("-lowmem"))

        def caption(batch):
            return cap.decode(cap.generate_ids(cap.preprocess(batch)))
    load_s = time.perf_counter() - t0
    caption(warm)
    captions: list[str] = []
    t0 = time.perf_counter()
    for i in range(0, len(timed), args.batch_size):
        captions += caption(timed[i:i + args.batch_size])
    secs = time.perf_counter() - t0
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    return {"path": args.worker, "captions": len(captions), "seconds": secs, "per_min": len(captions) / secs * 60,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base, "load_s": load_s, "texts": captions,
            "imported": heavy}


def run_worker(path: str, args, model: str, bundle: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, "--model", model, "--bundle", bundle,
           "--images", str(args.images), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--max-new-tokens", str(args.max_new_tokens)]
    if args.image_dir:
        cmd += ["--image-dir", args.image_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{path} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="local BLIP-2 (OPT) directory (default: a seeded one of --size)")
    ap.add_argument("--size", default="tiny", choices=("tiny", "opt2.7b-slice"),
                    help="seeded model without --model: tiny, or OPT-2.7b's widths with 2 layers per part")
    ap.add_argument("--bundle", help="an exported bundle directory (default: export --model into a temp dir)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-dir", default=None, help="caption these images (cycled) instead of synthetic ones")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-captions-") as tmp:
        model = args.model
        if model is None:
            from server_daemon.lab.tiny_edge import write_tiny_blip2

            t0 = time.perf_counter()
            model = str(write_tiny_blip2(Path(tmp) / f"blip2-{args.size}", size=args.size))
            print(f"built the seeded {args.size} BLIP-2 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        bundle = args.bundle
        if bundle is None:
            from server_daemon.edge_models.bundle import write_manifest
            from server_daemon.edge_models.export import export_captioner

            t0 = time.perf_counter()
            entry = export_captioner(model, Path(tmp) / "bundle", int8=True, max_new_tokens=args.max_new_tokens)
            write_manifest(Path(tmp) / "bundle", "bench", {"captioner": entry})
            bundle = str(Path(tmp) / "bundle")
            print(f"exported {model} to ONNX (fp32 + int8) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        results = {p: run_worker(p, args, model, bundle) for p in args.paths.split(",")}

    ref = results.get("torch")
    rows = []
    for name, r in results.items():
        row = {k: v for k, v in r.items() if k != "texts"}
        if ref is not None:
            row["speed_vs_torch"] = r["per_min"] / ref["per_min"]
            row["memory_vs_torch"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
            row["same_captions_as_torch"] = sum(a == b for a, b in zip(r["texts"], ref["texts"])) / len(r["texts"])
        rows.append(row)
    if args.json:
        print(json.dumps({"model": args.model or args.size, "images": args.images, "batch_size": args.batch_size,
                          "threads": args.threads, "max_new_tokens": args.max_new_tokens, "results": rows}, indent=2))
        return
    print(f"model {args.model or args.size + ' BLIP-2 (seeded)'}; {args.images} images, batch {args.batch_size}, "
          f"{args.threads} threads, {args.max_new_tokens} new tokens")
    print(f"{'path':16} {'captions/min':>13} {'peak RSS MB':>12} {'load s':>7} {'x speed':>8} {'x memory':>9} "
          f"{'same text':>9}  imports")
    for row in rows:
        print(f"{row['path']:16} {row['per_min']:>13.0f} {row['peak_rss_mb']:>12.0f} {row['load_s']:>7.2f} "
              f"{row.get('speed_vs_torch', float('nan')):>8.2f} {row.get('memory_vs_torch', float('nan')):>9.2f} "
              f"{row.get('same_captions_as_torch', float('nan')):>9.0%}  {','.join(row['imported']) or '-'}")


if __name__ == "__main__":
    main()
