"""Baselines on the sites' real images: centralized training and FedAvg (Flower's strategy).

Both use the classifier of the one-shot path (``server_daemon.tinymodels.build_resnet`` with the
same arch, image size, ImageNet normalisation, SGD settings and torch-only augmentation as
``server_daemon.training.train``), so the only difference is the data each sees.

- :func:`train_centralized`: SGD on the union of the sites' images; the epoch kept is the best on
  a held-out split of those images (never the test set).
- :func:`run_fedavg`: R rounds; each round every site trains E local epochs from the global
  weights, then the weighted average (by number of examples) becomes the new global model.
  The averaging is Flower's ``FedAvg.aggregate_fit`` (flwr 1.41, optional extra ``osfl[fedavg]``),
  driven in-process: the clients train one after another in this process and only the strategy
  is Flower's. Flower's Ray-based simulation engine (``flwr[simulation]``, Ray 2.55) was not used:
  it starts a Ray cluster with actors per client on the machine's 2 cores, which adds process and
  serialisation overhead and nothing to the arithmetic. Without flwr the same weighted mean is
  computed with numpy (recorded in the result as ``impl``).
  Bytes moved = rounds x sites x (download + upload of every float32 weight and BN buffer).

Models are returned in eval mode on the CPU; :func:`evaluate` scores them on tensors.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from server_daemon.tinymodels import build_resnet
from server_daemon.training.data import center_resize, normalize, random_resized_crop_flip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierRecipe:
    """What both paths share: the server's [training] settings used for the one-shot model."""

    arch: str = "tiny"
    image_size: int = 32
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    augment: bool = True
    seed: int = 0


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) -> uint8 (N, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        return x[:, None].expand(-1, 3, -1, -1).contiguous()
    return x.permute(0, 3, 1, 2).contiguous()


def _gen(seed: int, *tags) -> torch.Generator:
    digest = hashlib.sha256(("\0".join(map(str, (seed,) + tags))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def new_model(n_classes: int, recipe: ClassifierRecipe, labels: Sequence[str] | None = None):
    size = "tiny" if recipe.arch == "tiny" else "resnet18"
    return build_resnet(n_classes, size, labels, seed=recipe.seed)


def train_epochs(model, x: torch.Tensor, y: torch.Tensor, epochs: int, recipe: ClassifierRecipe,
                 gen: torch.Generator, optimizer=None) -> float:
    """``epochs`` of SGD on (x, y) in place; returns the last epoch's mean loss."""
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
    model.train()
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        order = torch.randperm(len(y), generator=gen)
        for k in range(0, len(y), recipe.batch_size):
            idx = order[k:k + recipe.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = x[idx]
            xb = random_resized_crop_flip(xb, recipe.image_size, gen) if recipe.augment \
                else center_resize(xb, recipe.image_size)
            logits = model(pixel_values=normalize(xb)).logits
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
    model.eval()
    return loss_sum / max(seen, 1)


@torch.no_grad()
def predict(model, x: torch.Tensor, recipe: ClassifierRecipe, batch: int = 512) -> np.ndarray:
    model.eval()
    out = []
    for k in range(0, len(x), batch):
        out.append(model(pixel_values=normalize(center_resize(x[k:k + batch], recipe.image_size))).logits.argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def evaluate(model, x: torch.Tensor, y: np.ndarray, n_classes: int, recipe: ClassifierRecipe) -> dict:
    pred = predict(model, x, recipe)
    y = np.asarray(y)
    per_class = [float((pred[y == c] == c).mean()) if (y == c).any() else None for c in range(n_classes)]
    return {"accuracy": float((pred == y).mean()) if len(y) else 0.0, "per_class": per_class}


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions: ``fraction`` of each class held out (at least one kept for training)."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(int(round(len(idx) * fraction)), len(idx) - 1)
        va.extend(idx[:k])
        tr.extend(idx[k:])
    return np.sort(np.asarray(tr, dtype=np.int64)), np.sort(np.asarray(va, dtype=np.int64))


def model_bytes(model) -> int:
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.dtype.is_floating_point)


def train_centralized(x: torch.Tensor, y: np.ndarray, n_classes: int, recipe: ClassifierRecipe, epochs: int,
                      val_fraction: float = 0.1, labels: Sequence[str] | None = None) -> dict:
    """Train on the union of the sites' images; keep the epoch best on the held-out split."""
    t0 = time.monotonic()
    tr, va = holdout(np.asarray(y), val_fraction, recipe.seed)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    model = new_model(n_classes, recipe, labels)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        loss = train_epochs(model, x[tr], yt[tr], 1, recipe, _gen(recipe.seed, "central", epoch), opt)
        val = evaluate(model, x[va], np.asarray(y)[va], n_classes, recipe)["accuracy"] if len(va) else 0.0
        history.append({"epoch": epoch + 1, "loss": loss, "val_acc": val})
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"model": model, "history": history, "best_epoch": int(np.argmax([h["val_acc"] for h in history])) + 1,
            "val_acc": best, "seconds": time.monotonic() - t0}


def _aggregate(strategy, rnd: int, states: list[list[np.ndarray]], sizes: list[int]) -> list[np.ndarray]:
    if strategy is None:
        w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
        return [sum(wi * s[i] for wi, s in zip(w, states)) for i in range(len(states[0]))]
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    results = [(None, FitRes(status=Status(code=Code.OK, message=""), parameters=ndarrays_to_parameters(s),
                             num_examples=n, metrics={})) for s, n in zip(states, sizes)]
    params, _ = strategy.aggregate_fit(rnd, results, [])
    return parameters_to_ndarrays(params)


def flower_strategy():
    """Flower's FedAvg strategy, or None when flwr is not installed."""
    try:
        from flwr.server.strategy import FedAvg
    except ImportError:
        return None
    logging.getLogger("flwr").setLevel(logging.ERROR)
    return FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=1, min_evaluate_clients=0,
                  min_available_clients=1, fit_metrics_aggregation_fn=lambda metrics: {})


def run_fedavg(site_data: list[tuple[torch.Tensor, np.ndarray]], n_classes: int, recipe: ClassifierRecipe,
               rounds: int, local_epochs: int, report_rounds: Sequence[int],
               on_round: Callable[[int, torch.nn.Module], None] | None = None,
               labels: Sequence[str] | None = None) -> dict:
    """FedAvg over the sites' data; ``on_round(r, model)`` is called after each round in ``report_rounds``."""
    t0 = time.monotonic()
    strategy = flower_strategy()
    global_model = new_model(n_classes, recipe, labels)
    keys = list(global_model.state_dict().keys())
    per_round_bytes = 2 * model_bytes(global_model)
    sizes = [len(y) for _, y in site_data]
    site_y = [torch.as_tensor(np.asarray(y), dtype=torch.long) for _, y in site_data]
    for rnd in range(1, rounds + 1):
        base = copy.deepcopy(global_model.state_dict())
        states = []
        for k, ((x, _), y) in enumerate(zip(site_data, site_y)):
            local = new_model(n_classes, recipe, labels)
            local.load_state_dict(base)
            train_epochs(local, x, y, local_epochs, recipe, _gen(recipe.seed, "fedavg", rnd, k))
            states.append([v.detach().cpu().numpy() for v in local.state_dict().values()])
        avg = _aggregate(strategy, rnd, states, sizes)
        new_state = {}
        for key, ref, arr in zip(keys, base.values(), avg):
            new_state[key] = torch.as_tensor(np.asarray(arr)).to(ref.dtype)
        global_model.load_state_dict(new_state)
        global_model.eval()
        if rnd in report_rounds and on_round is not None:
            on_round(rnd, global_model)
        log.info("fedavg round %d/%d done (%.0f s)", rnd, rounds, time.monotonic() - t0)
    return {"model": global_model, "impl": "flwr.server.strategy.FedAvg (in-process)" if strategy else "numpy weighted mean",
            "bytes_per_round_per_site": per_round_bytes, "seconds": time.monotonic() - t0}
