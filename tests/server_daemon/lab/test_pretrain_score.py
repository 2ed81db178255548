"""The generator score of pretrain-tiny: a CNN trained on generated images, scored on real test images.

A tiny random pipeline (server_daemon/lab/tinymodels.py) stands in for a pretrained one: its
images are noise, so only the plumbing, the determinism and osfl_pretrain.json are checked, not
the number.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from server_daemon.lab import generator_score as gs
from server_daemon.lab import pretrain
from server_daemon.lab.simulate import datasets as ds

torch.set_num_threads(1)
FAST = dict(steps=2, epochs=1, threads=1, progress=False)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from server_daemon.lab.tinymodels import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("sd") / "sd", seed=0)


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != gs.PRETRAIN_JSON:
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_generator_score_trains_on_generated_images_and_scores_on_the_real_test_set(tiny_sd):
    score = gs.generator_score(tiny_sd, "fashion-mnist-subset", per_class=3, batch=16, **FAST)
    assert 0.0 <= score["accuracy"] <= 1.0
    assert len(score["per_class"]) == len(ds.FASHION_CLASSES) == 10
    assert score["test_images"] == len(ds.fashion_mnist_subset("test")) == 3000
    assert score["test_set"] == "fashion-mnist-subset-test"
    assert score["per_class_images"] == 3 and score["generated_images"] == 30
    assert (score["steps"], score["guidance"], score["seed"], score["epochs"]) == (2, 3.0, 0, 1)
    assert score["best_epoch"] == 1 and set(score["seconds"]) == {"generate", "train"}
    assert score["prompt"] == "{class}, real world images, high resolution"  # the class-prompts template
    small = ds.fashion_mnist_subset("test").subset(np.arange(0, 3000, 10), "every-tenth")
    again = gs.generator_score(tiny_sd, "fashion-mnist-subset", per_class=3, batch=16, test_set=small,
                               compare={"tiny": {"arch": "tiny", "augment": False, "epochs": 2}}, **FAST)
    assert again["images_sha256"] == score["images_sha256"]  # same arguments: the same images
    assert again["test_images"] == 300 and again["test_set"] == "every-tenth"
    other = again["compare"]["tiny"]  # another recipe, trained on the same generated images
    assert 0.0 <= other["accuracy"] <= 1.0 and other["recipe"]["arch"] == "tiny" and other["epochs"] == 2
    assert "compare" not in score
    assert "3,000 real fashion-mnist-subset test images" in gs.describe(score)


def test_generated_images_are_seeded_per_class_and_index(tiny_sd):
    from server_daemon.synthesis.engine import load_engine

    engine = load_engine(tiny_sd, device="cpu")
    classes = ["t-shirt", "ankle_boot"]
    a, ya = gs.generate_class_images(engine, classes, 2, seed=0, steps=2, batch=4, progress=False)
    b, _ = gs.generate_class_images(engine, classes, 2, seed=0, steps=2, batch=1, progress=False)
    c, _ = gs.generate_class_images(engine, classes, 2, seed=1, steps=2, batch=4, progress=False)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8 and ya.tolist() == [0, 0, 1, 1]
    assert np.array_equal(a, gs.generate_class_images(engine, classes, 2, seed=0, steps=2, batch=4,
                                                      progress=False)[0])
    # another batching changes only float rounding: at most one grey level per pixel
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(a.astype(int) - c.astype(int)).max() > 10
    assert len({gs.image_seed(0, li, k) for li in range(10) for k in range(300)}) == 3000


def test_holdout_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 100, 100, 100, 100, 91])
    keep, held = gs.holdout_split(labels, 100)
    assert len(held) == 100 and len(keep) + len(held) == len(labels) and not set(keep) & set(held)
    assert np.bincount(labels[held]).tolist() == [10] * 9 + [10]
    again = gs.holdout_split(labels, 100)
    assert np.array_equal(held, again[1])
    with pytest.raises(ValueError, match="holdout"):
        gs.holdout_split(labels, len(labels))


def test_split_defaults_and_the_holdout_is_kept_out_of_pretraining(tmp_path):
    assert pretrain.PretrainConfig().split == "pretrain-half"
    assert pretrain.PretrainConfig(dataset="fashion-mnist-subset").split == "all"
    assert pretrain.PretrainConfig(dataset="mnist").split == "holdout"
    with pytest.raises(ValueError, match="pretrain-half"):
        pretrain.PretrainConfig(dataset="mnist", split="pretrain-half")
    with pytest.raises(ValueError, match="test set of its own"):
        pretrain.PretrainConfig(dataset="fashion-mnist", split="holdout")
    # an RGB ImageFolder of 3 classes x 8 distinct images (28 px)
    root = tmp_path / "folder"
    for ci, name in enumerate(["a", "b", "c"]):
        (root / name).mkdir(parents=True)
        for k in range(8):
            Image.fromarray(np.full((28, 28, 3), 10 * (ci * 8 + k), np.uint8)).save(root / name / f"{k}.png")
    dataset = f"imagefolder:{root}"
    cfg = pretrain.PretrainConfig(dataset=dataset, holdout=6)
    images, labels, classes, _ = pretrain.load_pretrain_images(cfg)
    test = gs.score_test_set(dataset, holdout=6)
    assert images.shape == (18, 32, 32) and test.images.shape == (6, 32, 32)
    assert test.counts() == [2, 2, 2] and list(classes) == list(test.classes)
    assert not {int(v) for v in images[:, 16, 16]} & {int(v) for v in test.images[:, 16, 16]}
    assert pretrain.PretrainConfig(dataset=dataset, split="all").split == "all"


def test_pretraining_saw_test_set():
    assert gs.pretraining_saw_test_set({"dataset": "fashion-mnist", "split": "all"}, "fashion-mnist") is False
    assert gs.pretraining_saw_test_set({"dataset": "mnist", "split": "all"}, "mnist") is True
    assert gs.pretraining_saw_test_set({"dataset": "mnist", "split": "holdout", "holdout": 1000}, "mnist") is False
    assert gs.pretraining_saw_test_set({"dataset": "mnist", "split": "holdout", "holdout": 500}, "mnist") is True
    assert gs.pretraining_saw_test_set(None, "mnist") is None


def test_score_only_updates_osfl_pretrain_json_without_training(tiny_sd, tmp_path, monkeypatch):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_sd, sd)
    meta = {"data": "fashion-mnist-subset-train", "classes": list(ds.FASHION_CLASSES),
            "config": {"dataset": "fashion-mnist-subset", "split": "all"}, "unet": {"steps": 7}}
    (sd / gs.PRETRAIN_JSON).write_text(json.dumps(meta))
    before = _tree_digest(sd)

    def no_training(*args, **kwargs):
        raise AssertionError("--score-only must not train")

    monkeypatch.setattr(pretrain, "pretrain_tiny", no_training)
    args = [str(sd), "--score-only", "--score-per-class", "2", "--score-epochs", "1", "--threads", "1"]
    result = CliRunner().invoke(pretrain.command, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "generator score: " in result.output and "3,000 real fashion-mnist-subset test images" in result.output
    saved = json.loads((sd / gs.PRETRAIN_JSON).read_text())
    assert saved["unet"] == {"steps": 7} and saved["config"] == meta["config"]  # the rest is kept
    score = saved["score"]
    assert score["dataset"] == "fashion-mnist-subset" and score["test_images"] == 3000
    assert score["per_class_images"] == 2 and score["steps"] == 20 and score["test_seen_in_pretraining"] is False
    assert _tree_digest(sd) == before  # the pipeline itself is untouched
    assert not list(sd.glob(".*.tmp"))


def test_score_only_needs_a_dataset_and_excludes_no_score(tiny_sd, tmp_path):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_sd, sd)
    result = CliRunner().invoke(pretrain.command, [str(sd), "--score-only"])
    assert result.exit_code == 2 and "--dataset" in result.output
    result = CliRunner().invoke(pretrain.command, [str(sd), "--score-only", "--no-score"])
    assert result.exit_code == 2 and "exclude" in result.output
    result = CliRunner().invoke(pretrain.command, [str(tmp_path / "nothing"), "--score-only",
                                                   "--dataset", "fashion-mnist-subset"])
    assert result.exit_code == 1 and "does not exist" in result.output
