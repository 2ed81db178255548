"""The benchmark's one classifier recipe: every method of a simulated federation trains with it.

One-shot (the daemon's training job on the synthetic set), centralized (the union of the sites'
images), FedAvg and FedProx (the sites' local steps) and the generator score of `pretrain-tiny`
(a classifier trained only on generated images) all take :func:`benchmark_recipe`; what differs
between them is the data, the epochs and, for the federated baselines, the learning rate, which
is tuned on the sites' held-out images (``server_daemon.lab.simulate.baselines.tune``).

The recipe (a :class:`~server_daemon.ingest.config.TrainingRecipe`, the same object as the
server's ``[training]`` table):

- **classifier**: ``cnn``, McMahan et al.'s two-layer CNN (``server_daemon.training.models``) at
  32 px: the committed generators' size (28 px images padded by 2). It has no BatchNorm, so FedAvg
  averages only weights; it is the classifier FL papers use for 28-32 px images, and it costs
  about 1,000 training images/s on one CPU core, which is what lets the baselines run 50 rounds
  here. ResNet-20 with GroupNorm was the other candidate; at this size it is several times slower
  on the CPU and buys nothing for the comparison.
- **optimiser**: SGD, momentum 0.9, weight decay 5e-4, batch 64, lr 0.01 (FedAvg/FedProx: tuned).
- **augmentation that keeps labels**: a random shift of up to 4 px with zero fill; plus a
  horizontal flip for Fashion-MNIST (a mirrored shoe is still a shoe) and never for digits.
- **schedule**: cosine to zero over the run's epochs (one-shot, centralized, the generator score);
  the federated baselines keep their tuned lr constant over rounds (a schedule over rounds would
  make the 1- and 10-round readings depend on the planned total).
- **selection**: the epoch best on a held-out 10% of the training data: synthetic images for
  one-shot, the sites' images for centralized; never the test set.
"""
from __future__ import annotations

from server_daemon.ingest.config import TrainingRecipe

#: datasets whose classes survive a horizontal flip
FLIP_SAFE = ("fashion-mnist", "fashion-mnist-subset")

BASE = TrainingRecipe(arch="cnn", image_size=32, epochs=30, batch_size=64, lr=0.01, momentum=0.9,
                      weight_decay=5e-4, val_fraction=0.1, seed=0, device="auto", augment=True,
                      augmentation="shift-flip", lr_schedule="cosine")


def flip_safe(dataset: str) -> bool:
    """Whether a mirrored image keeps its label in ``dataset`` (Fashion-MNIST yes, digits no)."""
    return dataset in FLIP_SAFE or dataset.split("+")[0] in FLIP_SAFE


def benchmark_recipe(dataset: str, **changes) -> TrainingRecipe:
    """:data:`BASE` with the augmentation ``dataset`` allows, and ``changes`` applied."""
    recipe = BASE.replace(augmentation="shift-flip" if flip_safe(dataset) else "shift")
    return recipe.replace(**changes) if changes else recipe
