"""Evaluate the global model on the site's own images, on onnxruntime (no torch at the edge).

The model's ONNX metadata names its labels (``osfl.labels``) and input size (``osfl.image_size``);
its input is float32 RGB NCHW in [0, 1] (normalisation is inside the graph). The site's class
folders are matched to the model's labels by name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import ImageFolderDataset, open_image
from .errors import ConfigError, FederationMismatch


@dataclass(frozen=True)
class Evaluation:
    labels: list[str]              # the model's labels, in its output order
    present: list[str]             # labels the site has images of
    confusion: np.ndarray          # [true label, predicted label] over the model's labels
    n: int

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.n, 1))

    def per_class(self) -> dict[str, float | None]:
        rows = self.confusion.sum(1)
        return {lab: (float(self.confusion[i, i] / rows[i]) if rows[i] else None) for i, lab in enumerate(self.labels)}

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "images": self.n, "labels": self.labels,
                "per_class": self.per_class(), "confusion": self.confusion.tolist()}

    def render(self) -> str:
        out = [f"accuracy: {self.accuracy:.4f} on {self.n} images", "", "per class:"]
        width = max(len(x) for x in self.labels)
        for lab, acc in self.per_class().items():
            out.append(f"  {lab:<{width}}  " + ("-" if acc is None else f"{acc:.4f}") +
                       f"  ({int(self.confusion[self.labels.index(lab)].sum())} images)")
        out += ["", "confusion matrix (rows: true, columns: predicted):"]
        short = [lab[:6] for lab in self.labels]
        out.append(" " * (width + 2) + " ".join(f"{s:>6}" for s in short))
        for i, lab in enumerate(self.labels):
            out.append(f"  {lab:<{width}}" + " ".join(f"{int(v):>6}" for v in self.confusion[i]))
        return "\n".join(out)


def load_model(path: Path, threads: int = 0):
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no model at {path}", fix="run `osfl-edge fetch-model --federation ID` first")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConfigError(f"{path} is not a model onnxruntime can load ({type(exc).__name__})",
                          fix="fetch the model again with `osfl-edge fetch-model`") from exc
    meta = sess.get_modelmeta().custom_metadata_map
    try:
        labels = json.loads(meta["osfl.labels"])
        size = int(meta["osfl.image_size"])
    except (KeyError, ValueError):
        raise ConfigError(f"{path} lacks osfl's metadata (osfl.labels, osfl.image_size)",
                          fix="evaluate a model made by osfl-server") from None
    return sess, labels, size


def evaluate(model_path: Path, dataset: ImageFolderDataset, *, batch_size: int = 32, threads: int = 0,
             progress: bool = False) -> Evaluation:
    sess, labels, size = load_model(model_path, threads)
    unknown = [c for c in dataset.classes if c not in labels]
    if unknown:
        raise FederationMismatch(f"class folder(s) {', '.join(unknown)} are not labels of the model "
                                 f"({', '.join(labels)})")
    index = {c: labels.index(c) for c in dataset.classes}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    files = list(dataset.files)
    from tqdm import tqdm

    name = sess.get_inputs()[0].name
    with tqdm(total=len(files), unit="img", desc="evaluate", disable=not progress, leave=False) as bar:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            x = np.stack([np.asarray(open_image(p).resize((size, size)), dtype=np.float32).transpose(2, 0, 1) / 255.0
                          for p, _ in batch])
            logits = sess.run(None, {name: x})[0]
            pred = logits.argmax(1)
            for (_, cls_idx), p in zip(batch, pred):
                confusion[index[dataset.classes[cls_idx]], int(p)] += 1
            bar.update(len(batch))
    return Evaluation(labels, [c for c in dataset.classes], confusion, len(files))
