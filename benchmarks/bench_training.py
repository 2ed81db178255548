"""Training benchmark: classifier training images/s for an architecture and image size.

Times the same step train_classifier runs: uint8 batch -> device, RandomResizedCrop + flip
(torch ops), normalisation, forward, cross-entropy, backward, SGD (momentum 0.9, wd 2e-4); AMP
and channels_last on CUDA as in training. The images are random and held in memory, so the figure
is the model's training rate without PNG decoding. After ``--warmup`` steps, each repeat times
``--steps`` steps; the median over repeats is reported.

    python benchmarks/bench_training.py [--arch resnet18|tiny] [--image-size 224] [--batch 128]
                                        [--steps 10] [--repeats 3] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from server_daemon.training.data import normalize, random_resized_crop_flip  # noqa: E402
from server_daemon.training.models import build_resnet  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "tiny"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    use_amp, use_cl = cuda and not args.no_amp, cuda and not args.no_channels_last
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    model = build_resnet(args.classes, args.arch).to(dev).train()
    if use_cl:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=g)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g)
    if cuda:
        images, labels = images.pin_memory(), labels.pin_memory()

    def step():
        x = images.to(dev, non_blocking=True)
        y = labels.to(dev, non_blocking=True)
        x = normalize(random_resized_crop_flip(x, args.image_size, g))
        if use_cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            loss = F.cross_entropy(model(pixel_values=x).logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ips = args.batch * args.steps / statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} ({params / 1e6:.2f}M params) | {args.image_size}px | batch {args.batch} | device {dev} | "
          f"amp {use_amp} ({str(amp_dtype).replace('torch.', '') if use_amp else 'off'}) | channels_last {use_cl}")
    print(f"training: {ips:.1f} images/s (median of {args.repeats} x {args.steps} steps)")
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "image_size": args.image_size, "batch": args.batch,
                                         "device": str(dev), "amp": use_amp, "images_per_s": ips}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
