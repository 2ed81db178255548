"""Synthesis benchmark: images/s of our engine against a plain diffusers call, same model, same run.

Ours: :func:`server_daemon.synthesis.engine.load_engine` (device policy: CUDA fp16 + channels_last
+ xformers/SDPA, CPU fp32) generating ``--n`` images in batches of ``--batch``, each image with its
own seed, classifier-free guidance on. Baseline: the same directory loaded with
``StableDiffusionPipeline.from_pretrained(dir, torch_dtype=<same dtype>)`` and called the plain
way, one prompt at a time: ``pipe(prompt, num_inference_steps=..., guidance_scale=...)``. Both skip
the safety checker, so the comparison is of generation alone. Both are loaded at once and the
repeats alternate (ours, plain, ours, ...) so that load from other processes hits both alike. After
one warm-up call each, every repeat times all ``--n`` images; the median over repeats is reported
with the ratio.

Without ``--model-dir`` the tiny seeded pipeline is written to a temporary directory (CPU-sized
figures; they show the engine's overhead, not Stable Diffusion's speed).

    python benchmarks/bench_synthesis.py [--model-dir DIR] [--steps 25] [--batch 8] [--size 512]
                                         [--n 16] [--repeats 3] [--guidance 2.0] [--compile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from server_daemon.synthesis.engine import SynthesisEngine, load_pipeline, resolve_device, resolve_dtype  # noqa: E402

PROMPTS = ["cat, real world images, high resolution", "dog, real world images, high resolution",
           "a black and white drawing of car", "tree, painting with only one object in the picture"]
NEGATIVE = "low quality, low resolution"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_engine(engine: SynthesisEngine, n: int, batch: int, steps: int, guidance: float, size) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        k = min(batch, n - start)
        engine.generate([PROMPTS[(start + i) % len(PROMPTS)] for i in range(k)], negative_prompts=[NEGATIVE] * k,
                        seeds=[start + i for i in range(k)], steps=steps, guidance=guidance, height=size, width=size)
    _sync(engine.device)
    return time.perf_counter() - t0


def time_plain(pipe, n: int, steps: int, guidance: float, size, device) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        pipe(PROMPTS[i % len(PROMPTS)], negative_prompt=NEGATIVE, num_inference_steps=steps,
             guidance_scale=guidance, height=size, width=size, generator=torch.Generator("cpu").manual_seed(i))
    _sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, help="local diffusers Stable Diffusion directory (default: tiny)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's native size)")
    ap.add_argument("--n", type=int, default=16, help="images per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--scheduler", default=None, help="scheduler name for both (default: the model's)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet of our engine")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    tmp = None
    model_dir = args.model_dir
    if model_dir is None:
        from server_daemon.lab.tinymodels import write_tiny_pipeline

        tmp = tempfile.TemporaryDirectory(prefix="osfl-bench-")
        model_dir = write_tiny_pipeline(Path(tmp.name) / "tiny-sd")
    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    torch.set_grad_enabled(False)

    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()  # the tiny tokenizer truncates long prompts: not news here
    tlogging.set_verbosity_error()
    pipe = load_pipeline(model_dir, device, dtype, scheduler=args.scheduler, attention=args.attention)
    engine = SynthesisEngine(pipe, compile_unet=args.compile)
    size = args.size or engine.native_size[0]
    print(f"model {model_dir} | device {device} {str(dtype).replace('torch.', '')} | attention {engine.attention} | "
          f"{size}x{size}, {args.steps} steps, guidance {args.guidance}, batch {args.batch}, n {args.n}")
    plain = None
    if not args.skip_plain:
        from diffusers import StableDiffusionPipeline

        plain = StableDiffusionPipeline.from_pretrained(str(model_dir), torch_dtype=dtype, local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False).to(device)
        if args.scheduler:
            from server_daemon.synthesis.engine import make_scheduler

            plain.scheduler = make_scheduler(args.scheduler, plain.scheduler.config)
        plain.set_progress_bar_config(disable=True)
        time_plain(plain, 1, args.steps, args.guidance, size, device)  # warm-up
    time_engine(engine, min(args.n, args.batch), args.batch, args.steps, args.guidance, size)  # warm-up
    ours, base = [], []
    for _ in range(args.repeats):
        ours.append(time_engine(engine, args.n, args.batch, args.steps, args.guidance, size))
        if plain is not None:
            base.append(time_plain(plain, args.n, args.steps, args.guidance, size, device))
    ours_ips = args.n / statistics.median(ours)
    print(f"engine (batched, per-image seeds):   {ours_ips:8.2f} images/s   "
          f"(median of {args.repeats}: {statistics.median(ours):.3f} s for {args.n})")
    figures = {"device": str(device), "dtype": str(dtype), "attention": engine.attention, "size": size,
               "steps": args.steps, "batch": args.batch, "n": args.n, "engine_images_per_s": ours_ips}
    if base:
        base_ips = args.n / statistics.median(base)
        print(f"plain diffusers (one prompt a call): {base_ips:8.2f} images/s   "
              f"(median of {args.repeats}: {statistics.median(base):.3f} s for {args.n})")
        print(f"ratio engine / plain: {ours_ips / base_ips:.2f}x")
        figures.update(plain_images_per_s=base_ips, ratio=ours_ips / base_ips)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
