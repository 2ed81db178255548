"""A tiny seeded BLIP-2 (vision encoder, Q-Former, OPT decoder) written as a local model directory.

Tests, the demo and the caption benchmark need a real ``Blip2ForConditionalGeneration`` without
downloading weights. :func:`write_tiny_blip2` builds one from a small ``Blip2Config`` with a fixed
seed and saves it with everything ``from_pretrained(dir)`` and the export need offline:

- ``config.json`` + weights (safetensors), ``generation_config.json``;
- an OPT-style byte-level BPE tokenizer (``vocab.json`` + ``merges.txt``, written here from a
  small word list, plus ``tokenizer.json`` and ``tokenizer_config.json``) that both transformers'
  ``AutoTokenizer`` and the ``tokenizers`` library load;
- ``preprocessor_config.json`` (a ``BlipImageProcessor`` at the tiny image size).

The weights are random, so captions are word salad; every code path (vision, Q-Former,
projection, decoder with KV cache, tokenizer) is the real one. torch and transformers are imported
inside the functions.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .tinymodels import _bytes_to_unicode  # GPT-2's byte table, shared with the CLIP tokenizer

#: words with a whole-word token ("Ġword", GPT-2 style); other text is spelled in byte tokens
TINY_CAPTION_WORDS = (
    "a", "an", "the", "of", "with", "on", "in", "and", "photo", "picture", "close", "up", "x", "ray",
    "chest", "skin", "lesion", "hand", "scan", "image", "white", "black", "dark", "red", "brown",
    "pink", "small", "large", "round", "spot", "mole", "cat", "dog", "car", "tree", "man", "woman",
    "person", "table", "background", "view", "black", "blurry", "shirt", "shoe", "bag",
)
#: OPT's special tokens and ids (facebook/opt-*: <s>=0, <pad>=1, </s>=2, <unk>=3)
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 8


def write_opt_tokenizer_files(directory: str | os.PathLike, words: Sequence[str] = TINY_CAPTION_WORDS,
                              pad_to: int = 0) -> dict[str, int]:
    """Write a GPT-2/OPT byte-level BPE ``vocab.json`` + ``merges.txt``; return the vocabulary.

    Ids 0-3 are OPT's special tokens, then the 256 byte characters, then the merges that make
    each of ``words`` (with and without the leading-space mark "Ġ") one token, then filler tokens
    up to ``pad_to`` entries (a real-sized vocabulary for benchmarks), then ``<image>``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in _bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    merges: list[str] = []
    seen: set[str] = set()
    for word in dict.fromkeys(words):
        for spelled in ("Ġ" + word, word):
            current = spelled[0]
            for nxt in spelled[1:]:
                merge = f"{current} {nxt}"
                if merge not in seen:
                    seen.add(merge)
                    merges.append(merge)
                current += nxt
                vocab.setdefault(current, len(vocab))
    while len(vocab) < pad_to - 1:
        vocab[f"Ġfill{len(vocab)}"] = len(vocab)
    vocab.setdefault(IMAGE_TOKEN, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab


#: model sizes. "tiny" is for tests. "opt2.7b-slice" has the widths of BLIP-2 OPT-2.7b (ViT-g 1408
#: wide at 224 px, Q-Former 768 with 32 queries, OPT 2560 wide, 50272 tokens) but only a few of its
#: layers (39 vision, 12 Q-Former, 32 decoder): every matrix has its real shape, for benchmarks.
SIZES = {
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=IMAGE_SIZE, patch_size=8),
                 qformer=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
                 text=dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                           word_embed_proj_dim=32),
                 queries=NUM_QUERY_TOKENS, vocab=0, init=0.2),
    "opt2.7b-slice": dict(vision=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=2,
                                      num_attention_heads=16, image_size=224, patch_size=14),
                          qformer=dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                                       intermediate_size=3072),
                          text=dict(hidden_size=2560, num_hidden_layers=2, ffn_dim=10240, num_attention_heads=32,
                                    word_embed_proj_dim=2560),
                          queries=32, vocab=50272, init=0.02),
}


def tiny_blip2_config(vocab_size: int, image_token_index: int, *, size: str = "tiny"):
    """The ``Blip2Config`` of ``size`` (see ``SIZES``); "tiny": 2-layer ViT (32 px, 8 px patches),
    2-layer Q-Former, 2-layer OPT, all 32 wide.

    The tiny initializer ranges are large on purpose: random logits then have clear maxima, so
    greedy decoding does not hinge on float rounding when onnxruntime and torch are compared.
    """
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    s = SIZES[size]
    vision = Blip2VisionConfig(**s["vision"], initializer_range=s["init"])
    qformer = Blip2QFormerConfig(vocab_size=64, encoder_hidden_size=s["vision"]["hidden_size"],
                                 max_position_embeddings=64, initializer_range=s["init"], **s["qformer"])
    text = OPTConfig(vocab_size=vocab_size, max_position_embeddings=128, init_std=s["init"], bos_token_id=2,
                     eos_token_id=2, pad_token_id=1, do_layer_norm_before=True, **s["text"])
    cfg = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                      num_query_tokens=s["queries"], image_token_index=image_token_index)
    cfg.initializer_range = s["init"]
    return cfg


def write_tiny_blip2(directory: str | os.PathLike, seed: int = 0, *, max_new_tokens: int = 12,
                     size: str = "tiny") -> Path:
    """Write a seeded ``Blip2ForConditionalGeneration`` of ``size`` with its tokenizer to ``directory``.

    Two calls with the same ``seed`` write the same weights. ``max_new_tokens`` goes into the
    generation config (and so becomes the export's default caption length).
    """
    if size not in SIZES:
        raise ValueError(f"unknown BLIP-2 size {size!r}; expected one of {', '.join(SIZES)}")
    import torch
    from transformers import (AutoTokenizer, Blip2ForConditionalGeneration, BlipImageProcessor, GPT2Tokenizer,
                              GenerationConfig)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_opt_tokenizer_files(directory, pad_to=SIZES[size]["vocab"])
    slow = GPT2Tokenizer(vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"),
                         bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                         add_prefix_space=False, model_max_length=128)
    slow.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    slow.save_pretrained(directory)
    fast = AutoTokenizer.from_pretrained(directory, use_fast=True)
    fast.save_pretrained(directory)  # adds tokenizer.json, loadable by the tokenizers library

    image_token = vocab[IMAGE_TOKEN]
    cfg = tiny_blip2_config(len(vocab), image_token, size=size)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(cfg).eval()
    # the query tokens start at zero in transformers' init; random ones make images matter
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 1.0)
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=2, pad_token_id=1,
                                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    model.save_pretrained(directory, safe_serialization=True)
    side = SIZES[size]["vision"]["image_size"]
    BlipImageProcessor(size={"height": side, "width": side}, do_convert_rgb=True).save_pretrained(directory)
    return directory


def write_tiny_sources(directory: str | os.PathLike, seed: int = 0,
                       labels: Sequence[str] = ("zero", "one", "two")) -> dict[str, Path]:
    """Tiny local sources for a whole bundle: BLIP-2, a Stable Diffusion pipeline (its VAE) and a
    ResNet classifier, each in its own folder under ``directory``; returns the folders by role."""
    from server_daemon.lab.tinymodels import write_tiny_pipeline
    from server_daemon.training.models import build_resnet

    root = Path(directory)
    blip2 = write_tiny_blip2(root / "blip2-tiny", seed=seed)
    sd = write_tiny_pipeline(root / "sd-tiny", seed=seed)
    classifier = root / "resnet-tiny"
    build_resnet(len(labels), "tiny", labels=list(labels), seed=seed).save_pretrained(classifier)
    return {"blip2": blip2, "vae": sd, "classifier": classifier}
