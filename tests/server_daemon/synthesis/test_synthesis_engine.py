"""The engine on the tiny pipeline: loading checks, device policy, seeding, and the hooks the
FedBiP/FedLMG methods need (start latents + custom timesteps, injected embeddings, guidance)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from server_daemon.synthesis import GenerationParams, ImageSpec, ModelDirError, SynthesisError
from server_daemon.synthesis.engine import (SCHEDULERS, check_model_dir, load_pipeline, make_generators,
                                            resolve_device, resolve_dtype, to_uint8)

PROMPTS = ["a photo of a cat", "a dog", "a car, real world images", "a tree"]
NEGS = ["low quality, low resolution"] * 4
SEEDS = [11, 22, 33, 44]


def gen(engine, **kw):
    args = dict(negative_prompts=NEGS, seeds=SEEDS, steps=2, guidance=2.0)
    args.update(kw)
    prompts = args.pop("prompts", PROMPTS)
    return engine.generate(prompts if "prompt_embeds" not in args else None, **args)


# ---------------------------------------------------------------- loading

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: shutil.rmtree(d), "does not exist"),
    (lambda d: (d / "model_index.json").unlink(), "no model_index.json"),
    (lambda d: (d / "model_index.json").write_text("{oops"), "not readable JSON"),
    (lambda d: shutil.rmtree(d / "unet"), "missing: unet/"),
    (lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").unlink(),
     "vae/diffusion_pytorch_model*.safetensors or diffusion_pytorch_model*.bin"),
    (lambda d: (d / "tokenizer" / "merges.txt").unlink(), "tokenizer/tokenizer.json or merges.txt"),
    (lambda d: (d / "scheduler" / "scheduler_config.json").unlink(), "scheduler/scheduler_config.json"),
    (lambda d: (d / "model_index.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "model_index.json").read_text()).items() if k != "text_encoder"})),
     "model_index.json entry 'text_encoder'"),
])
def test_incomplete_model_dir_names_missing_files_and_config_key(tiny_sd_dir, tmp_path, breakage, expected):
    d = _copy(tiny_sd_dir, tmp_path / "sd")
    breakage(d)
    with pytest.raises(ModelDirError) as info:
        load_pipeline(d, device="cpu", config_key="models.stable_diffusion")
    assert expected in str(info.value)
    assert "models.stable_diffusion" in str(info.value)


def test_complete_model_dir_passes(tiny_sd_dir):
    assert check_model_dir(tiny_sd_dir) == tiny_sd_dir


def test_cpu_policy(engine):
    assert engine.device.type == "cpu" and engine.dtype == torch.float32
    assert engine.attention == "sdpa"
    assert engine.pipe.safety_checker is None
    assert engine.native_size == (32, 32)


@pytest.mark.parametrize("device, dtype, expected", [
    ("cpu", None, torch.float32), ("cuda", None, torch.float16), ("cpu", "bf16", torch.bfloat16),
    ("cuda", "fp32", torch.float32), ("cpu", torch.float16, torch.float16),
])
def test_dtype_policy(device, dtype, expected):
    assert resolve_dtype(torch.device(device), dtype) == expected


def test_bad_dtype_and_device():
    with pytest.raises(SynthesisError, match="unknown dtype 'fp8'"):
        resolve_dtype(torch.device("cpu"), "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(SynthesisError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device(None).type == "cpu"


def test_xformers_required_but_unavailable(tiny_sd_dir):
    with pytest.raises(SynthesisError, match="xformers"):
        load_pipeline(tiny_sd_dir, device="cpu", attention="xformers")
    with pytest.raises(SynthesisError, match="unknown attention"):
        load_pipeline(tiny_sd_dir, device="cpu", attention="flash")


# ---------------------------------------------------------------- seeding and batching

def test_batch_equals_one_by_one(engine):
    batch = gen(engine, output_type="pt")
    for i in range(4):
        alone = engine.generate([PROMPTS[i]], negative_prompts=[NEGS[i]], seeds=[SEEDS[i]], steps=2,
                                guidance=2.0, output_type="pt")
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-4, rtol=1e-4)


def test_same_as_plain_diffusers_call(engine):
    ours = gen(engine)
    ref = engine.pipe(PROMPTS, negative_prompt=NEGS, generator=make_generators(SEEDS), num_inference_steps=2,
                      guidance_scale=2.0, output_type="np").images
    ref = (ref * 255).round().astype(np.uint8)
    assert ours.shape == ref.shape == (4, 32, 32, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_seeds_reproduce_and_differ(engine):
    a, b = gen(engine), gen(engine)
    np.testing.assert_array_equal(a, b)
    c = gen(engine, seeds=[1, 2, 3, 4])
    assert np.abs(a.astype(int) - c).mean() > 1


def test_no_guidance_and_single_negative_string(engine):
    out = gen(engine, guidance=1.0, negative_prompts=None)
    assert out.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(gen(engine, negative_prompts=NEGS[0]), gen(engine))


def test_size_and_output_types(engine):
    assert gen(engine, height=48, width=32).shape == (4, 48, 32, 3)
    lat = gen(engine, output_type="latent")
    assert lat.shape == (4, 4, 8, 8)
    pt = gen(engine, output_type="pt")
    assert pt.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(to_uint8(pt), gen(engine))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_is_seeded_per_image(engine, name):
    engine.set_scheduler(name)
    batch = gen(engine, steps=3, output_type="pt")
    alone = engine.generate([PROMPTS[2]], negative_prompts=[NEGS[2]], seeds=[SEEDS[2]], steps=3,
                            guidance=2.0, output_type="pt")
    torch.testing.assert_close(batch[2:3], alone, atol=1e-4, rtol=1e-4)
    assert type(engine.pipe.scheduler).__name__ == SCHEDULERS[name]


def test_unknown_scheduler(engine):
    with pytest.raises(SynthesisError, match="unknown scheduler 'magic'"):
        engine.set_scheduler("magic")


def test_generate_specs_uses_params(engine):
    specs = [ImageSpec("s", 0, "cat", PROMPTS[i], NEGS[i], SEEDS[i], "class_prompts", i) for i in range(4)]
    out = engine.generate_specs(specs, GenerationParams(steps=2, guidance=2.0, scheduler="ddim"))
    engine.set_scheduler("ddim")
    np.testing.assert_array_equal(out, gen(engine))


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=None), "give prompts or prompt_embeds"),
    (dict(prompts="a cat"), "single string"),
    (dict(prompts=[]), "empty"),
    (dict(seeds=None), "exactly one of seeds or generators"),
    (dict(generators=make_generators([1])), "exactly one of seeds or generators"),
    (dict(seeds=[1, 2]), "2 seeds/generators for 4 images"),
    (dict(negative_prompts=["x"]), "1 negative prompts for 4 images"),
    (dict(output_type="pil"), "output_type"),
    (dict(height=30), "multiples of 4"),
    (dict(latents=torch.zeros(4, 4, 4, 4)), "start latents have shape"),
    (dict(latents=torch.zeros(2, 4, 8, 8)), "2 start latents for 4 images"),
])
def test_bad_inputs(engine, kwargs, match):
    with pytest.raises(SynthesisError, match=match):
        gen(engine, **kwargs)


# ---------------------------------------------------------------- hooks for the later methods

def test_start_latents_with_custom_timesteps(engine):
    """FedBiP instance level: noise given latents to the first timestep, sample on a custom schedule."""
    engine.set_scheduler("dpm")
    sched = engine.pipe.scheduler
    z0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    timesteps = [981, 700, 400, 100]
    zt = sched.add_noise(z0, eps, torch.tensor([timesteps[0]]))
    seen = []

    def record(pipe, i, t, tensors):
        seen.append(int(t))
        return tensors

    a = gen(engine, latents=zt, scale_latents=False, timesteps=timesteps, callback_on_step_end=record)
    assert seen == timesteps
    np.testing.assert_array_equal(a, gen(engine, latents=zt, scale_latents=False, timesteps=timesteps))
    assert np.abs(a.astype(int) - gen(engine, steps=4)).mean() > 1  # the start latents matter
    b = gen(engine, latents=sched.add_noise(z0 * 0.5, eps, torch.tensor([timesteps[0]])), scale_latents=False,
            timesteps=timesteps)
    assert np.abs(a.astype(int) - b).mean() > 0


def test_custom_timesteps_need_a_scheduler_that_takes_them(engine):
    engine.set_scheduler("ddim")
    with pytest.raises(SynthesisError, match="custom timesteps need a scheduler that accepts them"):
        gen(engine, timesteps=[900, 500, 100])


def test_injected_prompt_embeddings(engine):
    """FedBiP concepts: text-encoder outputs are overwritten at chosen token positions."""
    cond, uncond = engine.encode_prompts(PROMPTS, NEGS, cfg=True)
    assert cond.shape == (4, 16, 32)
    np.testing.assert_array_equal(gen(engine, prompt_embeds=cond), gen(engine))
    np.testing.assert_array_equal(gen(engine, prompt_embeds=cond, negative_prompt_embeds=uncond), gen(engine))
    edited = cond.clone()
    edited[:, 2] = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)) * 3
    assert np.abs(gen(engine, prompt_embeds=edited).astype(int) - gen(engine)).mean() > 0.5
    with pytest.raises(SynthesisError, match="must match"):
        gen(engine, prompt_embeds=cond, negative_prompt_embeds=uncond[:2])


def test_guidance_fn_runs_with_gradients(engine):
    """FedLMG: before each step, a loss on the decoded x0 estimate moves the latents by its gradient."""
    calls = []

    def identity(eng, i, t, latents, cond):
        calls.append((i, torch.is_grad_enabled()))
        return latents

    np.testing.assert_array_equal(gen(engine, guidance_fn=identity), gen(engine))
    assert calls == [(0, True), (1, True)]
    norms = []

    def guide(eng, i, t, latents, cond):
        latents = latents.requires_grad_(True)
        noise = eng.predict_noise(latents, t, cond["prompt_embeds"], cond["negative_prompt_embeds"], cond["guidance"])
        image = eng.decode(eng.predict_x0(latents, noise, t))
        loss = (image - 1.0).pow(2).mean()  # pull towards white
        (grad,) = torch.autograd.grad(loss, latents)
        norms.append(float(grad.norm()))
        return latents - 50.0 * grad

    guided = gen(engine, guidance_fn=guide)
    assert len(norms) == 2 and all(np.isfinite(norms)) and min(norms) > 0
    assert guided.mean() > gen(engine).mean()


def test_callback_can_replace_latents(engine):
    steps = []

    def cb(pipe, i, t, tensors):
        steps.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 1 else tensors

    out = gen(engine, callback_on_step_end=cb, output_type="latent")
    assert steps == [0, 1] and float(out.abs().max()) == 0.0
