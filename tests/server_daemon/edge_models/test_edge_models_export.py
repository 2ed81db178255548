"""Edge model export on tiny seeded models: onnxruntime must give what torch gives.

- BLIP-2: greedy tokens from our onnxruntime loop (``edge_client.captioning``) equal transformers'
  ``generate()`` tokens, the text equals ``batch_decode``, the decoder graph has a KV cache, the
  int8 graphs are quantised, weights can go to ONNX external data;
- VAE encoder: posterior mean and std match torch, at a size other than the traced one;
- classifier: BatchNormalization nodes stay in the graph, logits and features match torch;
- bundle: the manifest lists every file with its sha256; packing is deterministic.
"""
from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from edge_client.bundle import Bundle  # noqa: E402
from edge_client.captioning import Captioner  # noqa: E402
from protocol.bundles import parse_manifest  # noqa: E402
from server_daemon.edge_models.bundle import pack_bundle, write_manifest  # noqa: E402
from server_daemon.edge_models.export import (count_op, export_captioner, export_classifier,  # noqa: E402
                                              export_vae_encoder, load_blip2)
from server_daemon.lab.tiny_edge import write_tiny_blip2  # noqa: E402


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    """The tiny BLIP-2, exported once (fp32 + int8, weights as external data) into a bundle."""
    root = tmp_path_factory.mktemp("blip2")
    src = write_tiny_blip2(root / "src")
    out = root / "bundle"
    entry = export_captioner(src, out, int8=True, external_data="always", max_new_tokens=10)
    manifest = write_manifest(out, "t1", {"captioner": entry})
    return {"src": src, "out": out, "entry": entry, "manifest": manifest, "model": load_blip2(src),
            "bundle": Bundle(out, "t1", manifest)}


def images(n=5, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 36, 3), dtype=np.uint8)) for i in range(n)]


def test_preprocessing_matches_the_blip_image_processor(blip2):
    from transformers import BlipImageProcessor

    cap = Captioner(blip2["bundle"], precision="fp32", threads=1)
    ims = images(3)
    want = BlipImageProcessor.from_pretrained(blip2["src"])(ims, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(cap.preprocess(ims), want, atol=1e-5)


def test_greedy_tokens_equal_transformers_generate(blip2):
    cap = Captioner(blip2["bundle"], precision="fp32", threads=1, batch_size=5)
    pixels = cap.preprocess(images(5))
    with torch.no_grad():
        out = blip2["model"].generate(pixel_values=torch.from_numpy(pixels), max_new_tokens=10)
    prompt = blip2["model"].config.num_query_tokens + 1  # image tokens + BOS
    want = out[:, prompt:].numpy()
    got = cap.generate_ids(pixels, max_new_tokens=10)
    assert got.shape == want.shape and got.shape[1] > 0
    np.testing.assert_array_equal(got, want)
    # the text, too: tokenizers' decode equals transformers' batch_decode
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(blip2["src"])
    assert cap.decode(got) == [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


def test_batches_stop_at_eos_like_generate(blip2):
    """A row that hits EOS is padded afterwards, as generate() pads it."""
    cap = Captioner(blip2["bundle"], precision="fp32", threads=1)
    eos = blip2["entry"]["eos_token_ids"][0]
    pixels = cap.preprocess(images(8, seed=3))
    got = cap.generate_ids(pixels, max_new_tokens=10)
    for row in got:
        hits = np.flatnonzero(row == eos)
        if hits.size:
            assert (row[hits[0] + 1:] == blip2["entry"]["pad_token_id"]).all()


def test_decoder_graph_has_a_kv_cache(blip2):
    dec = ort.InferenceSession(str(blip2["out"] / "captioner" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in dec.get_inputs()}
    outputs = [o.name for o in dec.get_outputs()]
    layers = blip2["entry"]["num_layers"]
    for i in range(layers):
        assert inputs[f"past_key_values.{i}.key"][2] == "past"  # a dynamic cache length
        assert f"present.{i}.value" in outputs
    assert inputs["input_ids"][1] == "tokens" and inputs["prefix_embeds"][1] == "prefix"
    # a step with a cache of 7 positions and one new token gives a cache of 8
    e = blip2["entry"]
    feed = {"prefix_embeds": np.zeros((1, 0, e["embed_dim"]), np.float32), "input_ids": np.array([[5]]),
            "attention_mask": np.ones((1, 8), np.int64)}
    feed.update({f"past_key_values.{i}.{kv}": np.zeros((1, e["num_heads"], 7, e["head_dim"]), np.float32)
                 for i in range(layers) for kv in ("key", "value")})
    res = dec.run(None, feed)
    assert res[0].shape == (1, e["vocab_size"]) and res[1].shape[2] == 8


def test_external_data_and_int8(blip2):
    files = blip2["entry"]["files"]
    assert files["decoder"] == ["captioner/decoder.onnx", "captioner/decoder.onnx.data"]
    assert all(p in blip2["manifest"]["files"] for group in files.values() for p in group)
    proto = onnx.load(str(blip2["out"] / "captioner" / "decoder.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert count_op(blip2["out"] / "captioner" / "decoder.int8.onnx", "MatMulInteger") + \
        count_op(blip2["out"] / "captioner" / "decoder.int8.onnx", "DynamicQuantizeMatMul") > 0
    int8 = Captioner(blip2["bundle"], precision="auto", threads=1)
    assert int8.precision == "int8"
    captions = int8.caption_images(images(2))
    assert len(captions) == 2 and all(isinstance(c, str) and c.isprintable() for c in captions)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    from server_daemon.lab.tinymodels import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("sd") / "sd")


def test_vae_encoder_matches_torch(sd_dir, tmp_path):
    from diffusers import AutoencoderKL

    entry = export_vae_encoder(sd_dir, tmp_path)
    vae = AutoencoderKL.from_pretrained(sd_dir / "vae").eval()
    x = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1  # not the traced size
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    sess = ort.InferenceSession(str(tmp_path / entry["graphs"]["encoder"]), providers=["CPUExecutionProvider"])
    mean, std = sess.run(None, {"sample": x.numpy()})
    np.testing.assert_allclose(mean, dist.mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(std, dist.std.numpy(), atol=1e-4)
    assert entry["scaling_factor"] == vae.config.scaling_factor and entry["latent_channels"] == 4


def test_classifier_keeps_batchnorm_and_matches_torch(tmp_path):
    from server_daemon.training.models import build_resnet

    model = build_resnet(3, "tiny", labels=["a", "b", "c"], seed=1)
    entry = export_classifier(None, tmp_path, image_size=32, model=model)
    path = tmp_path / entry["graphs"]["model"]
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert count_op(path, "BatchNormalization") == n_bn == entry["batchnorm_nodes"] > 0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(pixel_values=(x - mean) / std).logits.numpy()
    logits, feats = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})
    np.testing.assert_allclose(logits, want, atol=1e-4)
    assert feats.shape == (2, model.config.hidden_sizes[-1]) and entry["labels"] == ["a", "b", "c"]


def test_manifest_hashes_every_file_and_packing_is_deterministic(blip2, tmp_path):
    out = blip2["out"]
    raw = (out / "manifest.json").read_bytes()
    m = parse_manifest(raw)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(m["files"]) == on_disk
    for rel, info in m["files"].items():
        data = (out / rel).read_bytes()
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert {"torch", "transformers", "onnx_opset"} <= set(m["versions"])
    a, b = pack_bundle(out, tmp_path / "a.tar"), pack_bundle(out, tmp_path / "b.tar")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and sorted(names[1:]) == on_disk
    assert json.loads(raw)["version"] == "t1"
