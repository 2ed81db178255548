"""The synthesis engine: a local Stable Diffusion pipeline and a batched, seeded sampling loop.

:func:`load_pipeline` opens a diffusers ``StableDiffusionPipeline`` from a local directory only
(never the hub) after checking that the directory is complete, and applies the device policy:

- CUDA: fp16, channels_last UNet/VAE, xformers attention when it is importable and a tiny test
  call on the GPU works, else PyTorch SDPA (diffusers' default processor on torch 2);
- CPU: fp32, SDPA.

:class:`SynthesisEngine` owns the denoising loop. It follows the steps of diffusers'
``StableDiffusionPipeline.__call__`` (encode prompt, timesteps, latents, denoise, decode) and gives
the same images for the same inputs (tested), but exposes what the methods need:

- one ``torch.Generator`` per image (made on the CPU from the image's seed), so image *i* of a
  batch equals the same image generated alone, and the start noise is the same on every device;
- ``latents`` + ``timesteps``: start from given latents on a custom schedule (FedBiP instance
  level; use a scheduler that accepts custom timesteps, e.g. "dpm"; ``scale_latents=False`` when
  the latents are already noised to the first timestep);
- ``prompt_embeds`` / ``negative_prompt_embeds``: injected conditioning (FedBiP concepts);
- ``guidance_fn``: called before every UNet step *with gradients enabled*; it returns new latents
  (FedLMG classifier guidance). :meth:`SynthesisEngine.predict_noise`,
  :meth:`~SynthesisEngine.predict_x0` and :meth:`~SynthesisEngine.decode` are the differentiable
  pieces such a function needs;
- ``callback_on_step_end``: diffusers' callback convention (pipe, step, t, tensors) -> tensors.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import ModelDirError, SynthesisError
from .spec import GenerationParams, ImageSpec

log = logging.getLogger(__name__)

#: scheduler names accepted in the config and plans -> diffusers class names
SCHEDULERS = {
    "dpm": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}
#: components a Stable Diffusion directory must hold, with the files that prove each is there
REQUIRED_COMPONENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    # each inner tuple is a set of alternatives (glob patterns); one of them must match
    "unet": (("config.json",), ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")),
    "text_encoder": (("config.json",), ("model*.safetensors", "pytorch_model*.bin")),
    "tokenizer": (("tokenizer.json", "vocab.json"), ("tokenizer.json", "merges.txt")),
    "scheduler": (("scheduler_config.json",),),
}
DEFAULT_CONFIG_KEY = "synthesis.model_dir"

GuidanceFn = Callable[["SynthesisEngine", int, torch.Tensor, torch.Tensor, dict], torch.Tensor]


# --------------------------------------------------------------------------- loading

def check_model_dir(model_dir: str | Path, config_key: str = DEFAULT_CONFIG_KEY) -> Path:
    """Raise :class:`ModelDirError` naming every missing file unless ``model_dir`` is a complete
    local Stable Diffusion pipeline directory; return it as a ``Path``."""
    path = Path(model_dir).expanduser()
    fix = (f"set {config_key} in the server config to a local diffusers Stable Diffusion directory "
           "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. one written "
           "by StableDiffusionPipeline.save_pretrained; nothing is downloaded at run time")
    if not path.is_dir():
        raise ModelDirError(f"Stable Diffusion directory {path} does not exist: {fix}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelDirError(f"{path} has no model_index.json, so it is not a diffusers pipeline directory: {fix}")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{index_file} is not readable JSON ({type(exc).__name__}): {fix}") from exc
    missing: list[str] = []
    for comp, requirements in REQUIRED_COMPONENTS.items():
        if comp not in index:
            missing.append(f"model_index.json entry {comp!r}")
        sub = path / comp
        if not sub.is_dir():
            missing.append(f"{comp}/")
            continue
        for alternatives in requirements:
            if not any(any(sub.glob(pattern)) for pattern in alternatives):
                missing.append(f"{comp}/" + " or ".join(alternatives))
    if missing:
        raise ModelDirError(f"{path} is not a complete Stable Diffusion directory; missing: "
                            f"{', '.join(missing)}. {fix[0].upper()}{fix[1:]}")
    return path


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SynthesisError(f"device {dev} was requested but torch sees no CUDA GPU; "
                             "use device 'cpu' or install a CUDA build of torch")
    return dev


_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The device policy: fp16 on CUDA, fp32 on CPU, unless ``dtype`` says otherwise."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise SynthesisError(f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(_DTYPES))}") from None


def make_scheduler(name: str, config: Any):
    """A diffusers scheduler by short name (see :data:`SCHEDULERS`), built from ``config``."""
    try:
        cls_name = SCHEDULERS[name]
    except KeyError:
        raise SynthesisError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}") from None
    cls = getattr(importlib.import_module("diffusers"), cls_name)
    overrides = {"skip_prk_steps": True} if name == "pndm" else {}  # as Stable Diffusion's configs do
    try:
        return cls.from_config(config, **overrides)
    except ImportError as exc:
        raise SynthesisError(f"scheduler {name!r} ({cls_name}) needs a missing package ({exc}); "
                             "install it or choose another scheduler") from None


def _xformers_works(device: torch.device) -> bool:
    """True when xformers imports and runs one tiny attention call on ``device``."""
    if device.type != "cuda" or importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers.ops

        q = torch.randn(1, 4, 2, 40, device=device, dtype=torch.float16)
        xformers.ops.memory_efficient_attention(q, q, q)
        return True
    except Exception as exc:  # any failure means: do not use it
        log.warning("xformers is installed but its test call failed (%s: %s); using PyTorch SDPA",
                    type(exc).__name__, exc)
        return False


def configure_attention(pipe, device: torch.device, attention: str = "auto") -> str:
    """Pick the attention kernel; return "xformers" or "sdpa".

    ``attention``: "auto" (xformers on CUDA when it works, else SDPA), "xformers" (required: an
    error if it does not work) or "sdpa".
    """
    if attention not in ("auto", "xformers", "sdpa"):
        raise SynthesisError(f"unknown attention {attention!r}; expected auto, xformers or sdpa")
    if attention in ("auto", "xformers") and _xformers_works(device):
        try:
            pipe.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as exc:
            log.warning("enabling xformers failed (%s: %s); using PyTorch SDPA", type(exc).__name__, exc)
    if attention == "xformers":
        raise SynthesisError("attention 'xformers' was requested but xformers is not importable or does "
                             "not run on this device; install a matching xformers or use attention 'sdpa'")
    return "sdpa"  # diffusers' default AttnProcessor2_0 calls torch's scaled_dot_product_attention


def load_pipeline(model_dir: str | Path, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None, *, scheduler: str | None = None,
                  attention: str = "auto", channels_last: bool | None = None,
                  variant: str | None = None, config_key: str = DEFAULT_CONFIG_KEY):
    """Load a ``StableDiffusionPipeline`` from a local directory, on ``device``, per the device policy.

    Raises :class:`ModelDirError` (naming the missing files and ``config_key``) when the directory
    is incomplete. The safety checker is never loaded. The chosen attention kernel is stored as
    ``pipe.osfl_attention``.
    """
    path = check_model_dir(model_dir, config_key)
    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    bars = dlogging.is_progress_bar_enabled()
    dlogging.set_verbosity_error()  # silence deprecation chatter about old scheduler configs
    dlogging.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), torch_dtype=dt, local_files_only=True, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, variant=variant)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelDirError(f"could not load the Stable Diffusion pipeline from {path}: {exc}. "
                            f"Check {config_key} points at a complete, uncorrupted local copy") from exc
    finally:
        dlogging.set_verbosity(verbosity)
        if bars:
            dlogging.enable_progress_bar()
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    if channels_last is None:
        channels_last = dev.type == "cuda"
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.osfl_attention = configure_attention(pipe, dev, attention)
    log.info("loaded Stable Diffusion from %s on %s (%s, attention %s)", path, dev,
             str(dt).replace("torch.", ""), pipe.osfl_attention)
    return pipe


def load_engine(model_dir: str | Path, device: str | torch.device | None = None,
                dtype: str | torch.dtype | None = None, **kwargs) -> "SynthesisEngine":
    """:func:`load_pipeline` wrapped in a :class:`SynthesisEngine`."""
    return SynthesisEngine(load_pipeline(model_dir, device, dtype, **kwargs))


# --------------------------------------------------------------------------- engine

def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed: the start noise is then the same on every device."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """VAE output in [-1, 1], NCHW -> uint8 NHWC numpy (rounded as diffusers' ``numpy_to_pil``)."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()


class SynthesisEngine:
    """Batched, seeded sampling on a loaded ``StableDiffusionPipeline`` (see the module docstring)."""

    def __init__(self, pipe, compile_unet: bool = False):
        self.pipe = pipe
        self._base_scheduler = pipe.scheduler
        self._scheduler_name: str | None = None
        if compile_unet:  # optional: long warm-up, pays off only for large jobs on a GPU
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)

    # -- properties
    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def attention(self) -> str:
        return getattr(self.pipe, "osfl_attention", "sdpa")

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) the UNet was trained for, in pixels."""
        s = self.pipe.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        f = self.pipe.vae_scale_factor
        return h * f, w * f

    def set_scheduler(self, name: str | None) -> None:
        """Use scheduler ``name`` (:data:`SCHEDULERS`); None restores the model's own."""
        if name == self._scheduler_name:
            return
        self.pipe.scheduler = (self._base_scheduler if name is None
                               else make_scheduler(name, self._base_scheduler.config))
        self._scheduler_name = name

    # -- differentiable pieces for guidance functions
    def predict_noise(self, latents: torch.Tensor, t, prompt_embeds: torch.Tensor,
                      negative_prompt_embeds: torch.Tensor | None = None,
                      guidance: float = 1.0) -> torch.Tensor:
        """The (classifier-free guided) UNet noise prediction at ``t``; differentiable."""
        sched = self.pipe.scheduler
        cfg = guidance > 1.0 and negative_prompt_embeds is not None
        model_in = torch.cat([latents, latents]) if cfg else latents
        if hasattr(sched, "scale_model_input"):
            model_in = sched.scale_model_input(model_in, t)
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds
        noise = self.pipe.unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if cfg:
            uncond, text = noise.chunk(2)
            noise = uncond + guidance * (text - uncond)
        return noise

    def predict_x0(self, latents: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """The clean latent implied by ``noise`` at ``t`` (epsilon, v or sample prediction)."""
        sched = self.pipe.scheduler
        a = sched.alphas_cumprod.to(latents.device)[int(t)].to(latents.dtype)
        kind = sched.config.prediction_type
        if kind == "epsilon":
            return (latents - (1 - a).sqrt() * noise) / a.sqrt()
        if kind == "v_prediction":
            return a.sqrt() * latents - (1 - a).sqrt() * noise
        if kind == "sample":
            return noise
        raise SynthesisError(f"prediction type {kind!r} is not supported; expected epsilon, v_prediction or sample")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode latents to images in [-1, 1] (NCHW); differentiable."""
        vae = self.pipe.vae
        z = latents / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            z = z + shift
        return vae.decode(z.to(vae.dtype), return_dict=False)[0]

    def encode_prompts(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None,
                       cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP text embeddings of ``prompts`` and (when ``cfg``) of the negative prompts."""
        negs = list(negative_prompts) if negative_prompts is not None else None
        cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, cfg, negs)
        return cond, (uncond if cfg else None)

    # -- sampling
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str] | None = None,
        *,
        negative_prompts: str | Sequence[str] | None = None,
        seeds: Sequence[int] | None = None,
        generators: Sequence[torch.Generator] | None = None,
        steps: int = 50,
        guidance: float = 2.0,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        timesteps: Sequence[int] | None = None,
        latents: torch.Tensor | None = None,
        scale_latents: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        guidance_fn: GuidanceFn | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        output_type: str = "np",
        decode_batch_size: int | None = None,
    ):
        """Sample one batch; return uint8 images (N, H, W, 3) for ``output_type="np"``, the
        decoded tensor in [-1, 1] for ``"pt"`` or the final latents for ``"latent"``.

        Give ``prompts`` or ``prompt_embeds`` (N, tokens, dim), and ``seeds`` or ``generators``
        (one per image). ``guidance`` <= 1 turns classifier-free guidance off (as diffusers does).
        ``latents`` replace the seeded start noise and are multiplied by the scheduler's
        ``init_noise_sigma`` unless ``scale_latents`` is False. ``timesteps`` replaces ``steps``
        with a custom schedule. ``guidance_fn(engine, i, t, latents, cond)`` runs with gradients
        before each step and returns the latents to use; ``cond`` holds ``prompt_embeds``,
        ``negative_prompt_embeds`` and ``guidance``. ``callback_on_step_end(pipe, i, t, tensors)``
        follows diffusers and may return replacement ``latents`` / ``prompt_embeds``.
        """
        pipe = self.pipe
        # 1. check inputs
        n = self._check_inputs(prompts, negative_prompts, seeds, generators, prompt_embeds,
                               negative_prompt_embeds, latents, output_type)
        if generators is None:
            generators = make_generators(seeds)  # type: ignore[arg-type]
        generators = list(generators)
        nh, nw = self.native_size
        height, width = height or nh, width or nw
        f = pipe.vae_scale_factor
        if height % f or width % f:
            raise SynthesisError(f"height and width must be multiples of {f} (the VAE's downsampling), "
                                 f"got {height}x{width}")
        cfg = guidance > 1.0
        device, dtype = self.device, self.dtype

        # 2. encode the prompts (or take injected embeddings)
        if isinstance(negative_prompts, str):
            negative_prompts = [negative_prompts] * n
        if prompt_embeds is None or (cfg and negative_prompt_embeds is None):
            cond, uncond = pipe.encode_prompt(
                list(prompts) if prompts is not None and prompt_embeds is None else None,
                device, 1, cfg,
                list(negative_prompts) if negative_prompts is not None else ([""] * n if cfg else None),
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
            prompt_embeds, negative_prompt_embeds = cond, (uncond if cfg else None)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)

        # 3. timesteps
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        sched = pipe.scheduler
        try:
            ts, steps = retrieve_timesteps(sched, None if timesteps is not None else steps, device,
                                           list(timesteps) if timesteps is not None else None)
        except ValueError as exc:
            hint = ("custom timesteps need a scheduler that accepts them, e.g. 'dpm'" if timesteps is not None
                    else "try more steps or another scheduler")
            raise SynthesisError(f"scheduler {type(sched).__name__} rejected the schedule ({exc}); {hint}") from exc

        # 4. start latents: per-image CPU noise, or the given latents
        shape = (n, pipe.unet.config.in_channels, height // f, width // f)
        if latents is None:
            latents = torch.cat([torch.randn((1,) + shape[1:], generator=g, dtype=torch.float32)
                                 for g in generators])
        elif tuple(latents.shape) != shape:
            raise SynthesisError(f"start latents have shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(device=device, dtype=dtype)
        if scale_latents:
            latents = latents * sched.init_noise_sigma

        step_params = set(inspect.signature(sched.step).parameters)
        step_kwargs: dict[str, Any] = {}
        if "eta" in step_params:
            step_kwargs["eta"] = eta
        if "generator" in step_params:
            step_kwargs["generator"] = generators if len(generators) > 1 else generators[0]

        # 5. denoise
        cond = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds,
                "guidance": guidance}
        for i, t in enumerate(ts):
            if guidance_fn is not None:
                with torch.enable_grad():
                    latents = guidance_fn(self, i, t, latents.detach(), cond)
                latents = latents.detach().to(dtype)
            noise = self.predict_noise(latents, t, prompt_embeds, negative_prompt_embeds, guidance)
            latents = sched.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            if callback_on_step_end is not None:
                local = {"latents": latents, "prompt_embeds": prompt_embeds,
                         "negative_prompt_embeds": negative_prompt_embeds}
                outputs = callback_on_step_end(pipe, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs}) or {}
                latents = outputs.pop("latents", latents)
                prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                cond.update(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)

        # 6. decode
        if output_type == "latent":
            return latents
        chunk = decode_batch_size or n
        images = torch.cat([self.decode(latents[k:k + chunk]) for k in range(0, n, chunk)])
        if output_type == "pt":
            return images
        return to_uint8(images)

    def generate_specs(self, specs: Sequence[ImageSpec], params: GenerationParams,
                       **kwargs) -> np.ndarray:
        """Generate the images of ``specs`` (one batch) with ``params``; uint8 (N, H, W, 3)."""
        self.set_scheduler(params.scheduler)
        return self.generate(
            [s.prompt for s in specs], negative_prompts=[s.negative for s in specs],
            seeds=[s.seed for s in specs], steps=params.steps, guidance=params.guidance,
            height=params.height, width=params.width, eta=params.eta, **kwargs)

    def _check_inputs(self, prompts, negative_prompts, seeds, generators, prompt_embeds,
                      negative_prompt_embeds, latents, output_type) -> int:
        if output_type not in ("np", "pt", "latent"):
            raise SynthesisError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if prompts is None and prompt_embeds is None:
            raise SynthesisError("give prompts or prompt_embeds")
        if prompts is not None and prompt_embeds is not None:
            raise SynthesisError("give prompts or prompt_embeds, not both")
        if isinstance(prompts, str):
            raise SynthesisError("prompts is a list of strings, one per image; got a single string")
        n = len(prompts) if prompts is not None else int(prompt_embeds.shape[0])
        if n == 0:
            raise SynthesisError("nothing to generate: the batch is empty")
        if (seeds is None) == (generators is None):
            raise SynthesisError("give exactly one of seeds or generators, one per image")
        k = len(seeds) if seeds is not None else len(generators)
        if k != n:
            raise SynthesisError(f"{k} seeds/generators for {n} images; give one per image")
        if negative_prompts is not None and not isinstance(negative_prompts, str) and len(negative_prompts) != n:
            raise SynthesisError(f"{len(negative_prompts)} negative prompts for {n} images")
        if negative_prompt_embeds is not None and prompt_embeds is not None \
                and negative_prompt_embeds.shape != prompt_embeds.shape:
            raise SynthesisError(f"negative_prompt_embeds has shape {tuple(negative_prompt_embeds.shape)}, "
                                 f"prompt_embeds {tuple(prompt_embeds.shape)}; they must match")
        if latents is not None and latents.shape[0] != n:
            raise SynthesisError(f"{latents.shape[0]} start latents for {n} images")
        return n
