"""Small, seeded experiments that lessons run and compare: the same model, data order and seeds.

Defined in lesson 01 (batch, stochastic and mini-batch gradient descent) and reused by later lessons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, batches

__all__ = [
    "RunLog",
    "softmax_regression",
    "full_loss",
    "run_minibatch",
    "per_example_grads",
    "minibatch_grad_variance",
    "predicted_grad_variance",
]


@dataclass
class RunLog:
    """What a run recorded at each evaluation: updates made, examples seen, loss on the full training set."""

    batch_size: int
    lr: float
    updates: list[int] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: float = float("nan")

    def first_reaching(self, target: float, axis: str = "updates") -> int | None:
        """The first recorded ``updates`` (or ``examples``) count at which the loss is <= ``target``."""
        xs = getattr(self, axis)
        return next((x for x, loss in zip(xs, self.train_loss) if loss <= target), None)


def softmax_regression(n_features: int, n_classes: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """A linear classifier trained with cross-entropy: a convex problem with one minimum value."""
    torch.manual_seed(seed)
    return nn.Linear(n_features, n_classes, dtype=dtype)


@torch.no_grad()
def full_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy over all of ``x``: the objective that every variant of gradient descent minimizes."""
    return F.cross_entropy(model(x), y).item()


def run_minibatch(
    split: Split,
    batch_size: int,
    lr: float,
    epochs: int,
    seed: int = 0,
    make_optimizer: Callable[[list[torch.Tensor], float], torch.optim.Optimizer] | None = None,
    evals_per_epoch: int = 20,
) -> RunLog:
    """Train softmax regression with mini-batches of ``batch_size`` and record the full training loss.

    ``batch_size = n`` is batch gradient descent, ``1`` is stochastic gradient descent, anything in
    between is mini-batch gradient descent. Each update uses the *mean* loss of its batch, so the
    learning rate means the same thing for every batch size. The model's initial weights and the
    shuffling depend only on ``seed``, so runs that differ in batch size see the same data in the same
    order. ``make_optimizer(params, lr)`` defaults to plain SGD.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    n = split.x_train.shape[0]
    model = softmax_regression(split.n_features, split.n_classes, seed, dtype=split.x_train.dtype)
    make_optimizer = make_optimizer or (lambda params, lr: torch.optim.SGD(params, lr=lr))
    opt = make_optimizer(list(model.parameters()), lr)
    generator = torch.Generator().manual_seed(seed)
    log = RunLog(batch_size=batch_size, lr=lr)
    eval_every = max(1, n // evals_per_epoch)  # in examples
    seen, next_eval, updates = 0, 0, 0
    for _ in range(epochs):
        for idx in batches(n, batch_size, generator):
            if seen >= next_eval:
                log.updates.append(updates)
                log.examples.append(seen)
                log.train_loss.append(full_loss(model, split.x_train, split.y_train))
                next_eval += eval_every
            opt.zero_grad()
            F.cross_entropy(model(split.x_train[idx]), split.y_train[idx]).backward()
            opt.step()
            updates += 1
            seen += len(idx)
    log.updates.append(updates)
    log.examples.append(seen)
    log.train_loss.append(full_loss(model, split.x_train, split.y_train))
    with torch.no_grad():
        log.test_accuracy = (model(split.x_test).argmax(1) == split.y_test).float().mean().item()
    return log


def per_example_grads(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of each example's loss for softmax regression, flattened: shape ``(n, n_params)``.

    For cross-entropy on logits ``z = W x + b`` the gradient is ``(p - onehot(y)) x^T`` for ``W`` and
    ``p - onehot(y)`` for ``b``, where ``p = softmax(z)``.
    """
    with torch.no_grad():
        r = F.softmax(model(x), dim=1) - F.one_hot(y, model.out_features).to(x.dtype)
        gw = r[:, :, None] * x[:, None, :]
        return torch.cat([gw.flatten(1), r], dim=1)


def minibatch_grad_variance(
    model: nn.Linear, x: torch.Tensor, y: torch.Tensor, batch_size: int, draws: int, generator: torch.Generator
) -> float:
    """Monte Carlo estimate of E||g_B - g||^2: how far a mini-batch gradient lands from the full gradient.

    Batches are drawn without replacement, as one shuffled epoch draws them.
    """
    g = per_example_grads(model, x, y)
    full = g.mean(0)
    n = g.shape[0]
    total = 0.0
    for _ in range(draws):
        idx = torch.randperm(n, generator=generator)[:batch_size]
        total += (g[idx].mean(0) - full).pow(2).sum().item()
    return total / draws


def predicted_grad_variance(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """The closed form of E||g_B - g||^2 for a batch of size B drawn without replacement from n examples.

    .. math:: \\mathbb{E}\\,\\lVert g_B - g\\rVert^2 = \\frac{\\operatorname{tr}\\Sigma}{B}\\,\\frac{n - B}{n - 1},
       \\qquad \\operatorname{tr}\\Sigma = \\frac{1}{n}\\sum_i \\lVert g_i - g\\rVert^2 .

    The noise falls as 1/B, and to exactly zero at B = n (batch gradient descent).
    """
    g = per_example_grads(model, x, y)
    n = g.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    trace = (g - g.mean(0)).pow(2).sum(1).mean().item()
    if n == 1:
        return 0.0
    return trace / batch_size * (n - batch_size) / (n - 1)
