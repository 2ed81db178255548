"""Caption a site's images on its CPU: BLIP-2 exported to ONNX, run by onnxruntime, no torch.

The bundle's captioner (``server_daemon/edge_models/export.py`` writes it) is two graphs and a
tokenizer:

1. ``vision``: normalised pixels -> the query embeddings BLIP-2 feeds its language model;
2. ``decoder``: one OPT step with a KV cache. The first step gets the query embeddings as a
   prefix, the BOS token and an empty cache; each later step one token and the cache it returned,
   so a caption of n tokens costs n small steps instead of n ever longer passes;
3. ``tokenizer.json`` for the ``tokenizers`` library (ids -> text).

Decoding is greedy, as transformers' ``generate()`` does by default: take the arg-max token,
stop a row at an end token (it then gets the pad token, as in transformers), stop the batch when
every row is done or after ``max_new_tokens``. On the tiny test model the tokens equal
``generate()``'s. Images are resized and normalised with Pillow and numpy exactly as the model's
``BlipImageProcessor`` does (settings from the bundle manifest).

``threads`` sets onnxruntime's intra-op threads (default: onnxruntime's choice, all cores);
``batch_size`` images go through the graphs together; ``precision`` picks the fp32 graphs or the
int8 ones when the bundle has them ("auto" prefers int8); ``low_memory`` turns off onnxruntime's
pre-packing of weights, so memory-mapped weights (external data) are not copied, for machines
where memory is tighter than time.
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .bundle import Bundle
from .errors import BundleError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8")

#: transformers' ``clean_up_tokenization`` replacements, in its order
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
_SPACES = re.compile(r"\s+")


def tidy_caption(text: str, max_chars: int = 512) -> str:
    """Caption text fit for a payload: no control or replacement characters, single spaces, trimmed."""
    kept = []
    for ch in unicodedata.normalize("NFC", text):
        cat = unicodedata.category(ch)
        if ch == "\ufffd" or cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(" ")
        elif cat in ("Zl", "Zp"):
            kept.append(" ")
        else:
            kept.append(ch)
    out = _SPACES.sub(" ", "".join(kept)).strip()
    return out[:max_chars].rstrip()


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB image from an image file or a DICOM file (windowed to 8 bits)."""
    from .dicom import is_dicom_file, read_dicom_image

    if is_dicom_file(path):
        return read_dicom_image(path).convert("RGB")
    from .dataset import open_image

    return open_image(path, "RGB")


class Captioner:
    """Greedy BLIP-2 captioning on onnxruntime from an installed bundle (``edge_client.bundle``)."""

    def __init__(self, bundle: Bundle, *, threads: int | None = None, batch_size: int = 8,
                 precision: str = "auto", max_new_tokens: int | None = None, low_memory: bool = False):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1; got {threads}")
        entry = bundle.model("captioner")
        if entry.get("kind") != "blip2-opt":
            raise BundleError(f"the bundle's captioner is a {entry.get('kind')!r}; this osfl-edge runs 'blip2-opt'",
                              fix="update osfl-edge, or ask the operator for a BLIP-2 (OPT) bundle")
        graphs = entry["graphs"]
        has_int8 = "vision_int8" in graphs and "decoder_int8" in graphs
        if precision == "int8" and not has_int8:
            raise BundleError(f"edge model bundle {bundle.version} has no int8 captioner",
                              fix="use --precision fp32, or ask the operator to export with --int8")
        self.precision = "int8" if (precision == "int8" or (precision == "auto" and has_int8)) else "fp32"
        suffix = "_int8" if self.precision == "int8" else ""
        self.entry = entry
        self.batch_size = batch_size
        self.max_new_tokens = int(max_new_tokens or entry["max_new_tokens"])
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if low_memory:
            # no pre-packed copies of the weights: with external data (memory-mapped) the weights
            # then cost their file size once; matrix products get somewhat slower
            opts.add_session_config_entry("session.disable_prepacking", "1")
        providers = ["CPUExecutionProvider"]
        try:
            self.vision = ort.InferenceSession(str(bundle.file(graphs["vision" + suffix])), opts, providers=providers)
            self.decoder = ort.InferenceSession(str(bundle.file(graphs["decoder" + suffix])), opts, providers=providers)
            self.tokenizer = Tokenizer.from_file(str(bundle.file(entry["tokenizer"])))
        except Exception as exc:
            raise BundleError(f"cannot load the captioner of bundle {bundle.version}: {type(exc).__name__}: {exc}")
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(entry["num_layers"]) for kv in ("key", "value")]
        self.eos = np.array(entry["eos_token_ids"], dtype=np.int64)
        pre = entry["preprocess"]
        self.size = (int(pre["image_size"][1]), int(pre["image_size"][0]))  # PIL wants (width, height)
        self.resample = int(pre.get("resample", 3))
        self.rescale = float(pre.get("rescale_factor", 1 / 255))
        self.mean = np.asarray(pre["image_mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(pre["image_std"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.normalize = bool(pre.get("do_normalize", True))

    # ---- the three steps ------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB, resized, rescaled and normalised as ``BlipImageProcessor``: (B, 3, H, W) float32."""
        arrays = []
        for im in images:
            im = im.convert("RGB") if im.mode != "RGB" else im
            arrays.append(np.asarray(im.resize(self.size, resample=self.resample), dtype=np.float32))
        x = np.stack(arrays).transpose(0, 3, 1, 2) * np.float32(self.rescale)
        if self.normalize:
            x = (x - self.mean) / self.std
        return np.ascontiguousarray(x, dtype=np.float32)

    def generate_ids(self, pixel_values: np.ndarray, max_new_tokens: int | None = None) -> np.ndarray:
        """Greedy token ids (B, T) after the prompt; rows that ended are padded with the pad token."""
        steps = int(max_new_tokens or self.max_new_tokens)
        batch = pixel_values.shape[0]
        prefix = self.vision.run(["query_embeds"], {"pixel_values": pixel_values.astype(np.float32)})[0]
        e = self.entry
        past = {n: np.zeros((batch, e["num_heads"], 0, e["head_dim"]), dtype=np.float32) for n in self.past_names}
        ids = np.full((batch, 1), e["bos_token_id"], dtype=np.int64)
        total = prefix.shape[1] + 1
        empty = np.zeros((batch, 0, prefix.shape[2]), dtype=np.float32)
        done = np.zeros(batch, dtype=bool)
        out: list[np.ndarray] = []
        for _ in range(steps):
            feed = {"prefix_embeds": prefix, "input_ids": ids, "attention_mask": np.ones((batch, total), np.int64)}
            feed.update(past)
            logits, *present = self.decoder.run(None, feed)
            nxt = logits.argmax(axis=-1).astype(np.int64)
            nxt = np.where(done, e["pad_token_id"], nxt)
            out.append(nxt)
            done |= np.isin(nxt, self.eos)
            if done.all():
                break
            past = dict(zip(self.past_names, present))
            prefix, ids, total = empty, nxt[:, None], total + 1
        return np.stack(out, axis=1) if out else np.zeros((batch, 0), dtype=np.int64)

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Token ids -> text as transformers' ``batch_decode(skip_special_tokens=True)``, stripped."""
        texts = self.tokenizer.decode_batch([[int(t) for t in row] for row in ids], skip_special_tokens=True)
        if self.entry.get("clean_up_tokenization_spaces"):
            cleaned = []
            for t in texts:
                for a, b in _CLEANUPS:
                    t = t.replace(a, b)
                cleaned.append(t)
            texts = cleaned
        return [t.strip() for t in texts]

    # ---- whole images -----------------------------------------------------------------------------

    def caption_images(self, images: Sequence[Image.Image]) -> list[str]:
        """Captions of ``images`` (one batch), tidied for a payload (``tidy_caption``)."""
        if not images:
            return []
        return [tidy_caption(t) for t in self.decode(self.generate_ids(self.preprocess(images)))]

    def caption_files(self, paths: Iterable[str | os.PathLike], *, progress: bool = False,
                      loader: Callable[[Path], Image.Image] = load_image,
                      on_batch: Callable[[int, int], None] | None = None) -> list[str]:
        """Captions of the image files at ``paths`` in order, ``batch_size`` at a time, with a tqdm bar."""
        paths = [Path(p) for p in paths]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc="captioning", unit="img")
        out: list[str] = []
        try:
            for start in range(0, len(paths), self.batch_size):
                chunk = paths[start:start + self.batch_size]
                out += self.caption_images([loader(p) for p in chunk])
                if bar is not None:
                    bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(len(out), len(paths))
        finally:
            if bar is not None:
                bar.close()
        return out

    def describe(self) -> dict[str, Any]:
        """What made the captions (goes into the payload's params)."""
        return {"captioner": self.entry.get("kind"), "precision": self.precision,
                "max_new_tokens": self.max_new_tokens}
