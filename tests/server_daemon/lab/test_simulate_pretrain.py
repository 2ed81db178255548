"""pretrain-tiny: a few steps give an ordinary diffusers directory the synthesis engine loads."""
from __future__ import annotations

import json

import pytest

from server_daemon.lab.pretrain import PretrainConfig, pretrain_tiny


@pytest.mark.slow
def test_pretrain_tiny_writes_a_loadable_pipeline(tmp_path):
    from server_daemon.synthesis.engine import load_engine

    cfg = PretrainConfig(dataset="fashion-mnist-subset", split="all", vae_steps=2, unet_steps=2, vae_batch=8,
                         unet_batch=8, samples_per_class=1)
    summary = pretrain_tiny(tmp_path / "sd", cfg)
    assert summary["unet"]["steps"] == 2 and summary["images"] == 3000
    assert json.loads((tmp_path / "sd" / "osfl_pretrain.json").read_text())["classes"][0] == "t-shirt"
    assert (tmp_path / "sd" / "samples.png").is_file()
    engine = load_engine(tmp_path / "sd", device="cpu")
    assert engine.native_size == (32, 32)
    assert abs(engine.pipe.vae.config.scaling_factor - summary["vae_scaling_factor"]) < 1e-6
    imgs = engine.generate(["t-shirt, real world images, high resolution"], seeds=[0], steps=2, guidance=3.0)
    assert imgs.shape == (1, 32, 32, 3)
    assert not (tmp_path / "sd.work").exists()
