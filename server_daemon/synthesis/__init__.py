"""Synthesis: stored payloads -> a synthetic image set, with Stable Diffusion (diffusers).

Importing this package does not import torch or diffusers; ``engine`` does, and is loaded on
first use of one of its names (``load_pipeline``, ``load_engine``, ``SynthesisEngine``, ...).

Typical use, as the synthesis job does (``server_daemon/jobs/synthesis.py``)::

    from server_daemon.methods import plan_from_payloads
    from server_daemon.synthesis import GenerationParams, load_engine, run_synthesis, write_sample_grid

    plan = plan_from_payloads(fed_id, accepted_payloads, labels=fed_labels,
                              images_per_class=400, params=GenerationParams(steps=50, guidance=2.0))
    engine = load_engine(cfg.model_dir, device=None)    # CUDA fp16 or CPU fp32; ModelDirError if incomplete
    result = run_synthesis(plan, engine, out_dir, shard_size=256,
                           on_progress=lambda done, total: print(done, total))
    write_sample_grid(out_dir, report_dir / "samples.png")

Plans are built by ``server_daemon.methods`` (one module per payload kind); this package runs them.

API
---
- ``prompts``: ``class_prompt(label, domain=None, negative=DEFAULT_NEGATIVE) -> (prompt, negative)``,
  ``instance_prompt(label, caption, negative=...) -> (prompt, negative)``, the FGL templates as constants.
- ``spec``: ``ImageSpec(site, label_index, label, prompt, negative, seed, method, index, extra=None,
  payload=None)``,
  ``GenerationParams(scheduler=None, steps=50, guidance=2.0, height=None, width=None, batch_size=8,
  eta=0.0, save_size=None)``, ``SynthesisPlan(federation, labels, images, params)`` with
  ``to_json``/``from_json``/``fingerprint``/``counts``, and
  ``derive_seed(federation, site, label_index, index, method="") -> int``.
- ``engine`` (torch): ``load_pipeline(model_dir, device=None, dtype=None, *, scheduler=None,
  attention="auto", channels_last=None, variant=None, config_key="synthesis.model_dir")``,
  ``load_engine(...) -> SynthesisEngine``, ``check_model_dir(model_dir, config_key)``,
  ``SynthesisEngine.generate(prompts, *, negative_prompts, seeds | generators, steps, guidance,
  height, width, eta, timesteps, latents, scale_latents, prompt_embeds, negative_prompt_embeds,
  guidance_fn, callback_on_step_end, output_type)``, ``SynthesisEngine.generate_specs(specs, params)``,
  ``SCHEDULERS`` (names "dpm", "ddim", "pndm", "ddpm", "euler", "euler_a", "unipc").
- ``shards``: ``run_synthesis(plan, pipeline_or_engine, out_dir, shard_size=256, progress=True,
  on_progress=None, verify=True, writer_threads=4, shards=None) -> SynthesisResult``,
  ``read_manifest(dir_or_manifest) -> (root, records)``, ``read_labels(dir)``.
- ``grid``: ``write_sample_grid(source, out_png, per_class=8, thumb=64, labels=None)``.
- ``errors``: ``SynthesisError`` > ``ModelDirError``, ``PlanError``, ``ShardError``.

The ``latents`` (FedBiP), ``concepts`` (FedBiP) and ``classifier`` (FedLMG) payload kinds come
later; the engine already takes what they need (start latents with custom timesteps, injected
prompt embeddings, a gradient-enabled per-step ``guidance_fn``).
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import ModelDirError, PlanError, ShardError, SynthesisError
from .prompts import DEFAULT_NEGATIVE, class_prompt, instance_prompt
from .spec import GenerationParams, ImageSpec, SynthesisPlan, derive_seed

_LAZY = {
    "load_pipeline": "engine", "load_engine": "engine", "SynthesisEngine": "engine",
    "check_model_dir": "engine", "SCHEDULERS": "engine", "make_generators": "engine",
    "run_synthesis": "shards", "read_manifest": "shards", "read_labels": "shards",
    "SynthesisResult": "shards", "write_sample_grid": "grid",
}

__all__ = [
    "DEFAULT_NEGATIVE", "GenerationParams", "ImageSpec", "ModelDirError", "PlanError", "ShardError",
    "SynthesisError", "SynthesisPlan", "class_prompt", "derive_seed", "instance_prompt", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
