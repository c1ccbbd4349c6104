"""Lesson 01's experiments: data, mini-batching, and the gradient-noise formula against exact enumeration."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import data, experiments


@pytest.fixture(scope="module")
def split():
    return data.load_digits(seed=0, dtype=torch.float64)


def test_digits_split_is_standardized_on_train_only(split):
    assert split.x_train.shape == (1437, 64) and split.x_test.shape == (360, 64)
    assert split.x_train.mean(0).abs().max() < 1e-10
    assert set(split.y_train.tolist()) == set(range(10))
    assert not torch.allclose(split.x_test.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-3)


def test_batches_cover_every_index_once():
    gen = torch.Generator().manual_seed(0)
    parts = list(data.batches(10, 3, gen))
    assert [len(p) for p in parts] == [3, 3, 3, 1]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batches(10, 0))


def test_full_batch_run_is_gradient_descent_on_the_mean_loss(split):
    lr, epochs = 0.5, 3
    log = experiments.run_minibatch(split, split.x_train.shape[0], lr, epochs, seed=3)
    model = experiments.softmax_regression(64, 10, seed=3, dtype=torch.float64)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    for _ in range(epochs):
        w.requires_grad_(True), b.requires_grad_(True)
        loss = F.cross_entropy(split.x_train @ w.T + b, split.y_train)
        gw, gb = torch.autograd.grad(loss, (w, b))
        w, b = (w - lr * gw).detach(), (b - lr * gb).detach()
    final = F.cross_entropy(split.x_train @ w.T + b, split.y_train).item()
    assert log.train_loss[-1] == pytest.approx(final, rel=1e-12)
    assert log.updates[-1] == epochs and log.examples[-1] == epochs * 1437


def test_runs_are_deterministic_and_seeds_matter(split):
    a = experiments.run_minibatch(split, 64, 0.3, 1, seed=0)
    b = experiments.run_minibatch(split, 64, 0.3, 1, seed=0)
    c = experiments.run_minibatch(split, 64, 0.3, 1, seed=1)
    assert a.train_loss == b.train_loss
    assert a.train_loss != c.train_loss


def test_first_reaching():
    log = experiments.RunLog(batch_size=1, lr=0.1, updates=[0, 5, 10], examples=[0, 5, 10], train_loss=[2.0, 0.5, 0.1])
    assert log.first_reaching(0.5) == 5
    assert log.first_reaching(0.01) is None


def test_per_example_grads_match_autograd():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    g = experiments.per_example_grads(model, x, y)
    for i in range(4):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected = torch.cat([model.weight.grad.flatten(), model.bias.grad])
        torch.testing.assert_close(g[i], expected)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 6])
def test_variance_formula_equals_exact_average_over_all_batches(batch_size):
    torch.manual_seed(1)
    n = 6
    model = torch.nn.Linear(4, 3).double()
    x, y = torch.randn(n, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    g = experiments.per_example_grads(model, x, y)
    full = g.mean(0)
    subsets = list(itertools.combinations(range(n), batch_size))
    exact = sum((g[list(s)].mean(0) - full).pow(2).sum().item() for s in subsets) / len(subsets)
    assert len(subsets) == math.comb(n, batch_size)
    assert experiments.predicted_grad_variance(model, x, y, batch_size) == pytest.approx(exact, rel=1e-12, abs=1e-15)


def test_monte_carlo_variance_agrees_with_formula(split):
    model = experiments.softmax_regression(64, 10).double()
    gen = torch.Generator().manual_seed(0)
    measured = experiments.minibatch_grad_variance(model, split.x_train, split.y_train, 16, 2000, gen)
    predicted = experiments.predicted_grad_variance(model, split.x_train, split.y_train, 16)
    assert measured == pytest.approx(predicted, rel=0.1)


def test_argument_errors(split):
    with pytest.raises(ValueError, match="epochs"):
        experiments.run_minibatch(split, 32, 0.1, 0)
    with pytest.raises(ValueError, match="lr"):
        experiments.run_minibatch(split, 32, -0.1, 1)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.5)
