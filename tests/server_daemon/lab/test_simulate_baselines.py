"""Baselines: FedAvg's average is Flower's (or the same numpy mean), bytes are counted, runs are seeded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from server_daemon.lab.simulate import baselines as b
from server_daemon.lab.simulate import datasets as ds
from server_daemon.training import TrainingRecipe

RECIPE = TrainingRecipe(arch="tiny", image_size=16, batch_size=32, augment=False)


def test_weighted_mean_matches_flower_and_numpy():
    states = [[np.full((2, 2), 1.0), np.array([0.0])], [np.full((2, 2), 4.0), np.array([3.0])]]
    expect = [np.full((2, 2), 3.0), np.array([2.0])]  # weights 1:2
    got = b._aggregate(None, 1, states, [10, 20])
    assert all(np.allclose(g, e) for g, e in zip(got, expect))
    strategy = b.flower_strategy()
    if strategy is None:
        pytest.skip("flwr not installed (optional extra osfl[fedavg])")
    got = b._aggregate(strategy, 1, states, [10, 20])
    assert all(np.allclose(g, e) for g, e in zip(got, expect))


def _small():
    d = ds.fashion_mnist_subset("train").subset(np.arange(0, 3000, 10))
    return b.to_tensor(d.images), d.labels


def test_fedavg_and_centralized_learn_and_count_bytes():
    x, y = _small()
    seen = []
    res = b.run_fedavg([(x[:150], y[:150]), (x[150:], y[150:])], 10, RECIPE, rounds=2, local_epochs=1,
                       report_rounds={1, 2}, on_round=lambda r, m: seen.append(r))
    assert seen == [1, 2]
    assert res["bytes_per_round_per_site"] == 2 * b.model_bytes(res["model"]) > 0
    cen = b.train_centralized(x, y, 10, RECIPE, epochs=3)
    assert len(cen["history"]) == 3 and 1 <= cen["best_epoch"] <= 3
    ev = b.evaluate(cen["model"], x, y, 10, RECIPE)
    assert ev["accuracy"] > 0.2 and len(ev["per_class"]) == 10


def test_holdout_is_stratified_and_disjoint():
    y = np.repeat(np.arange(3), 10)
    tr, va = b.holdout(y, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 30
    assert np.bincount(y[va]).tolist() == [2, 2, 2]


def test_to_tensor_shapes():
    assert b.to_tensor(np.zeros((2, 8, 8), np.uint8)).shape == (2, 3, 8, 8)
    assert b.to_tensor(np.zeros((2, 8, 8, 3), np.uint8)).shape == (2, 3, 8, 8)
    assert b.to_tensor(np.zeros((2, 8, 8), np.uint8)).dtype == torch.uint8
