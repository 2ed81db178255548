"""Baselines: Flower's FedAvg and FedProx, the proximal term, tuning on the sites' held-out images."""
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
    for name in b.STRATEGIES:
        strategy = b.flower_strategy(name, mu=0.1)
        if strategy is None:
            pytest.skip("flwr not installed (optional extra osfl[fedavg])")
        got = b._aggregate(strategy, 1, states, [10, 20])
        assert all(np.allclose(g, e) for g, e in zip(got, expect))
    assert b.flower_strategy("fedprox", mu=0.25).proximal_mu == 0.25
    with pytest.raises(ValueError, match="unknown strategy"):
        b.flower_strategy("scaffold")


def _small():
    d = ds.fashion_mnist_subset("train").subset(np.arange(0, 3000, 10))
    return b.to_tensor(d.images), d.labels


def _sites():
    x, y = _small()
    return [(x[:150], y[:150]), (x[150:], y[150:])]


def test_fedavg_and_centralized_learn_and_count_bytes():
    x, y = _small()
    seen = []
    run = b.run_federated(_sites(), 10, RECIPE, rounds=2, local_epochs=1, report_rounds={1, 2},
                          on_round=lambda r, m: seen.append(r), keep_states=True)
    assert seen == [1, 2] and sorted(run.states) == [1, 2]
    assert run.bytes_per_round_per_site == 2 * b.model_bytes(run.model) > 0
    cen = b.train_centralized(x, y, 10, RECIPE, epochs=3)
    assert len(cen["history"]) == 3 and 1 <= cen["best_epoch"] <= 3
    ev = b.evaluate(cen["model"], x, y, 10, RECIPE)
    assert ev["accuracy"] > 0.2 and len(ev["per_class"]) == 10


def test_centralized_selects_on_the_given_held_out_images():
    x, y = _small()
    cen = b.train_centralized(x[:200], y[:200], 10, RECIPE, epochs=2, val=(x[200:], y[200:]))
    best = max(h["val_acc"] for h in cen["history"])
    assert cen["val_acc"] == best
    assert abs(b.evaluate(cen["model"], x[200:], y[200:], 10, RECIPE)["accuracy"] - best) < 1e-9


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fedprox_with_mu_zero_is_fedavg_and_a_large_mu_stays_near_the_global_model():
    sites = _sites()
    start = _flat(b.new_classifier(10, RECIPE))
    avg = b.run_federated(sites, 10, RECIPE, rounds=1, local_epochs=2, strategy="fedavg")
    prox0 = b.run_federated(sites, 10, RECIPE, rounds=1, local_epochs=2, strategy="fedprox", mu=0.0)
    prox = b.run_federated(sites, 10, RECIPE, rounds=1, local_epochs=2, strategy="fedprox", mu=10.0)
    assert torch.equal(_flat(avg.model), _flat(prox0.model))
    assert (_flat(prox.model) - start).norm() < 0.8 * (_flat(avg.model) - start).norm()


def test_proximal_term_by_hand():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
    term = b.proximal_term([torch.tensor([[0.0, 1.0]])], mu=0.5)
    assert float(term(model).detach()) == pytest.approx(0.5 * 0.5 * (1.0 + 4.0))


def test_split_sites_holds_out_each_sites_share_disjointly():
    x, y = _small()
    sites = [(x[:100], y[:100]), (x[100:], y[100:])]
    train, val = b.split_sites(sites, 0.2, seed=0)
    for (xt, yt), (xv, yv), (xs, ys) in zip(train, val, sites):
        assert len(yt) + len(yv) == len(ys)
        assert 0.1 < len(yv) / len(ys) < 0.3
        assert sorted(np.concatenate([yt, yv]).tolist()) == sorted(np.asarray(ys).tolist())
        for c in np.unique(ys):  # each class of the site keeps at least one image for training
            assert (yt == c).sum() >= 1


def test_tuning_chooses_on_held_out_images_and_runs_the_choice_to_all_rounds():
    sites = _sites()
    train, val = b.split_sites(sites, 0.2, seed=0)
    tuned = b.tune_federated(train, val, 10, RECIPE, strategy="fedavg", local_epochs=1, rounds=3,
                             report_rounds=(1, 3), lrs=(1e-7, 0.05), tune_rounds=1)
    assert [t["lr"] for t in tuned.tried] == [1e-7, 0.05]
    assert tuned.lr == 0.05  # a learning rate of 1e-7 learns nothing in one round
    assert tuned.val_acc == max(t["val_acc"] for t in tuned.tried)
    assert sorted(tuned.run.states) == [1, 3] and sorted(tuned.run.val_acc) == [1, 3]
    prox = b.tune_federated(train, val, 10, RECIPE, strategy="fedprox", local_epochs=1, rounds=1,
                            report_rounds=(1,), lrs=(0.05,), mus=(0.01, 1.0))
    assert [(t["lr"], t["mu"]) for t in prox.tried] == [(0.05, 0.01), (0.05, 1.0)]
    assert prox.mu in (0.01, 1.0) and sorted(prox.run.states) == [1]


def test_holdout_is_stratified_and_disjoint():
    y = np.repeat(np.arange(3), 10)
    tr, va = b.holdout(y, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 30
    assert np.bincount(y[va]).tolist() == [2, 2, 2]


def test_to_tensor_shapes():
    assert b.to_tensor(np.zeros((2, 8, 8), np.uint8)).shape == (2, 3, 8, 8)
    assert b.to_tensor(np.zeros((2, 8, 8, 3), np.uint8)).shape == (2, 3, 8, 8)
    assert b.to_tensor(np.zeros((2, 8, 8), np.uint8)).dtype == torch.uint8


def test_baselines_train_where_the_recipe_says():
    from server_daemon.training import TrainingError

    assert b.policy_for(RECIPE.replace(device="cpu")).device.type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert b.policy_for(RECIPE).device.type == expected  # "auto"
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            b.policy_for(RECIPE.replace(device="cuda"))
    run = b.run_federated(_sites(), 10, RECIPE, rounds=1, local_epochs=1)
    assert next(run.model.parameters()).device.type == "cpu"  # models come back on the CPU
