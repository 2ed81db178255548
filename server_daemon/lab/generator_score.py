"""The generator score of `osfl-server pretrain-tiny`: one number that judges a text-to-image model.

**The accuracy on real test images of a classifier trained only on images the generator made**
(by default 300 per class, 3,000 for ten classes). It measures what one-shot federated learning
needs from the foundation model: images that are recognisably of the class named in the prompt
and varied enough to train on. A generator that ignores its prompt, or makes one image per class,
scores near chance; real training images of the same number would score higher still, which is
the ceiling to compare with.

How the images are made: the server's own synthesis engine
(:func:`server_daemon.synthesis.engine.load_engine` on the CPU, DPM-Solver, 20 steps, guidance
3.0, negative prompt "", the unconditional prompt the tiny models are trained with), one prompt
per class built by the class-prompts method's function
(:func:`server_daemon.synthesis.prompts.class_prompt`: FGL's
"{class}, real world images, high resolution"), and one seed per image derived from
(``seed``, class, index) with :func:`server_daemon.synthesis.spec.derive_seed` (start noise drawn
on the CPU), so the same arguments give the same images (their SHA-256 is recorded as
``images_sha256``). The batch size is one of those arguments: batching changes only float
rounding (the engine's batch-vs-alone test allows 1e-4), but that can move a pixel by one grey
level, and other CPUs or library versions can do the same.
The images are brought to grey (the channel mean: the models are grey in RGB) and trained on with
the benchmark's recipe (:func:`server_daemon.lab.recipe.benchmark_recipe`, a McMahan CNN at 32 px)
by :func:`server_daemon.lab.simulate.baselines.train_centralized`: the epoch kept is the best on a
held-out 10% of the *generated* images; the real test images only score the result.

The real test images (:func:`score_test_set`):

- ``fashion-mnist``: the official 10,000-image test set (pretraining only ever reads train);
- ``fashion-mnist-subset``: the committed subset's 3,000 test images (for tests and CI);
- any other dataset (``mnist``, ``optdigits``, ``imagefolder:DIR``), which has no test set of its
  own: a seeded, stratified ``holdout`` images (default 1,000, always drawn with seed 0 so every
  model of a dataset is judged on the same images) that ``pretrain-tiny --split holdout`` (its
  default for these datasets) keeps out of pretraining (:func:`holdout_split`).

:func:`score_directory` scores a pipeline directory and stores the result under ``"score"`` in its
``osfl_pretrain.json`` (atomically), noting whether the test images could have been seen in
pretraining (``test_seen_in_pretraining``: e.g. an ``mnist`` model pretrained with ``--split all``).

torch and diffusers are imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: datasets with a test set of their own (never read by pretraining), used as the score's test set
OWN_TEST_SET = ("fashion-mnist", "fashion-mnist-subset")
#: images kept out of pretraining, and scored on, for a dataset without a test set of its own
DEFAULT_HOLDOUT = 1000
#: the held-out images are drawn with this seed whatever the run's seed: one test set per dataset
HOLDOUT_SEED = 0
#: the name that keeps the score's image seeds apart from any federation's (derive_seed's first field)
SEED_NAMESPACE = "osfl-generator-score"
PRETRAIN_JSON = "osfl_pretrain.json"


# --------------------------------------------------------------------------- data

def grey32(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 3) -> grey uint8 (N, H, W), 28 px padded to 32 (the tiny models' size).

    RGB becomes the rounded channel mean: the tiny generators are grey in RGB, so nothing is lost.
    """
    from .simulate import datasets as ds

    if images.ndim == 4:
        images = images.astype(np.float32).mean(-1).round().clip(0, 255).astype(np.uint8)
    return ds.pad32(images)


def holdout_split(labels: np.ndarray, n: int, seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted positions: ``n`` images held out, stratified by class.

    Each class gives its share of ``n`` (largest remainder, ties to the lower class index), drawn
    at random with ``seed``; every class keeps at least one image. The result depends only on the
    labels, ``n`` and ``seed``, so pretraining and the score agree on it without storing indices.
    """
    labels = np.asarray(labels)
    if not 0 < n < len(labels):
        raise ValueError(f"the holdout is {n} images, but the dataset has {len(labels)}; "
                         "give a number between 1 and the dataset size minus one")
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    for k in sorted(range(len(classes)), key=lambda i: (-(quota[i] - take[i]), i))[: n - int(take.sum())]:
        take[k] += 1
    take = np.minimum(take, counts - 1)
    if int(take.sum()) != n:
        raise ValueError(f"cannot hold out {n} images and keep one image of every class for pretraining")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c, k in zip(classes, take):
        held.append(rng.permutation(np.flatnonzero(labels == c))[:k])
    held_idx = np.sort(np.concatenate(held).astype(np.int64))
    return np.setdiff1d(np.arange(len(labels)), held_idx), held_idx


def score_test_set(dataset: str, holdout: int = DEFAULT_HOLDOUT):
    """The real images the score of ``dataset`` is measured on, grey 32 px (a ``LabelledImages``).

    See the module docstring; a missing dataset raises ``DatasetMissing`` with the install command.
    """
    from .simulate import datasets as ds

    if dataset == "fashion-mnist":
        data = ds.fashion_mnist("test")
    elif dataset == "fashion-mnist-subset":
        data = ds.fashion_mnist_subset("test")
    else:
        full = ds.load(dataset)
        data = full.subset(holdout_split(full.labels, holdout)[1], f"{full.name}-holdout{holdout}")
    return ds.LabelledImages(grey32(data.images), data.labels, data.classes, data.name)


def pretraining_saw_test_set(pretrain_config: Mapping[str, Any] | None, dataset: str,
                             holdout: int = DEFAULT_HOLDOUT) -> bool | None:
    """Whether pretraining (its recorded ``config``) may have read the score's test images; None: unknown."""
    if dataset in OWN_TEST_SET:
        return False  # official test images: pretraining reads train only
    if pretrain_config is None:
        return None
    if pretrain_config.get("dataset") != dataset:
        return False
    return not (pretrain_config.get("split") == "holdout"
                and int(pretrain_config.get("holdout", DEFAULT_HOLDOUT)) == int(holdout))


# --------------------------------------------------------------------------- generation

def class_prompt_text(label: str) -> str:
    """The prompt the class-prompts method gives every image of ``label`` (no site domain)."""
    from server_daemon.synthesis.prompts import class_prompt

    return class_prompt(label, None)[0]


def image_seed(seed: int, label_index: int, index: int) -> int:
    """The seed of image ``index`` of class ``label_index`` in a score run with ``seed``."""
    from server_daemon.synthesis.spec import derive_seed

    return derive_seed(SEED_NAMESPACE, str(int(seed)), label_index, index, "class_prompts")


def generate_class_images(engine, classes: Sequence[str], per_class: int, *, seed: int = 0, steps: int = 20,
                          guidance: float = 3.0, batch: int = 100,
                          progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every class with ``engine`` (a ``SynthesisEngine``), class by class.

    Returns (uint8 (N, H, W, 3), int64 labels). Each image has its own seed (:func:`image_seed`),
    so the batch size changes the images only by float rounding (a pixel may move by one level).
    """
    from tqdm.auto import tqdm

    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    engine.set_scheduler("dpm")
    jobs = [(li, k) for li in range(len(classes)) for k in range(per_class)]
    prompts = {li: class_prompt_text(c) for li, c in enumerate(classes)}
    out: list[np.ndarray] = []
    with tqdm(total=len(jobs), unit="img", desc="generator score", disable=not progress) as bar:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            out.append(engine.generate([prompts[li] for li, _ in chunk], negative_prompts="",
                                       seeds=[image_seed(seed, li, k) for li, k in chunk], steps=steps,
                                       guidance=guidance, output_type="np"))
            bar.update(len(chunk))
    return np.concatenate(out), np.asarray([li for li, _ in jobs], dtype=np.int64)


# --------------------------------------------------------------------------- the score

def generator_score(pipe_dir: str | os.PathLike, dataset: str, *, per_class: int = 300, seed: int = 0,
                    steps: int = 20, guidance: float = 3.0, batch: int = 100, epochs: int | None = None,
                    threads: int = 0, progress: bool = True, holdout: int = DEFAULT_HOLDOUT,
                    test_set=None, compare: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Train the benchmark's classifier on ``per_class`` generated images of each class of ``dataset``
    and score it on real test images (see the module docstring).

    ``test_set`` (a ``LabelledImages``, grey or RGB, 28 or 32 px) replaces :func:`score_test_set`;
    its classes name the prompts. ``epochs`` defaults to the recipe's (30). ``threads`` > 0 sets
    torch's thread count. Returns ``accuracy``, ``per_class`` (accuracy of each class),
    ``per_class_images``, ``test_images``, ``test_set`` (its name), ``steps``, ``guidance``,
    ``seed``, ``best_epoch``, ``seconds`` (``generate``, ``train``) and a few more settings.
    ``compare`` names other recipes (changes to the benchmark's, e.g. ``{"arch": "tiny"}``, with an
    optional ``"epochs"``) trained and scored on the same generated images: ``score["compare"][name]``.
    """
    import torch

    from server_daemon.synthesis.engine import load_engine

    from .recipe import benchmark_recipe
    from .simulate import baselines

    if threads:
        torch.set_num_threads(threads)
    test = score_test_set(dataset, holdout) if test_set is None else test_set
    classes = list(test.classes)
    _check_classes(Path(pipe_dir), classes)
    recipe = benchmark_recipe(dataset)
    epochs = recipe.epochs if epochs is None else int(epochs)

    t0 = time.monotonic()
    engine = load_engine(pipe_dir, device="cpu")
    images, labels = generate_class_images(engine, classes, per_class, seed=seed, steps=steps,
                                           guidance=guidance, batch=batch, progress=progress)
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    del engine
    t_generate = time.monotonic() - t0

    t0 = time.monotonic()
    x = baselines.to_tensor(grey32(images))
    res = baselines.train_centralized(x, labels, len(classes), recipe, epochs, recipe.val_fraction,
                                      labels=classes)
    x_test = baselines.to_tensor(grey32(test.images))
    ev = baselines.evaluate(res["model"], x_test, test.labels, len(classes), recipe)
    t_train = time.monotonic() - t0
    compared = {}
    for name, changes in (compare or {}).items():
        changes = dict(changes)
        other_epochs = int(changes.pop("epochs", epochs))
        other = recipe.replace(**changes)
        t1 = time.monotonic()
        got = baselines.train_centralized(x, labels, len(classes), other, other_epochs, other.val_fraction,
                                          labels=classes)
        other_ev = baselines.evaluate(got["model"], x_test, test.labels, len(classes), other)
        compared[name] = {"accuracy": other_ev["accuracy"], "per_class": other_ev["per_class"],
                          "recipe": other.run_settings(), "epochs": other_epochs, "best_epoch": got["best_epoch"],
                          "seconds": round(time.monotonic() - t1, 1)}
    score = {
        "accuracy": ev["accuracy"], "per_class": ev["per_class"], "per_class_images": int(per_class),
        "generated_images": int(len(images)), "test_images": int(len(test)), "test_set": test.name,
        "dataset": dataset, "classes": classes, "prompt": class_prompt_text("{class}"), "negative_prompt": "",
        "scheduler": "dpm", "steps": int(steps), "guidance": float(guidance), "seed": int(seed), "batch": int(batch),
        "classifier": recipe.arch, "epochs": epochs, "best_epoch": res["best_epoch"],
        "val_accuracy": res["val_acc"], "images_sha256": digest,
        "seconds": {"generate": round(t_generate, 1), "train": round(t_train, 1)},
    }
    if compared:
        score["compare"] = compared
    log.info("generator score %.3f on %d %s images (%d generated, %.0f s + %.0f s)", score["accuracy"],
             score["test_images"], test.name, len(images), t_generate, t_train)
    return score


def _check_classes(pipe_dir: Path, classes: Sequence[str]) -> None:
    """Refuse a test set whose classes differ from the ones the pipeline was pretrained on (when recorded)."""
    meta = read_pretrain_json(pipe_dir)
    trained = (meta or {}).get("classes")
    if trained is not None and list(trained) != list(classes):
        raise ValueError(f"{pipe_dir} was pretrained on the classes {list(trained)}, but the test set has "
                         f"{list(classes)}; score it on the dataset it was pretrained on (--dataset)")


def describe(score: Mapping[str, Any]) -> str:
    """One line for a person: ``generator score: 0.812 (a cnn trained on 3,000 generated images, ...)``."""
    test = score["test_set"]
    what = (f"{test[:-len('-test')]} test" if test.endswith("-test")
            else f"held-out {score.get('dataset', test)}")
    line = (f"generator score: {score['accuracy']:.3f} (a {score.get('classifier', 'cnn')} trained on "
            f"{score.get('generated_images', 0):,} generated images, scored on {score['test_images']:,} "
            f"real {what} images)")
    if score.get("test_seen_in_pretraining"):
        line += "; WARNING: pretraining saw these test images, so the score is optimistic"
    return line


# --------------------------------------------------------------------------- osfl_pretrain.json

def read_pretrain_json(pipe_dir: str | os.PathLike) -> dict | None:
    """The directory's ``osfl_pretrain.json``, or None when it has none."""
    path = Path(pipe_dir) / PRETRAIN_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}); fix or remove it") from exc


def write_score(pipe_dir: str | os.PathLike, score: Mapping[str, Any]) -> Path:
    """Store ``score`` as ``"score"`` in the directory's ``osfl_pretrain.json`` (created if absent),
    atomically: a temporary file in the same directory replaces the old one, so a reader never
    sees half a file and an interrupted write leaves the old one."""
    from protocol.files import atomic_write

    path = Path(pipe_dir) / PRETRAIN_JSON
    meta = read_pretrain_json(pipe_dir) or {}
    meta["score"] = dict(score)
    atomic_write(path, (json.dumps(meta, indent=2) + "\n").encode("utf-8"), mode=0o644)
    return path


def score_directory(pipe_dir: str | os.PathLike, dataset: str | None = None, *, holdout: int | None = None,
                    **kwargs) -> dict:
    """:func:`generator_score` of a pipeline directory, written into its ``osfl_pretrain.json``.

    ``dataset`` and ``holdout`` default to the ones recorded in ``osfl_pretrain.json["config"]``
    (``holdout``: else :data:`DEFAULT_HOLDOUT`); ``kwargs`` go to :func:`generator_score`.
    Adds ``test_seen_in_pretraining`` and warns when it is not False.
    """
    meta = read_pretrain_json(pipe_dir)
    config = (meta or {}).get("config")
    if dataset is None:
        if not config or not config.get("dataset"):
            raise ValueError(f"{Path(pipe_dir) / PRETRAIN_JSON} does not record the dataset the pipeline was "
                             "pretrained on; name the dataset to score on (--dataset)")
        dataset = str(config["dataset"])
    if holdout is None:
        holdout = int((config or {}).get("holdout", DEFAULT_HOLDOUT))
    score = generator_score(pipe_dir, dataset, holdout=holdout, **kwargs)
    seen = pretraining_saw_test_set(config, dataset, holdout)
    score["test_seen_in_pretraining"] = seen
    if seen:
        log.warning("the score's test images (%s) were part of pretraining (split %r); the score is optimistic. "
                    "Pretrain with --split holdout for an honest score", score["test_set"], config.get("split"))
    elif seen is None:
        log.warning("%s records no pretraining config: cannot tell whether pretraining saw the test images",
                    Path(pipe_dir) / PRETRAIN_JSON)
    write_score(pipe_dir, score)
    return score
