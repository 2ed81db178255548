"""The classifiers the server trains, seeded: two ResNets (transformers' ``ResNetForImageClassification``)
and the CNN of McMahan et al.

``resnet18`` is FGL's global classifier (basic blocks, [2, 2, 2, 2], 64..512 channels); ``tiny``
has a few thousand parameters, for tests and the demo. ``cnn`` is the two-layer CNN of McMahan et
al. (2017), the classifier FL benchmarks use for 28-32 px images: conv 5x5 (32) + ReLU + max-pool 2,
conv 5x5 (64) + ReLU + max-pool 2, fully connected 512 + ReLU, linear to the classes; no
normalisation layers, so FedAvg averages nothing but weights (BatchNorm's running statistics,
averaged over sites that each hold one or two classes, are a known failure under label skew). At
32 px it has 2.16 M parameters (1.66 M at 28 px, as in the paper). It is the benchmark's classifier
for every method. All are built with a fixed seed, so two calls with the same arguments give the
same weights.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

#: ResNet sizes. resnet18 is FGL's classifier (basic blocks, [2,2,2,2], 64..512 channels).
RESNET_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    "resnet18": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                     layer_type="basic"),
}


#: every architecture :func:`build_classifier` knows (the [training] arch key)
ARCHS = ("resnet18", "tiny", "cnn")
#: the file :meth:`McMahanCNN.save_pretrained` writes next to config.json
CNN_WEIGHTS = "model.safetensors"


def build_classifier(arch: str, num_labels: int, labels: Sequence[str] | None = None, seed: int = 0,
                     image_size: int = 32, num_channels: int = 3):
    """A freshly initialised (seeded) classifier of ``arch`` (one of :data:`ARCHS`)."""
    if arch == "cnn":
        return build_cnn(num_labels, labels, seed=seed, image_size=image_size, num_channels=num_channels)
    if arch in RESNET_SIZES:
        return build_resnet(num_labels, arch, labels, seed=seed, num_channels=num_channels)
    raise ValueError(f"unknown classifier arch {arch!r}; expected one of {', '.join(ARCHS)}")


@functools.lru_cache(maxsize=None)
def _cnn_class():
    """The CNN's class, defined on first use (so that importing this module does not import torch)."""
    import torch
    from torch import nn

    class ClassifierOutput(dict):
        """What the ResNets return, as far as the trainers read it: ``.logits``."""

        @property
        def logits(self):
            return self["logits"]

    class McMahanCNN(nn.Module):
        """McMahan et al.'s CNN, taking ``pixel_values`` like the ResNets and returning ``.logits``."""

        main_input_name = "pixel_values"

        def __init__(self, config: dict):
            super().__init__()
            size, ch, n = int(config["image_size"]), int(config["num_channels"]), int(config["num_labels"])
            if size % 4:
                raise ValueError(f"the cnn needs an image_size divisible by 4, got {size}")
            self.config = _CNNConfig(config)
            self.features = nn.Sequential(
                nn.Conv2d(ch, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
            self.hidden = nn.Sequential(nn.Linear(64 * (size // 4) ** 2, 512), nn.ReLU(inplace=True))
            self.classifier = nn.Linear(512, n)

        def forward(self, pixel_values: torch.Tensor, return_dict: bool = True):
            logits = self.classifier(self.hidden(self.features(pixel_values)))
            return ClassifierOutput(logits=logits) if return_dict else (logits,)

        def save_pretrained(self, directory, **_ignored) -> None:
            """config.json + model.safetensors (what :func:`load_classifier` reads back)."""
            import json
            from pathlib import Path

            from safetensors.torch import save_file

            out = Path(directory)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(out / CNN_WEIGHTS))

    return McMahanCNN


class _CNNConfig:
    """The handful of config fields the trainers and the exporter read (``num_labels``, ``id2label``)."""

    def __init__(self, raw: dict):
        self.raw = dict(raw)
        self.num_labels = int(raw["num_labels"])
        self.image_size = int(raw["image_size"])
        self.num_channels = int(raw["num_channels"])
        self.id2label = {int(k): v for k, v in raw["id2label"].items()}
        self.label2id = {v: k for k, v in self.id2label.items()}

    def to_dict(self) -> dict:
        return {**self.raw, "id2label": {str(k): v for k, v in self.id2label.items()}}


def build_cnn(num_labels: int, labels: Sequence[str] | None = None, seed: int = 0, image_size: int = 32,
              num_channels: int = 3):
    """A freshly initialised (seeded) McMahan CNN for ``image_size`` x ``image_size`` inputs."""
    import torch

    names = _label_names(num_labels, labels)
    torch.manual_seed(seed)
    model = _cnn_class()({"osfl_arch": "cnn", "num_labels": num_labels, "image_size": image_size,
                          "num_channels": num_channels, "id2label": dict(enumerate(names))})
    model.eval()
    return model


def load_classifier(directory):
    """A classifier saved by ``save_pretrained`` (a ResNet through transformers, or the cnn)."""
    import json
    from pathlib import Path

    path = Path(directory)
    config = json.loads((path / "config.json").read_text())
    if config.get("osfl_arch") == "cnn":
        from safetensors.torch import load_file

        model = _cnn_class()(config)
        model.load_state_dict(load_file(str(path / CNN_WEIGHTS)))
        return model.eval()
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification.from_pretrained(path).eval()


def _label_names(num_labels: int, labels: Sequence[str] | None) -> list[str]:
    if num_labels < 1:
        raise ValueError(f"a classifier needs at least one label, got num_labels={num_labels}")
    if labels is not None and len(labels) != num_labels:
        raise ValueError(f"{len(labels)} label names given for num_labels={num_labels}")
    return list(labels) if labels is not None else [f"class_{i}" for i in range(num_labels)]


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
    names = _label_names(num_labels, labels)
    return ResNetConfig(
        num_channels=num_channels,
        num_labels=num_labels,
        id2label={i: n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
        **RESNET_SIZES[size],
    )
