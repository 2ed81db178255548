"""The tiny seeded models used by tests, the demo and the benchmarks (server_daemon/lab/tinymodels.py)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from server_daemon.lab import tinymodels as T


def _digest(directory):
    h = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f.relative_to(directory).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_pipeline_directory_is_ordinary_and_seeded(tiny_sd_dir, tmp_path):
    index = json.loads((tiny_sd_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert _digest(T.write_tiny_pipeline(tmp_path / "again", seed=0)) == _digest(tiny_sd_dir)
    assert _digest(T.write_tiny_pipeline(tmp_path / "other", seed=1)) != _digest(tiny_sd_dir)
    assert not (tiny_sd_dir / ".build").exists()


def test_tokenizer_loads_back_from_its_directory(tiny_sd_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    assert tok.model_max_length == 16
    ids = tok("a photo of a cat, real world images").input_ids
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a cat , real world images"
    assert len(ids) == 11  # whole-word tokens: bos + 9 + eos
    odd = tok("zebra ÿ").input_ids  # unknown words are spelled in bytes, never <unk>
    assert tok.decode(odd, skip_special_tokens=True) == "zebra ÿ"
    padded = tok(["a cat"], padding="max_length", max_length=16).input_ids[0]
    assert len(padded) == 16


def test_vocab_and_merges_are_consistent(tmp_path):
    size = T.write_tiny_tokenizer_files(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert len(vocab) == size and sorted(vocab.values()) == list(range(size))
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version")
    for line in merges[1:]:
        a, b = line.split(" ")
        assert a + b in vocab


def test_native_size_and_components(engine):
    pipe = engine.pipe
    assert engine.native_size == (32, 32) and pipe.vae_scale_factor == 4
    assert pipe.text_encoder.config.max_position_embeddings == 16
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert n_unet < 2_000_000


@pytest.mark.parametrize("size, params", [("tiny", (1_000, 20_000)), ("resnet18", (11_000_000, 11_300_000))])
def test_build_resnet(size, params):
    model = T.build_resnet(10, size, seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert params[0] < n < params[1]
    assert model.config.layer_type == "basic"
    if size == "resnet18":
        assert model.config.depths == [2, 2, 2, 2] and model.config.hidden_sizes == [64, 128, 256, 512]
    out = model(pixel_values=torch.rand(2, 3, 32, 32)).logits
    assert out.shape == (2, 10)


def test_build_resnet_is_seeded_and_named():
    a, b = T.build_resnet(3, "tiny", ["x", "y", "z"], seed=4), T.build_resnet(3, "tiny", seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.config.id2label == {0: "x", 1: "y", 2: "z"}
    assert b.config.id2label[2] == "class_2"


@pytest.mark.parametrize("args, match", [((3, "vgg"), "unknown classifier size"), ((0, "tiny"), "at least one label"),
                                         ((3, "tiny", ["a"]), "1 label names given for num_labels=3")])
def test_build_resnet_errors(args, match):
    with pytest.raises(ValueError, match=match):
        T.build_resnet(*args)


def test_classifier_config_and_main_write_tiny(tmp_path):
    from transformers import ResNetConfig

    cfg = ResNetConfig.from_pretrained(T.write_tiny_classifier_config(tmp_path / "c", ["a", "b"], size="resnet18").parent)
    assert cfg.num_labels == 2 and cfg.hidden_sizes == [64, 128, 256, 512]
    paths = T.main_write_tiny(tmp_path / "models")
    assert (tmp_path / "models" / "sd-tiny" / "model_index.json").is_file()
    assert paths["classifier_config"].endswith("config.json")
