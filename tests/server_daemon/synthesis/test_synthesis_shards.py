"""Shards + manifests on the tiny pipeline: a killed run resumes, regenerates only the broken
shard, and ends with the same images as an uninterrupted run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from server_daemon.methods import plan_from_class_prompts
from server_daemon.synthesis import GenerationParams, ShardError, read_manifest, run_synthesis, write_sample_grid
from server_daemon.synthesis.shards import MANIFEST, read_labels

LABELS = ["cat", "dog", "car"]
FIELDS = {"file", "prompt", "negative", "seed", "method", "site", "label", "label_index", "index", "shard",
          "sha256", "width", "height"}


class Counting:
    """Wraps the engine and counts the images it is asked for."""

    def __init__(self, engine):
        self.engine, self.images = engine, 0

    def generate_specs(self, specs, params):
        self.images += len(specs)
        return self.engine.generate_specs(specs, params)


@pytest.fixture(scope="module")
def plan():
    # 12 images, shards of 5 (5, 5, 2), batches of 3: shards and batches do not line up
    return plan_from_class_prompts("fed", LABELS, {"siteA": None, "siteB": "quickdraw"}, images_per_class=4,
                                   params=GenerationParams(steps=2, batch_size=3))


@pytest.fixture(scope="module")
def clean(plan, _shared_engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "syn"
    result = run_synthesis(plan, _shared_engine, out, shard_size=5, progress=False)
    assert (result.generated, result.shards, result.shards_skipped) == (12, 3, 0)
    return out


def pixels(root):
    _, records = read_manifest(root)
    return {r["file"]: np.asarray(Image.open(root / r["file"])) for r in records}


def test_layout_and_manifest(clean, plan):
    root, records = read_manifest(clean)
    assert root == clean and len(records) == 12
    assert all(FIELDS <= set(r) for r in records)
    assert [r["seed"] for r in records] == [s.seed for s in plan.images]
    assert sorted(p.name for p in clean.iterdir()) == [
        "dataset.json", "manifest.jsonl", "plan.json", "shard_00000", "shard_00001", "shard_00002"]
    assert len(list((clean / "shard_00002").glob("*.png"))) == 2
    summary = json.loads((clean / "dataset.json").read_text())
    assert summary["counts"] == [4, 4, 4] and summary["complete"] and summary["fingerprint"] == plan.fingerprint()
    assert read_labels(clean) == LABELS
    assert {r["site"] for r in records} == {"siteA", "siteB"}
    assert {r["prompt"] for r in records if r["site"] == "siteB" and r["label"] == "car"} == {
        "a black and white drawing of car"}
    first = Image.open(clean / records[0]["file"])
    assert first.size == (32, 32) and first.mode == "RGB"


def test_second_run_skips_everything(clean, plan, engine):
    counting = Counting(engine)
    result = run_synthesis(plan, counting, clean, shard_size=5, progress=False)
    assert counting.images == 0 and result.shards_skipped == 3 and result.generated == 0


@pytest.mark.parametrize("kill", ["manifest_missing", "partial_dir", "corrupt_png", "png_missing", "short_manifest"])
def test_resume_regenerates_only_the_broken_shard(clean, plan, engine, tmp_path, kill):
    out = tmp_path / "syn"
    shutil.copytree(clean, out)
    (out / MANIFEST).unlink()
    (out / "dataset.json").unlink()
    last = out / "shard_00002"
    if kill == "manifest_missing":  # killed after the PNGs, before the manifest
        (last / MANIFEST).unlink()
    elif kill == "partial_dir":  # killed while the shard was being built
        last.rename(out / "shard_00002.partial")
        (out / "shard_00002.partial" / MANIFEST).unlink()
    elif kill == "corrupt_png":
        png = sorted(last.glob("*.png"))[0]
        png.write_bytes(png.read_bytes()[:-20])
    elif kill == "png_missing":
        sorted(last.glob("*.png"))[1].unlink()
    elif kill == "short_manifest":
        lines = (last / MANIFEST).read_text().splitlines(keepends=True)
        (last / MANIFEST).write_text(lines[0])
    counting = Counting(engine)
    progress = []
    result = run_synthesis(plan, counting, out, shard_size=5, progress=False,
                           on_progress=lambda d, t: progress.append((d, t)))
    assert counting.images == 2 and result.generated == 2 and result.shards_skipped == 2
    assert progress[0] == (10, 12) and progress[-1] == (12, 12)
    assert not (out / "shard_00002.partial").exists()
    a, b = pixels(clean), pixels(out)
    assert a.keys() == b.keys()
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])
    assert (out / MANIFEST).read_text() == (clean / MANIFEST).read_text()


def test_kill_in_the_first_shard_keeps_later_shards(clean, plan, engine, tmp_path):
    out = tmp_path / "syn"
    shutil.copytree(clean, out)
    (out / "shard_00000" / MANIFEST).unlink()
    counting = Counting(engine)
    run_synthesis(plan, counting, out, shard_size=5, progress=False)
    assert counting.images == 5


def test_any_image_can_be_regenerated_alone(clean, engine):
    _, records = read_manifest(clean)
    rec = records[7]
    alone = engine.generate([rec["prompt"]], negative_prompts=[rec["negative"]], seeds=[rec["seed"]], steps=2,
                            guidance=2.0)
    stored = np.asarray(Image.open(clean / rec["file"]))
    assert np.abs(alone[0].astype(int) - stored).max() <= 1


def test_progress_and_partial_runs(plan, engine, tmp_path):
    out = tmp_path / "syn"
    progress = []
    result = run_synthesis(plan, engine, out, shard_size=5, progress=False, shards=[1],
                           on_progress=lambda d, t: progress.append(d))
    assert result.generated == 5 and not (out / MANIFEST).exists()
    assert progress == [0, 3, 5]
    _, records = read_manifest(out)  # finished shards are readable before the job ends
    assert len(records) == 5
    result = run_synthesis(plan, engine, out, shard_size=5, progress=False)
    assert result.generated == 7 and (out / MANIFEST).exists()


def test_a_different_plan_is_refused(clean, tmp_path):
    other = plan_from_class_prompts("fed", LABELS, {"siteA": None}, images_per_class=2,
                                    params=GenerationParams(steps=2))
    with pytest.raises(ShardError, match="another synthesis plan"):
        run_synthesis(other, object(), clean, shard_size=5, progress=False)
    with pytest.raises(ShardError, match="shard_size"):
        run_synthesis(other, object(), tmp_path / "x", shard_size=0, progress=False)


def test_save_size_resizes(engine, tmp_path):
    plan = plan_from_class_prompts("fed", ["cat"], {"s": None}, images_per_class=2,
                                   params=GenerationParams(steps=2, save_size=16))
    run_synthesis(plan, engine, tmp_path / "syn", shard_size=8, progress=False)
    _, records = read_manifest(tmp_path / "syn")
    assert {(r["width"], r["height"]) for r in records} == {(16, 16)}
    assert Image.open(tmp_path / "syn" / records[0]["file"]).size == (16, 16)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ShardError, match="neither"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no finished synthesis shard"):
        read_manifest(tmp_path / "empty")


def test_sample_grid(clean, tmp_path):
    out = write_sample_grid(clean, tmp_path / "report" / "samples.png", per_class=3, thumb=20)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (140 + 3 * 24 + 4, 3 * 24 + 4)
    # an extra label with no images gets an empty row
    out2 = write_sample_grid(clean / MANIFEST, tmp_path / "g2.png", per_class=2, thumb=16,
                             labels=LABELS + ["bus"])
    assert Image.open(out2).size[1] == 4 * 20 + 4
