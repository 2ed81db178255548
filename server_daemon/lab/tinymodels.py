"""Tiny seeded models built from configs: a Stable Diffusion pipeline and ResNet classifiers.

Tests, the demo and the benchmarks need a generator and a classifier without downloading weights.
Everything here is built from a config with a fixed seed, so two calls with the same arguments
write identical files. The weights are random: the pipeline makes noise-like images and a
classifier trained on them is near chance, but every code path (tokenizer, text encoder, UNet,
VAE, scheduler, training, ONNX export) is the real one.

- :func:`write_tiny_pipeline` writes an ordinary diffusers ``StableDiffusionPipeline`` directory
  (``model_index.json`` + component folders) that ``from_pretrained(dir)`` loads offline. The
  CLIP tokenizer is written from a locally generated ``vocab.json`` + ``merges.txt``.
- :func:`write_tiny_classifier_config` writes the config of transformers'
  ``ResNetForImageClassification`` ("tiny" or "resnet18", the FGL classifier); the model itself,
  ``build_resnet``, lives with production training in :mod:`server_daemon.training.models` and is
  re-exported here for the tests and benchmarks that build tiny ones.
- :func:`main_write_tiny` is what ``osfl-server`` calls to write both into one directory.

torch, diffusers and transformers are imported inside the functions, so importing this module
is cheap.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from server_daemon.training.models import RESNET_SIZES, build_resnet, resnet_config  # noqa: F401 (re-exported)

#: words that get whole-word tokens in the tiny vocabulary; everything else is spelled in bytes
TINY_WORDS = (
    "a", "an", "of", "the", "photo", "image", "images", "real", "world", "high", "low", "quality",
    "resolution", "drawing", "black", "and", "white", "colorful", "painting", "style", "cat", "dog",
    "car", "tree", "shirt", "shoe", "bag", "zero", "one", "two", "three", "four", "five", "six",
    "seven", "eight", "nine", "class", "sketch", "x", "in", "on", "with", "only", "object", "picture",
    "single", "cartoon", "clipart", "infograph", "text", "trouser", "pullover", "dress", "coat", "sandal",
    "sneaker", "ankle", "boot", "digit", "handwritten",
)
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (same table CLIPTokenizer builds)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_tokenizer_files(directory: str | os.PathLike, words: Sequence[str] = TINY_WORDS) -> int:
    """Write a byte-level CLIP ``vocab.json`` and ``merges.txt``; return the vocabulary size.

    The vocabulary holds every byte character, every byte character with the end-of-word mark
    ``</w>``, each intermediate and final merge of ``words`` (so each word becomes one token) and
    the start/end tokens. Any text can be encoded; unknown words are spelled byte by byte.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for nxt in symbols[1:]:
            pair = (current, nxt)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            current = current + nxt
            vocab.setdefault(current, len(vocab))
    vocab.setdefault(BOS_TOKEN, len(vocab))
    vocab.setdefault(EOS_TOKEN, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)


def build_tiny_tokenizer(directory: str | os.PathLike, model_max_length: int = 16):
    """Write the tokenizer files into ``directory`` and load them back as a ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    write_tiny_tokenizer_files(directory)
    tok = CLIPTokenizer(
        vocab_file=str(Path(directory) / "vocab.json"),
        merges_file=str(Path(directory) / "merges.txt"),
        model_max_length=model_max_length,
    )
    tok.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)


def build_tiny_components(workdir: str | os.PathLike, seed: int = 0, sample_size: int = 8,
                          model_max_length: int = 16) -> dict[str, Any]:
    """Seeded tiny UNet, VAE (x4 downsampling), CLIP text model, tokenizer and DPM-Solver scheduler.

    ``sample_size`` is the latent side; the native image side is ``4 * sample_size`` (32 px for 8).
    ``workdir`` receives the tokenizer files (the tokenizer is loaded back from them).
    """
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tiny_tokenizer(Path(workdir) / "tokenizer_src", model_max_length=model_max_length)
    hidden = 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_add_attention=False,
        sample_size=sample_size * 4,
    )
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", steps_offset=1,
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def write_tiny_pipeline(directory: str | os.PathLike, seed: int = 0, sample_size: int = 8,
                        model_max_length: int = 16) -> Path:
    """Write a tiny seeded ``StableDiffusionPipeline`` to ``directory`` and return the path.

    The result is an ordinary diffusers directory (``model_index.json``, ``unet/``, ``vae/``,
    ``text_encoder/``, ``tokenizer/``, ``scheduler/``) without a safety checker; load it with
    ``StableDiffusionPipeline.from_pretrained(directory, local_files_only=True)`` or
    :func:`server_daemon.synthesis.engine.load_pipeline`. Native image size: ``4 * sample_size``.
    """
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    components = build_tiny_components(directory / ".build", seed=seed, sample_size=sample_size,
                                       model_max_length=model_max_length)
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(directory)
    _rmtree(directory / ".build")
    return directory


def write_tiny_classifier_config(directory: str | os.PathLike, labels: Sequence[str],
                                 size: str = "tiny") -> Path:
    """Write the ResNet ``config.json`` (no weights) for ``labels`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    resnet_config(len(labels), size, labels).save_pretrained(directory)
    return directory / "config.json"


def main_write_tiny(out_dir: str | os.PathLike, seed: int = 0,
                    labels: Sequence[str] = ("zero", "one", "two")) -> dict[str, str]:
    """Write the tiny pipeline (``out_dir/sd-tiny``) and a tiny classifier config
    (``out_dir/resnet-tiny``); return the paths by name. Called by the server CLI."""
    out = Path(out_dir)
    pipeline_dir = write_tiny_pipeline(out / "sd-tiny", seed=seed)
    classifier_cfg = write_tiny_classifier_config(out / "resnet-tiny", labels, size="tiny")
    return {"pipeline": str(pipeline_dir), "classifier_config": str(classifier_cfg)}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
