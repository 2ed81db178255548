"""Baselines on the sites' real images: centralized training and FedAvg (Flower's strategy).

Both train as the one-shot path does: the same :class:`~server_daemon.ingest.config.TrainingRecipe`
(arch, image size, SGD settings, augmentation) and the same epoch function,
:func:`server_daemon.training.train.train_epoch` (classifier from ``new_classifier``, ImageNet
normalisation, torch-only augmentation), so the only difference is the data each sees. They run
where ``recipe.device`` says (:func:`policy_for`: "auto" takes CUDA, with automatic mixed
precision, when torch sees a GPU, else the CPU in fp32).

- :func:`train_centralized`: SGD on the union of the sites' images; the epoch kept is the best on
  a held-out split of those images (never the test set).
- :func:`run_federated`: FedAvg or FedProx for R rounds; each round every site trains E local
  epochs from the global weights (FedProx adds mu/2 * ||w - w_global||^2 to each batch's loss),
  then the weighted average (by number of examples) becomes the new global model. The strategies
  are Flower's ``FedAvg`` and ``FedProx`` (flwr 1.41, optional extra ``osfl[fedavg]``): their
  ``aggregate_fit`` averages, and the client reads ``proximal_mu`` from the strategy, as a Flower
  client reads it from its fit config. They are driven in-process: the clients train one after
  another in this process and only the strategy is Flower's.
- :func:`tune_federated`: the learning rate (and FedProx's mu) chosen on the sites' own held-out
  images (:func:`split_sites`: each site keeps back a share of its images; the score is the
  accuracy over all sites' held-out images pooled), never on the test set. Flower's Ray-based simulation engine (``flwr[simulation]``, Ray 2.55) was not used:
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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from server_daemon.training import TrainingRecipe
from server_daemon.training.train import Batches, DevicePolicy, new_classifier, new_optimizer, train_epoch

log = logging.getLogger(__name__)

#: the CPU in fp32
CPU = DevicePolicy(torch.device("cpu"))


def policy_for(recipe: TrainingRecipe) -> DevicePolicy:
    """Where the baselines of ``recipe`` train: its ``device`` ("auto": CUDA when present)."""
    return DevicePolicy.choose(None if recipe.device in ("", "auto") else recipe.device)


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
                 gen: torch.Generator, optimizer=None, extra_loss=None) -> float:
    """``epochs`` of SGD on (x, y) in place, each one :func:`train_epoch`; returns the last epoch's mean loss."""
    policy = policy_for(recipe)
    model.to(policy.device)
    if optimizer is None:
        optimizer = new_optimizer(model, recipe)
    data, scaler = Batches.of_tensors(x, y), policy.scaler()
    loss = 0.0
    for _ in range(epochs):
        loss = train_epoch(model, optimizer, scaler, data, recipe, gen, policy, extra_loss=extra_loss).loss
    model.eval()
    return loss


@torch.no_grad()
def predict(model, x: torch.Tensor, recipe: TrainingRecipe, batch: int = 512) -> np.ndarray:
    policy = policy_for(recipe)
    model.to(policy.device).eval()
    out = [policy.logits(model, policy.inputs(x[k:k + batch], recipe.image_size)).argmax(1).cpu()
           for k in range(0, len(x), batch)]
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
                      val_fraction: float = 0.1, labels: Sequence[str] | None = None,
                      val: tuple[torch.Tensor, np.ndarray] | None = None) -> dict:
    """Train on (x, y) under the recipe's lr schedule over ``epochs``; keep the epoch best on
    ``val`` (images, labels) or, without it, on a held-out ``val_fraction`` of each class of (x, y)."""
    from server_daemon.training.train import lr_at

    t0 = time.monotonic()
    if val is not None:
        n = len(x)
        x = torch.cat([x, val[0]])
        y = np.concatenate([np.asarray(y), np.asarray(val[1])])
        tr, va = np.arange(n), np.arange(n, len(x))
    else:
        tr, va = holdout(np.asarray(y), val_fraction, recipe.seed)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    model = new_classifier(n_classes, recipe, labels).to(policy_for(recipe).device)
    opt = new_optimizer(model, recipe)
    best, best_state, history = -1.0, None, []
    scheduled = recipe.replace(epochs=epochs)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(scheduled, epoch)
        loss = train_epochs(model, x[tr], yt[tr], 1, recipe, _gen(recipe.seed, "central", epoch), opt)
        val = evaluate(model, x[va], np.asarray(y)[va], n_classes, recipe)["accuracy"] if len(va) else 0.0
        history.append({"epoch": epoch + 1, "loss": loss, "val_acc": val})
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"model": model.to("cpu").eval(), "history": history, "best_epoch": int(np.argmax([h["val_acc"] for h in history])) + 1,
            "val_acc": best, "seconds": time.monotonic() - t0}


STRATEGIES = ("fedavg", "fedprox")


def split_sites(site_data: Sequence[tuple[torch.Tensor, np.ndarray]], fraction: float, seed: int
                ) -> tuple[list[tuple[torch.Tensor, np.ndarray]], list[tuple[torch.Tensor, np.ndarray]]]:
    """Each site keeps back ``fraction`` of each of its classes (at least one image stays for
    training): (the sites' training parts, their held-out parts), in site order."""
    train, val = [], []
    for k, (x, y) in enumerate(site_data):
        tr, va = holdout(np.asarray(y), fraction, seed + 7919 * (k + 1))
        train.append((x[tr], np.asarray(y)[tr]))
        val.append((x[va], np.asarray(y)[va]))
    return train, val


def pooled_accuracy(model, parts: Sequence[tuple[torch.Tensor, np.ndarray]], recipe: TrainingRecipe) -> float:
    """Accuracy over all the sites' held-out images together (each site scores its own; the counts
    are summed, as a federated evaluation round would)."""
    correct = total = 0
    for x, y in parts:
        if len(y):
            correct += int((predict(model, x, recipe) == np.asarray(y)).sum())
            total += len(y)
    return correct / total if total else 0.0


def _aggregate(strategy, rnd: int, states: list[list[np.ndarray]], sizes: list[int]) -> list[np.ndarray]:
    if strategy is None:
        w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
        return [sum(wi * s[i] for wi, s in zip(w, states)) for i in range(len(states[0]))]
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    results = [(None, FitRes(status=Status(code=Code.OK, message=""), parameters=ndarrays_to_parameters(s),
                             num_examples=n, metrics={})) for s, n in zip(states, sizes)]
    params, _ = strategy.aggregate_fit(rnd, results, [])
    return parameters_to_ndarrays(params)


def flower_strategy(name: str = "fedavg", mu: float = 0.0):
    """Flower's FedAvg or FedProx(proximal_mu=mu) strategy, or None when flwr is not installed."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    try:
        from flwr.server.strategy import FedAvg, FedProx
    except ImportError:
        return None
    logging.getLogger("flwr").setLevel(logging.ERROR)
    common = dict(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=1, min_evaluate_clients=0,
                  min_available_clients=1, fit_metrics_aggregation_fn=lambda metrics: {})
    return FedProx(proximal_mu=mu, **common) if name == "fedprox" else FedAvg(**common)


def proximal_term(global_params: list[torch.Tensor], mu: float):
    """FedProx's mu/2 * ||w - w_global||^2 over the trainable parameters, as an ``extra_loss``."""
    def term(model: torch.nn.Module) -> torch.Tensor:
        return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
    return term


@dataclass
class FederatedRun:
    """What :func:`run_federated` produced: the global model after the last round, the held-out
    score (when held-out parts were given) and the weights at each reported round."""

    model: torch.nn.Module
    impl: str
    bytes_per_round_per_site: int
    seconds: float
    val_acc: dict[int, float] = field(default_factory=dict)
    states: dict[int, dict] = field(default_factory=dict)


def run_federated(site_data: list[tuple[torch.Tensor, np.ndarray]], n_classes: int, recipe: TrainingRecipe,
                  rounds: int, local_epochs: int, report_rounds: Sequence[int] = (),
                  on_round: Callable[[int, torch.nn.Module], None] | None = None,
                  labels: Sequence[str] | None = None, strategy: str = "fedavg", mu: float = 0.0,
                  val_parts: Sequence[tuple[torch.Tensor, np.ndarray]] | None = None,
                  keep_states: bool = False) -> FederatedRun:
    """FedAvg or FedProx over the sites' data with the recipe's lr (constant over rounds).

    After each round in ``report_rounds``: ``on_round(r, model)`` is called, the pooled accuracy on
    ``val_parts`` (the sites' held-out images) is recorded, and with ``keep_states`` a copy of the
    weights is kept. Local training of site k in round r draws its order and augmentation from a
    generator seeded by (seed, r, k), the same for both strategies: FedProx with mu 0 is FedAvg.
    """
    t0 = time.monotonic()
    flower = flower_strategy(strategy, mu)
    device = policy_for(recipe).device
    global_model = new_classifier(n_classes, recipe, labels).to(device)
    keys = list(global_model.state_dict().keys())
    per_round_bytes = 2 * model_bytes(global_model)
    sizes = [len(y) for _, y in site_data]
    site_y = [torch.as_tensor(np.asarray(y), dtype=torch.long) for _, y in site_data]
    # Flower's FedProx sends proximal_mu in each client's fit config; the in-process client reads it here
    prox_mu = float(getattr(flower, "proximal_mu", mu)) if strategy == "fedprox" else 0.0
    run = FederatedRun(global_model, "", per_round_bytes, 0.0)
    for rnd in range(1, rounds + 1):
        global_model.to(device)  # an on_round callback may have moved it (the ONNX export runs on the CPU)
        base = copy.deepcopy(global_model.state_dict())
        global_params = [p.detach().clone() for p in global_model.parameters()]
        extra = proximal_term(global_params, prox_mu) if prox_mu > 0 else None
        states = []
        for k, ((x, _), y) in enumerate(zip(site_data, site_y)):
            if not len(y):
                continue
            local = new_classifier(n_classes, recipe, labels).to(device)
            local.load_state_dict(base)
            train_epochs(local, x, y, local_epochs, recipe, _gen(recipe.seed, "federated", rnd, k), extra_loss=extra)
            states.append([v.detach().cpu().numpy() for v in local.state_dict().values()])
        avg = _aggregate(flower, rnd, states, [n for n in sizes if n])
        new_state = {}
        for key, ref, arr in zip(keys, base.values(), avg):
            new_state[key] = torch.as_tensor(np.asarray(arr)).to(device=ref.device, dtype=ref.dtype)
        global_model.load_state_dict(new_state)
        global_model.eval()
        if rnd in report_rounds:
            if val_parts is not None:
                run.val_acc[rnd] = pooled_accuracy(global_model, val_parts, recipe)
            if keep_states:
                run.states[rnd] = copy.deepcopy(global_model.state_dict())
            if on_round is not None:
                on_round(rnd, global_model)
        log.info("%s round %d/%d done (%.0f s)", strategy, rnd, rounds, time.monotonic() - t0)
    name = {"fedavg": "FedAvg", "fedprox": "FedProx"}[strategy]
    run.impl = f"flwr.server.strategy.{name} (in-process)" if flower is not None else "numpy weighted mean"
    run.model = global_model.to("cpu").eval()
    run.seconds = time.monotonic() - t0
    return run


@dataclass
class TunedRun:
    """The setting :func:`tune_federated` chose and what every tried setting scored."""

    strategy: str
    local_epochs: int
    lr: float
    mu: float
    val_acc: float
    tried: list[dict]
    run: FederatedRun
    tune_seconds: float


def tune_federated(site_train, site_val, n_classes: int, recipe: TrainingRecipe, *, strategy: str,
                   local_epochs: int, rounds: int, report_rounds: Sequence[int], lrs: Sequence[float],
                   mus: Sequence[float] = (0.0,), tune_rounds: int = 0,
                   labels: Sequence[str] | None = None) -> TunedRun:
    """Choose lr (and mu for FedProx) by the pooled accuracy on the sites' held-out images after
    ``tune_rounds`` rounds (0: all ``rounds``), then return the chosen setting's run to ``rounds``
    with its weights at every round in ``report_rounds``. Ties go to the smaller lr. The test set
    is never looked at here."""
    t0 = time.monotonic()
    tune_rounds = tune_rounds or rounds
    grid = [(lr, mu) for lr in lrs for mu in (mus if strategy == "fedprox" else (0.0,))]
    tried, best = [], None
    reports = sorted(set(r for r in report_rounds if r <= tune_rounds) | {tune_rounds})
    for lr, mu in grid:
        cfg = recipe.replace(lr=float(lr))
        run = run_federated(site_train, n_classes, cfg, tune_rounds, local_epochs, reports, labels=labels,
                            strategy=strategy, mu=mu, val_parts=site_val, keep_states=tune_rounds == rounds)
        score = run.val_acc[tune_rounds]
        tried.append({"lr": lr, "mu": mu, "val_acc": score, "rounds": tune_rounds, "seconds": round(run.seconds, 1)})
        log.info("%s E=%d lr=%g mu=%g: held-out accuracy %.4f after %d rounds", strategy, local_epochs, lr, mu,
                 score, tune_rounds)
        if best is None or score > best[0] + 1e-12:
            best = (score, lr, mu, run)
    score, lr, mu, run = best
    tune_s = time.monotonic() - t0
    if tune_rounds != rounds:
        run = run_federated(site_train, n_classes, recipe.replace(lr=float(lr)), rounds, local_epochs,
                            sorted(set(report_rounds) | {rounds}), labels=labels, strategy=strategy, mu=mu,
                            val_parts=site_val, keep_states=True)
    return TunedRun(strategy, local_epochs, float(lr), float(mu), float(score), tried, run, round(tune_s, 1))
