"""Export the models a site runs (captioner, VAE encoder, classifier) to ONNX for onnxruntime.

Everything here runs on the server, from local Hugging Face directories; a site never needs torch.

**Captioner (BLIP-2 with an OPT decoder).** Optimum has no BLIP-2 configuration, so the model is
cut in two graphs that we export ourselves with torch's TorchScript exporter:

- ``vision.onnx``: ``pixel_values`` (B, 3, H, W; normalised as the image processor does) ->
  ``query_embeds`` (B, Q, D): vision encoder, Q-Former over the learned query tokens, and the
  language projection. This is exactly what ``Blip2ForConditionalGeneration.generate`` puts in
  place of the image tokens.
- ``decoder.onnx``: one step of the OPT decoder **with a KV cache**. Inputs ``prefix_embeds``
  (B, P, D), ``input_ids`` (B, S), ``attention_mask`` (B, past + P + S) and, per layer,
  ``past_key_values.{i}.key`` / ``.value`` (B, heads, past, head_dim); outputs ``logits`` of the
  last position (B, vocab) and ``present.{i}.key`` / ``.value``. The first step passes the query
  embeddings as the prefix, the BOS token as ``input_ids`` and an empty cache (past = 0); every
  later step passes an empty prefix (P = 0), one token and the cache it got back. One graph, the
  weights once, and a caption costs linear rather than quadratic time in its length.

Greedy decoding over these graphs (``edge_client.captioning``) gives the same tokens as
transformers' ``generate()`` (tested on the tiny model). Attention is exported in its "eager"
form because the SDPA path decides on causal masking in Python, which a trace would freeze.

**VAE encoder** (FedBiP): ``sample`` (B, 3, H, W) in [-1, 1] -> ``mean`` and ``std`` of the
latent posterior (unscaled; ``scaling_factor`` is recorded).

**Classifier / feature extractor** (FedLMG): ``pixel_values`` in [0, 1] (normalisation inside)
-> ``logits`` and pooled ``features``; BatchNorm stays in the graph (no constant folding, eval
mode) because the server's guidance reads its running statistics.

Large models: with ``external_data="auto"`` (the default) weights over ``EXTERNAL_DATA_MIN``
(100 MB) are saved as ONNX external data in one ``<file>.data`` beside the graph ("always":
every graph; "never": none, up to protobuf's 2 GB limit). Over 2 GB it is required; below, it
lets onnxruntime memory-map the weights at the site instead of parsing a copy of them, which
lowers the captioner's peak memory (see ``Captioner(low_memory=True)``). ``int8=True`` adds dynamically quantised copies (onnxruntime's
``quantize_dynamic``: int8 weights for every MatMul, with the exporter's Gemm layers rewritten as
MatMul first, and for the embedding tables) of the captioner graphs.

Each ``export_*`` returns the model's entry for the bundle manifest (``bundle.py``): its files
(relative to the bundle root) and what a site needs to run it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ServerError

log = logging.getLogger(__name__)

OPSET = 17
#: weights above which "auto" saves a graph with external data (memory-mapped by onnxruntime)
EXTERNAL_DATA_MIN = 100_000_000
#: weights above which a graph needs external data (protobuf's limit is 2 GiB)
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_MODES = ("auto", "always", "never")
#: BLIP-2's image processor defaults (OpenAI CLIP statistics), used when a directory has none
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ExportError(ServerError):
    """An edge model cannot be exported (missing directory, unsupported model, failed check)."""

    exit_code = 3


# ---- shared helpers -------------------------------------------------------------------------------

def _torch_export(module, args: tuple, path: Path, *, input_names, output_names, dynamic_axes,
                  constant_folding: bool = True, opset: int = OPSET) -> None:
    from ..training.export import export_graph  # torch: imported when an export runs

    export_graph(module, args, path, input_names=input_names, output_names=output_names,
                 dynamic_axes=dynamic_axes, constant_folding=constant_folding, opset=opset)


def _weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def _finalize(tmp_dir: Path, graph_name: str, dest: Path, external_data: str) -> list[Path]:
    """Move an exported graph from ``tmp_dir`` to ``dest``, as one file or with one external-data file.

    The TorchScript exporter writes one file per tensor when a model exceeds 2 GB; here the
    tensors are gathered into ``dest.name + ".data"`` instead. Returns the files written.
    """
    import onnx

    if external_data not in EXTERNAL_DATA_MODES:
        raise ExportError(f"external_data must be one of {', '.join(EXTERNAL_DATA_MODES)}; got {external_data!r}")
    src = tmp_dir / graph_name
    size = _weights_bytes(tmp_dir)
    big = size > EXTERNAL_DATA_THRESHOLD
    external = external_data == "always" or (external_data == "auto" and size > EXTERNAL_DATA_MIN)
    if big and external_data == "never":
        raise ExportError(f"{dest.name} holds more than 2 GB of weights; it needs external data "
                          f"(use external_data='auto')")
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = dest.with_name(dest.name + ".data")
    data.unlink(missing_ok=True)
    if not external and not any(p.name != graph_name for p in tmp_dir.iterdir()):
        shutil.move(str(src), dest)
        return [dest]
    proto = onnx.load(str(src), load_external_data=True)
    if external:
        onnx.save_model(proto, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [dest, data] if data.exists() else [dest]
    onnx.save_model(proto, str(dest))
    return [dest]


def _gemm_to_matmul(proto) -> int:
    """Rewrite ``Gemm(x, W, b, transB=1)`` with constant W as ``MatMul(x, W^T) + b``, in place.

    onnxruntime's dynamic quantisation handles MatMul but not Gemm, and the exporter writes 2-D
    linear layers (OPT's feed-forward blocks, the logits) as Gemm. Returns the number rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    nodes, done = [], 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        w_name = f"{node.input[1]}.matmul{done}"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB", 0) else w),
                                                               w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}.matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}.matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}.bias"))
        done += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {i for n in proto.graph.node for i in n.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return done


def _quantize(src: Path, dest: Path, external: bool) -> list[Path]:
    """Dynamic int8 quantisation of the MatMul and Gather weights (onnxruntime.quantization)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    data = dest.with_name(dest.name + ".data")
    data.unlink(missing_ok=True)
    proto = onnx.load(str(src), load_external_data=True)
    if _gemm_to_matmul(proto):
        staged = dest.with_name(dest.name + ".staged.onnx")
        onnx.save_model(proto, str(staged), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=staged.name + ".data")
        src = staged
    del proto
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # quantize_dynamic logs a "pre-process first" advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dest), op_types_to_quantize=["MatMul", "Gather"],
                             weight_type=QuantType.QInt8, per_channel=False, use_external_data_format=external,
                             extra_options={"MatMulConstBOnly": True})
    finally:
        logging.disable(previous)
        for p in dest.parent.glob(dest.name + ".staged.onnx*"):
            p.unlink()
    if external:
        # quantize_dynamic names the data file after the model; keep our "<file>.data" convention
        import onnx

        proto = onnx.load(str(dest), load_external_data=True)
        for p in dest.parent.iterdir():
            if p.name.startswith(dest.name) and p != dest:
                p.unlink()
        onnx.save_model(proto, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    return [dest, data] if data.exists() else [dest]


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check_close(name: str, got: np.ndarray, want: np.ndarray, atol: float) -> None:
    if got.shape != want.shape:
        raise ExportError(f"{name}: onnxruntime gives shape {got.shape}, torch {want.shape}")
    err = float(np.abs(got - want).max()) if got.size else 0.0
    if not err <= atol:
        raise ExportError(f"{name}: onnxruntime differs from torch by {err:.2e} (allowed {atol:.0e})")


def _check_graph(what: str, module, path: Path, input_name: str, example, output_names) -> None:
    """onnxruntime's outputs of the graph at ``path`` against ``module``'s on the one input ``example``
    (each within 1e-4 of its own scale)."""
    import torch

    with torch.no_grad():
        want = [t.numpy() for t in module(example)]
    got = _ort_session(path).run(None, {input_name: example.numpy()})
    for name, g, w_ in zip(output_names, got, want):
        _check_close(f"{what} {name}", g, w_, 1e-4 * max(1.0, float(np.abs(w_).max())))


def _rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def _require_dir(model_dir: Any, what: str) -> Path:
    if model_dir is None:
        raise ExportError(f"no {what} directory given")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ExportError(f"{what} directory {path} does not exist; give a local Hugging Face model directory "
                          f"(nothing is downloaded)")
    return path


# ---- captioner ------------------------------------------------------------------------------------

def _captioner_modules(model):
    import torch

    class VisionQFormer(torch.nn.Module):
        """pixel_values -> language-model inputs of the query tokens (what generate() splices in)."""

        def __init__(self, m):
            super().__init__()
            self.vision_model, self.qformer = m.vision_model, m.qformer
            self.query_tokens, self.language_projection = m.query_tokens, m.language_projection

        def forward(self, pixel_values):
            image_embeds = self.vision_model(pixel_values, return_dict=True).last_hidden_state
            mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
            query = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
            out = self.qformer(query_embeds=query, encoder_hidden_states=image_embeds,
                               encoder_attention_mask=mask, return_dict=True).last_hidden_state
            return self.language_projection(out.to(image_embeds.dtype))

    class DecoderStep(torch.nn.Module):
        """One decoder step with a KV cache: (prefix embeds + token ids, mask, past) -> last logits, present."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm
            # F.linear with a bias on a 2-D input exports as Gemm(transB=1) on the embedding matrix
            # itself; without one the exporter adds a transposed copy of it (500 MB for OPT-2.7b)
            self.register_buffer("zero_bias", torch.zeros(lm.lm_head.weight.shape[0]), persistent=False)

        def forward(self, prefix_embeds, input_ids, attention_mask, *past):
            from transformers.cache_utils import DynamicCache

            embeds = torch.cat([prefix_embeds, self.lm.get_input_embeddings()(input_ids)], dim=1)
            cache = DynamicCache()
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            total = attention_mask.shape[1]
            past_len = total - embeds.shape[1]
            # as OPT does itself: positions count the unmasked tokens
            positions = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1)[:, past_len:]
            cache_position = torch.arange(past_len, total)
            out = self.lm.model.decoder(inputs_embeds=embeds, attention_mask=attention_mask, past_key_values=cache,
                                        position_ids=positions, cache_position=cache_position, use_cache=True,
                                        return_dict=True)
            # only the last position's logits: what greedy decoding needs, and vocab-size times less work
            last = out.last_hidden_state[:, -1, :]
            logits = torch.nn.functional.linear(last, self.lm.lm_head.weight, self.zero_bias)
            presents = []
            for layer in range(len(past) // 2):
                k, v = _cache_layer(out.past_key_values, layer)
                presents += [k, v]
            return (logits, *presents)

    return VisionQFormer(model).eval(), DecoderStep(model.language_model).eval()


def _cache_layer(cache, i: int):
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


def _image_processor_settings(model_dir: Path, vision_image_size: int) -> dict[str, Any]:
    """Resize and normalisation a site applies, from ``preprocessor_config.json`` when present."""
    cfg: dict[str, Any] = {}
    path = model_dir / "preprocessor_config.json"
    if path.exists():
        cfg = json.loads(path.read_text())
    size = cfg.get("size") or {}
    if isinstance(size, int):
        h = w = size
    else:
        h = int(size.get("height") or size.get("shortest_edge") or vision_image_size)
        w = int(size.get("width") or size.get("shortest_edge") or vision_image_size)
    return {
        "image_size": [h, w],
        "resample": int(cfg.get("resample", 3)),  # PIL.Image.BICUBIC
        "rescale_factor": float(cfg.get("rescale_factor", 1 / 255)),
        "image_mean": [float(x) for x in cfg.get("image_mean", CLIP_MEAN)],
        "image_std": [float(x) for x in cfg.get("image_std", CLIP_STD)],
        "do_normalize": bool(cfg.get("do_normalize", True)),
    }


def load_blip2(model_dir: str | os.PathLike):
    """``Blip2ForConditionalGeneration`` from a local directory, fp32, eager attention, eval mode."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    path = _require_dir(model_dir, "BLIP-2")
    if not (path / "config.json").exists():
        raise ExportError(f"{path} has no config.json; expected a BLIP-2 model directory (save_pretrained)")
    try:
        model = Blip2ForConditionalGeneration.from_pretrained(path, dtype=torch.float32,
                                                              attn_implementation="eager", local_files_only=True)
    except Exception as exc:
        raise ExportError(f"cannot load BLIP-2 from {path}: {type(exc).__name__}: {exc}") from exc
    if model.config.text_config.model_type != "opt":
        raise ExportError(f"{path}: only BLIP-2 with an OPT language model is supported; this one has "
                          f"{model.config.text_config.model_type!r}")
    return model.eval()


def export_captioner(model_dir: str | os.PathLike, bundle_root: str | os.PathLike, *, subdir: str = "captioner",
                     max_new_tokens: int | None = None, int8: bool = False, external_data: str = "auto",
                     verify: bool = True, model=None) -> dict[str, Any]:
    """Export BLIP-2 (OPT) from ``model_dir`` into ``bundle_root/subdir``; return its manifest entry."""
    model_dir = _require_dir(model_dir, "BLIP-2")  # before the slow imports
    import torch
    from transformers import AutoTokenizer

    model = model if model is not None else load_blip2(model_dir)
    root = Path(bundle_root)
    out = root / subdir
    out.mkdir(parents=True, exist_ok=True)
    text_cfg = model.config.text_config
    vision_cfg = model.config.vision_config
    n_layers, n_heads = text_cfg.num_hidden_layers, text_cfg.num_attention_heads
    head_dim = text_cfg.hidden_size // n_heads
    embed_dim = model.language_model.get_input_embeddings().weight.shape[1]
    proc = _image_processor_settings(model_dir, vision_cfg.image_size)
    h, w = proc["image_size"]
    vision, decoder = _captioner_modules(model)

    files: dict[str, list[Path]] = {}
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, h, w, generator=gen)
    past_len, prefix_len = 3, 2
    past = [torch.randn(2, n_heads, past_len, head_dim, generator=gen) for _ in range(2 * n_layers)]
    prefix = torch.randn(2, prefix_len, embed_dim, generator=gen)
    ids = torch.tensor([[5], [7]], dtype=torch.long)
    mask = torch.ones(2, past_len + prefix_len + 1, dtype=torch.long)
    past_names = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]

    with tempfile.TemporaryDirectory(dir=out) as tmp_v, tempfile.TemporaryDirectory(dir=out) as tmp_d:
        with torch.no_grad():
            _torch_export(vision, (pixels,), Path(tmp_v) / "vision.onnx", input_names=["pixel_values"],
                          output_names=["query_embeds"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "query_embeds": {0: "batch"}})
            axes = {"prefix_embeds": {0: "batch", 1: "prefix"}, "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch"}}
            axes.update({n: {0: "batch", 2: "past"} for n in past_names})
            axes.update({n: {0: "batch", 2: "total"} for n in present_names})
            _torch_export(decoder, (prefix, ids, mask, *past), Path(tmp_d) / "decoder.onnx",
                          input_names=["prefix_embeds", "input_ids", "attention_mask", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes)
        files["vision"] = _finalize(Path(tmp_v), "vision.onnx", out / "vision.onnx", external_data)
        files["decoder"] = _finalize(Path(tmp_d), "decoder.onnx", out / "decoder.onnx", external_data)

    if verify:
        _verify_captioner(vision, decoder, out / "vision.onnx", out / "decoder.onnx", pixels, prefix, ids, mask,
                          past, past_names)
    if int8:
        for part in ("vision", "decoder"):
            external = len(files[part]) > 1
            files[f"{part}_int8"] = _quantize(out / f"{part}.onnx", out / f"{part}.int8.onnx", external)

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True, local_files_only=True)
    except Exception as exc:
        raise ExportError(f"cannot load the tokenizer of {model_dir}: {type(exc).__name__}: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{model_dir}: the tokenizer has no fast (tokenizers) form; the edge needs tokenizer.json")
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    files["tokenizer"] = [out / "tokenizer.json"]

    gcfg = model.generation_config
    eos = gcfg.eos_token_id if gcfg.eos_token_id is not None else text_cfg.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    pad = gcfg.pad_token_id if gcfg.pad_token_id is not None else text_cfg.pad_token_id
    bos = gcfg.bos_token_id if gcfg.bos_token_id is not None else text_cfg.bos_token_id
    default_len = max_new_tokens or getattr(gcfg, "max_new_tokens", None) or 30
    entry = {
        "kind": "blip2-opt",
        "files": {k: _rel(v, root) for k, v in files.items()},
        "graphs": {"vision": f"{subdir}/vision.onnx", "decoder": f"{subdir}/decoder.onnx",
                   **({"vision_int8": f"{subdir}/vision.int8.onnx", "decoder_int8": f"{subdir}/decoder.int8.onnx"}
                      if int8 else {})},
        "tokenizer": f"{subdir}/tokenizer.json",
        "preprocess": proc,
        "num_query_tokens": int(model.config.num_query_tokens),
        "bos_token_id": int(bos),
        "eos_token_ids": eos_ids,
        "pad_token_id": int(pad if pad is not None else eos_ids[0]),
        "num_layers": int(n_layers),
        "num_heads": int(n_heads),
        "head_dim": int(head_dim),
        "embed_dim": int(embed_dim),
        "vocab_size": int(text_cfg.vocab_size),
        "max_new_tokens": int(default_len),
        "clean_up_tokenization_spaces": bool(getattr(tok, "clean_up_tokenization_spaces", False)),
        "source": {"model_type": "blip-2", "name_or_path": Path(model_dir).name},
    }
    return entry


def _verify_captioner(vision, decoder, vision_path, decoder_path, pixels, prefix, ids, mask, past, past_names):
    import torch

    with torch.no_grad():
        want_q = vision(pixels).numpy()
        want = [t.numpy() for t in decoder(prefix, ids, mask, *past)]
        # the first step as the edge runs it: empty cache
        empty = [p[:, :, :0] for p in past]
        mask0 = torch.ones(2, prefix.shape[1] + 1, dtype=torch.long)
        want0 = decoder(prefix, ids, mask0, *empty)[0].numpy()
    got_q = _ort_session(vision_path).run(None, {"pixel_values": pixels.numpy()})[0]
    _check_close("captioner vision graph", got_q, want_q, 1e-3 * max(1.0, float(np.abs(want_q).max())))
    sess = _ort_session(decoder_path)
    feed = {"prefix_embeds": prefix.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feed.update({n: p.numpy() for n, p in zip(past_names, past)})
    got = sess.run(None, feed)
    scale = max(1.0, float(np.abs(want[0]).max()))
    for name, g, w_ in zip(["logits", *[n.replace("past_key_values", "present") for n in past_names]], got, want):
        _check_close(f"captioner decoder {name}", g, w_, 1e-3 * scale)
    feed0 = dict(feed, attention_mask=mask0.numpy(), **{n: p.numpy() for n, p in zip(past_names, empty)})
    _check_close("captioner decoder first step", sess.run(["logits"], feed0)[0], want0, 1e-3 * scale)


# ---- VAE encoder ----------------------------------------------------------------------------------

def load_vae(model_dir: str | os.PathLike):
    """``AutoencoderKL`` from a Stable Diffusion directory (its ``vae/``) or a VAE directory."""
    from diffusers import AutoencoderKL

    path = _require_dir(model_dir, "VAE")
    sub = path / "vae" if (path / "vae" / "config.json").exists() else path
    if not (sub / "config.json").exists():
        raise ExportError(f"{path} has neither vae/config.json nor config.json; expected a Stable Diffusion "
                          f"pipeline directory or its vae/ folder")
    try:
        return AutoencoderKL.from_pretrained(sub, local_files_only=True).eval()
    except Exception as exc:
        raise ExportError(f"cannot load the VAE from {sub}: {type(exc).__name__}: {exc}") from exc


def export_vae_encoder(model_dir: str | os.PathLike, bundle_root: str | os.PathLike, *, subdir: str = "vae",
                       external_data: str = "auto", verify: bool = True, vae=None) -> dict[str, Any]:
    """Export the VAE encoder (posterior mean and std) into ``bundle_root/subdir``."""
    import torch

    vae = vae if vae is not None else load_vae(model_dir)
    root = Path(bundle_root)
    out = root / subdir
    out.mkdir(parents=True, exist_ok=True)

    class Encoder(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.vae = v

        def forward(self, sample):
            dist = self.vae.encode(sample).latent_dist
            return dist.mean, dist.std

    enc = Encoder(vae).eval()
    size = int(vae.config.sample_size if isinstance(vae.config.sample_size, int) else vae.config.sample_size[0])
    channels = int(vae.config.in_channels)
    sample = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with tempfile.TemporaryDirectory(dir=out) as tmp, torch.no_grad():
        axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "mean": {0: "batch", 2: "lh", 3: "lw"},
                "std": {0: "batch", 2: "lh", 3: "lw"}}
        _torch_export(enc, (sample,), Path(tmp) / "encoder.onnx", input_names=["sample"],
                      output_names=["mean", "std"], dynamic_axes=axes)
        files = _finalize(Path(tmp), "encoder.onnx", out / "encoder.onnx", external_data)
    if verify:
        _check_graph("VAE encoder", enc, out / "encoder.onnx", "sample", sample, ("mean", "std"))
    return {
        "kind": "sd-vae-encoder",
        "files": {"encoder": _rel(files, root)},
        "graphs": {"encoder": f"{subdir}/encoder.onnx"},
        "input": "RGB float32 NCHW in [-1, 1]",
        "sample_size": size,
        "in_channels": channels,
        "latent_channels": int(vae.config.latent_channels),
        "scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215)),
        "downsample": 2 ** (len(vae.config.block_out_channels) - 1),
    }


# ---- classifier / feature extractor -----------------------------------------------------------------

def load_classifier(model_dir: str | os.PathLike):
    from transformers import AutoModelForImageClassification

    path = _require_dir(model_dir, "classifier")
    try:
        return AutoModelForImageClassification.from_pretrained(path, local_files_only=True).eval()
    except Exception as exc:
        raise ExportError(f"cannot load an image classifier from {path}: {type(exc).__name__}: {exc}") from exc


def count_op(path: str | os.PathLike, op_type: str) -> int:
    """How many nodes of ``op_type`` the ONNX graph at ``path`` has (e.g. "BatchNormalization")."""
    import onnx

    return sum(n.op_type == op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def export_classifier(model_dir: str | os.PathLike | None, bundle_root: str | os.PathLike, *,
                      subdir: str = "classifier", image_size: int = 224, external_data: str = "auto",
                      verify: bool = True, model=None) -> dict[str, Any]:
    """Export an image classifier (transformers, e.g. ResNet) with BatchNorm kept; logits and features.

    The graph is the global model's (``server_daemon.training.export.write_classifier_graph``)
    with the pooled ``features`` as a second output.
    """
    from ..training.export import has_batchnorm, write_classifier_graph

    model = model if model is not None else load_classifier(model_dir)
    model.eval()
    root = Path(bundle_root)
    out = root / subdir
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        wrapper, pixels = write_classifier_graph(model, Path(tmp) / "model.onnx", image_size, features=True)
        files = _finalize(Path(tmp), "model.onnx", out / "model.onnx", external_data)
    n_bn = count_op(out / "model.onnx", "BatchNormalization")
    if has_batchnorm(model) and n_bn == 0:
        raise ExportError("the classifier lost its BatchNorm layers in export (folded into Conv)")
    if verify:
        _check_graph("classifier", wrapper, out / "model.onnx", "pixel_values", pixels, ("logits", "features"))
    labels = getattr(model.config, "id2label", None) or {}
    return {
        "kind": "image-classifier",
        "files": {"model": _rel(files, root)},
        "graphs": {"model": f"{subdir}/model.onnx"},
        "input": "RGB float32 NCHW in [0, 1]; ImageNet normalisation is inside the graph",
        "image_size": int(image_size),
        "labels": [str(labels[i]) for i in sorted(labels)] if labels else [],
        "batchnorm_nodes": int(n_bn),
        "arch": type(model).__name__,
    }
