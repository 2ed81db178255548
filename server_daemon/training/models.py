"""The classifiers the server trains: transformers' ``ResNetForImageClassification``, seeded.

``resnet18`` is FGL's global classifier (basic blocks, [2, 2, 2, 2], 64..512 channels); ``tiny``
has a few thousand parameters, for tests, the demo and the simulator. Both are built from a
config with a fixed seed, so two calls with the same arguments give the same weights.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

from typing import Any, Sequence

#: ResNet sizes. resnet18 is FGL's classifier (basic blocks, [2,2,2,2], 64..512 channels).
RESNET_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    "resnet18": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                     layer_type="basic"),
}


def build_resnet(num_labels: int, size: str = "tiny", labels: Sequence[str] | None = None,
                 seed: int = 0, num_channels: int = 3):
    """A freshly initialised (seeded) ``ResNetForImageClassification``.

    ``size`` is "tiny" (a few thousand parameters, for tests) or "resnet18" (FGL's classifier).
    """
    import torch
    from transformers import ResNetForImageClassification

    torch.manual_seed(seed)
    model = ResNetForImageClassification(resnet_config(num_labels, size, labels, num_channels))
    model.eval()
    return model


def resnet_config(num_labels: int, size: str = "tiny", labels: Sequence[str] | None = None,
                  num_channels: int = 3):
    """The ``ResNetConfig`` for ``size`` ("tiny" or "resnet18") with the label names set."""
    from transformers import ResNetConfig

    if size not in RESNET_SIZES:
        raise ValueError(f"unknown classifier size {size!r}; expected one of {', '.join(RESNET_SIZES)}")
    if num_labels < 1:
        raise ValueError(f"a classifier needs at least one label, got num_labels={num_labels}")
    if labels is not None and len(labels) != num_labels:
        raise ValueError(f"{len(labels)} label names given for num_labels={num_labels}")
    names = list(labels) if labels is not None else [f"class_{i}" for i in range(num_labels)]
    return ResNetConfig(
        num_channels=num_channels,
        num_labels=num_labels,
        id2label={i: n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
        **RESNET_SIZES[size],
    )
