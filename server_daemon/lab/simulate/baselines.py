"""Baselines on the sites' real images: centralized training and FedAvg (Flower's strategy).

Both train as the one-shot path does: the same :class:`~server_daemon.ingest.config.TrainingRecipe`
(arch, image size, SGD settings, augmentation) and the same epoch function,
:func:`server_daemon.training.train.train_epoch` (classifier from ``new_classifier``, ImageNet
normalisation, torch-only augmentation), so the only difference is the data each sees. They run
on the CPU whatever ``recipe.device`` says.

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
from typing import Callable, Sequence

import numpy as np
import torch

from server_daemon.training import TrainingRecipe
from server_daemon.training.train import Batches, DevicePolicy, new_classifier, new_optimizer, train_epoch

log = logging.getLogger(__name__)

#: the baselines train on the CPU, in fp32
CPU = DevicePolicy(torch.device("cpu"))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) -> uint8 (N, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        return x[:, None].expand(-1, 3, -1, -1).contiguous()
    return x.permute(0, 3, 1, 2).contiguous()


def _gen(seed: int, *tags) -> torch.Generator:
    digest = hashlib.sha256(("\0".join(map(str, (seed,) + tags))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def train_epochs(model, x: torch.Tensor, y: torch.Tensor, epochs: int, recipe: TrainingRecipe,
                 gen: torch.Generator, optimizer=None) -> float:
    """``epochs`` of SGD on (x, y) in place, each one :func:`train_epoch`; returns the last epoch's mean loss."""
    if optimizer is None:
        optimizer = new_optimizer(model, recipe)
    data, scaler = Batches.of_tensors(x, y), CPU.scaler()
    loss = 0.0
    for _ in range(epochs):
        loss = train_epoch(model, optimizer, scaler, data, recipe, gen, CPU).loss
    model.eval()
    return loss


@torch.no_grad()
def predict(model, x: torch.Tensor, recipe: TrainingRecipe, batch: int = 512) -> np.ndarray:
    model.eval()
    out = [CPU.logits(model, CPU.inputs(x[k:k + batch], recipe.image_size)).argmax(1) for k in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def evaluate(model, x: torch.Tensor, y: np.ndarray, n_classes: int, recipe: TrainingRecipe) -> dict:
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


def train_centralized(x: torch.Tensor, y: np.ndarray, n_classes: int, recipe: TrainingRecipe, epochs: int,
                      val_fraction: float = 0.1, labels: Sequence[str] | None = None) -> dict:
    """Train on the union of the sites' images; keep the epoch best on the held-out split."""
    t0 = time.monotonic()
    tr, va = holdout(np.asarray(y), val_fraction, recipe.seed)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    model = new_classifier(n_classes, recipe, labels)
    opt = new_optimizer(model, recipe)
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


def run_fedavg(site_data: list[tuple[torch.Tensor, np.ndarray]], n_classes: int, recipe: TrainingRecipe,
               rounds: int, local_epochs: int, report_rounds: Sequence[int],
               on_round: Callable[[int, torch.nn.Module], None] | None = None,
               labels: Sequence[str] | None = None) -> dict:
    """FedAvg over the sites' data; ``on_round(r, model)`` is called after each round in ``report_rounds``."""
    t0 = time.monotonic()
    strategy = flower_strategy()
    global_model = new_classifier(n_classes, recipe, labels)
    keys = list(global_model.state_dict().keys())
    per_round_bytes = 2 * model_bytes(global_model)
    sizes = [len(y) for _, y in site_data]
    site_y = [torch.as_tensor(np.asarray(y), dtype=torch.long) for _, y in site_data]
    for rnd in range(1, rounds + 1):
        base = copy.deepcopy(global_model.state_dict())
        states = []
        for k, ((x, _), y) in enumerate(zip(site_data, site_y)):
            local = new_classifier(n_classes, recipe, labels)
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
