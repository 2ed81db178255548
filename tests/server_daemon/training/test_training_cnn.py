"""The benchmark's classifier (McMahan et al.'s CNN), the label-keeping augmentations and the recipe."""
from __future__ import annotations

import pytest
import torch

from server_daemon.ingest.config import AUGMENTATIONS, TRAINING_ARCHS, TrainingRecipe
from server_daemon.lab.recipe import benchmark_recipe
from server_daemon.training import models
from server_daemon.training.data import augment_batch, random_shift_flip
from server_daemon.training.export import export_onnx, read_metadata, run_onnx
from server_daemon.training.train import lr_at, new_classifier

LABELS = ["a", "b", "c"]


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cnn_has_the_papers_size_and_no_normalisation_layers():
    # McMahan et al. (2017): 1,663,370 parameters for 28 px grey MNIST, 10 classes
    assert _params(models.build_cnn(10, image_size=28, num_channels=1)) == 1_663_370
    cnn = models.build_cnn(10, image_size=32)
    assert _params(cnn) == 2_156_490
    assert not any(isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)) for m in cnn.modules())
    assert cnn(pixel_values=torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
    with pytest.raises(ValueError, match="divisible by 4"):
        models.build_cnn(10, image_size=30)


def test_every_config_arch_builds_and_the_lists_agree():
    assert set(models.ARCHS) == set(TRAINING_ARCHS)
    for arch in models.ARCHS:
        model = new_classifier(3, TrainingRecipe(arch=arch, image_size=32), LABELS)
        assert model(pixel_values=torch.zeros(1, 3, 32, 32)).logits.shape == (1, 3)
    with pytest.raises(ValueError, match="unknown classifier arch"):
        models.build_classifier("vgg", 3)


def test_cnn_is_seeded_saves_loads_and_exports(tmp_path):
    a, b = models.build_cnn(3, LABELS, seed=4), models.build_cnn(3, LABELS, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(models.build_cnn(3, LABELS, seed=5).parameters()))
    a.save_pretrained(tmp_path / "m")
    back = models.load_classifier(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(back(pixel_values=x).logits, a(pixel_values=x).logits)
    assert back.config.id2label == {0: "a", 1: "b", 2: "c"}
    path = export_onnx(a, tmp_path / "m.onnx", 32, LABELS, arch="cnn")  # verify=True: ORT matches torch
    assert read_metadata(path)["osfl.arch"] == "cnn"
    assert run_onnx(path, x.numpy()).shape == (2, 3)


def _asymmetric(n=8, size=16) -> torch.Tensor:
    img = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    img[:, :, 4:12, 2:6] = 255  # a bar on the left half
    return img


def test_shift_moves_by_whole_pixels_and_only_shift_flip_mirrors():
    x = _asymmetric(64)
    for name in AUGMENTATIONS:
        out = augment_batch(x, 16, torch.Generator().manual_seed(0), name)
        assert out.shape == (64, 3, 16, 16) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        again = augment_batch(x, 16, torch.Generator().manual_seed(0), name)
        assert torch.equal(out, again)  # the generator decides everything
    def mirrored(out):  # the bar's centre of mass lies in the right half
        cols = out[:, 0].sum(1)
        centre = (cols * torch.arange(16)).sum(1) / cols.sum(1).clamp(min=1e-6)
        return centre > 8
    shifted = random_shift_flip(x, 16, torch.Generator().manual_seed(1), flip=False)
    assert not mirrored(shifted).any()  # at most 2 px of shift: the bar stays left
    assert (shifted.sum((1, 2, 3)) > 0).all()
    flipped = random_shift_flip(x, 16, torch.Generator().manual_seed(1), flip=True)
    assert 10 < int(mirrored(flipped).sum()) < 54


def test_benchmark_recipe_flips_clothes_but_not_digits_and_is_valid():
    assert benchmark_recipe("fashion-mnist").augmentation == "shift-flip"
    for digits in ("mnist", "optdigits", "mnist+optdigits"):
        assert benchmark_recipe(digits).augmentation == "shift"
    r = benchmark_recipe("fashion-mnist", seed=3, epochs=7)
    assert r.arch == "cnn" and r.seed == 3 and r.epochs == 7 and r.problem() is None


def test_recipe_checks_the_new_keys_and_the_cosine_schedule():
    assert "augmentation" in TrainingRecipe(augmentation="flip-all").problem()
    assert "lr_schedule" in TrainingRecipe(lr_schedule="step").problem()
    assert "divisible by 4" in TrainingRecipe(arch="cnn", image_size=30).problem()
    r = TrainingRecipe(lr=0.1, epochs=4, lr_schedule="cosine")
    assert [round(lr_at(r, e), 4) for e in range(4)] == [0.1, 0.0854, 0.05, 0.0146]
    assert lr_at(r.replace(lr_schedule="constant"), 3) == 0.1
