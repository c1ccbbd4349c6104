"""Checks for the exercise on decoupled weight decay; the oracles are ``torch.optim.AdamW`` and
``torch.optim.Adam(weight_decay=...)``.

AdamW shrinks the weights directly, outside Adam's normalization (Loshchilov & Hutter, 2019):

.. math::
    \\theta \\leftarrow \\theta (1 - \\eta \\lambda), \\qquad
    \\theta \\leftarrow \\theta - \\eta\\, \\frac{\\hat m_t}{\\sqrt{\\hat v_t} + \\epsilon},

whereas Adam with L2 regularization adds :math:`\\lambda \\theta` to the gradient, so the decay is
divided by :math:`\\sqrt{\\hat v_t}` like the rest of the gradient.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ._core import DTYPE, Trials, describe, passed
from ._policy import policy
from .adam import ADAM_CLASSES, _check_adam_like, _random_adam_run, torch_adam_states

__all__ = ["adamw_step", "adam_l2_step", "adamw_shrink", "POLICY"]

POLICY = policy(
    "adamw_step", "adam_l2_step",
    forbid=ADAM_CLASSES,
    reason="the task is to write the update yourself (your adam_step from exercise 2 is yours to reuse)",
)  # fmt: skip
policy("adamw_shrink", reason="plain arithmetic is all it takes")

_L2_IN_ADAMW = (
    "m was computed from grad + weight_decay * theta: that is L2 regularization (Adam's weight_decay). "
    "In AdamW, m and v see the gradient only, and theta is multiplied by (1 - lr * weight_decay)."
)
_DECAY_SIGN = "the decay shrinks theta: multiply by (1 - lr * weight_decay), not (1 + lr * weight_decay)."
_DECAY_WITHOUT_LR = "scale the decay by the learning rate: theta * (1 - lr * weight_decay)."
_DECAY_AFTER = "decay theta as you were given it, then take the Adam step (torch.optim.AdamW's order)."
_DECOUPLED_IN_L2 = "add weight_decay * theta to the gradient first: m and v average grad + weight_decay * theta."


def _random_decay_run(run: Trials):
    hyper, theta, grads, first = _random_adam_run(run)
    hyper["weight_decay"] = run.log_uniform(1e-2, 1.0)
    betas = (hyper["beta1"], hyper["beta2"])
    torch_hyper = dict(lr=hyper["lr"], betas=betas, eps=hyper["eps"], weight_decay=hyper["weight_decay"])
    return hyper, torch_hyper, theta, grads, first


def adamw_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(theta, grad, m, v, t, *, lr, beta1, beta2, eps, weight_decay) -> (theta, m, v)``.

    Each trial compares a few steps with ``torch.optim.AdamW`` (random betas, eps, learning rate and
    a weight decay from 0.01 to 1). ``t`` counts steps from 1.
    """
    run = Trials("adamw_step", fn, seed, trials)
    for _ in run:
        hyper, torch_hyper, theta, grads, first = _random_decay_run(run)
        states = torch_adam_states(torch.optim.AdamW, theta, grads, **torch_hyper)
        lr, decay, beta1 = hyper["lr"], hyper["weight_decay"], hyper["beta1"]

        def hints(theta, grad, m, v, t, want):
            adam_move = theta * (1 - lr * decay) - want[0]  # the Adam part of the step
            m_l2 = beta1 * m + (1 - beta1) * (grad + decay * theta)
            return {
                "m": {_L2_IN_ADAMW: m_l2},
                "theta": {
                    _DECAY_SIGN: theta * (1 + lr * decay) - adam_move,
                    _DECAY_WITHOUT_LR: theta * (1 - decay) - adam_move,
                    _DECAY_AFTER: (theta - adam_move) * (1 - lr * decay),
                    "the weight decay is missing.": theta - adam_move,
                },
            }

        plain = {k: v for k, v in hyper.items() if k != "weight_decay"}
        _check_adam_like(run, fn, "adamw_step", states, theta, grads, first, plain, hints, weight_decay=decay)
    passed("adamw_step", f"{run.n} random runs match torch.optim.AdamW step by step")


def adam_l2_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(theta, grad, m, v, t, *, lr, beta1, beta2, eps, weight_decay) -> (theta, m, v)``:
    Adam with L2 regularization, the oracle being ``torch.optim.Adam(weight_decay=...)``.
    """
    run = Trials("adam_l2_step", fn, seed, trials)
    for _ in run:
        hyper, torch_hyper, theta, grads, first = _random_decay_run(run)
        states = torch_adam_states(torch.optim.Adam, theta, grads, **torch_hyper)
        decay, beta1 = hyper["weight_decay"], hyper["beta1"]

        def hints(theta, grad, m, v, t, want):
            return {"m": {_DECOUPLED_IN_L2: beta1 * m + (1 - beta1) * grad}}

        plain = {k: v for k, v in hyper.items() if k != "weight_decay"}
        _check_adam_like(run, fn, "adam_l2_step", states, theta, grads, first, plain, hints, weight_decay=decay)
    passed("adam_l2_step", f"{run.n} random runs match torch.optim.Adam(weight_decay=...) step by step")


def adamw_shrink(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(n_steps, lr, weight_decay) -> float``: the factor by which AdamW multiplies the weights
    after ``n_steps`` steps with zero gradient.

    The oracle runs ``torch.optim.AdamW`` on zero gradients and divides the final weight by the first.
    """
    run = Trials("adamw_shrink", fn, seed, trials)
    for _ in run:
        n_steps, lr, decay = run.integer(1, 200), run.log_uniform(1e-3, 1e-1), run.log_uniform(1e-2, 1.0)
        param = torch.ones(1, dtype=DTYPE, requires_grad=True)
        optimizer = torch.optim.AdamW([param], lr=lr, weight_decay=decay)
        for _ in range(n_steps):
            param.grad = torch.zeros_like(param)
            optimizer.step()
        inputs = describe(n_steps=n_steps, lr=lr, weight_decay=decay)
        got = run.call(fn, "adamw_shrink", inputs, n_steps, lr, decay)
        run.expect_close(
            "adamw_shrink",
            got,
            param.item(),
            inputs,
            hints={
                "each step multiplies by (1 - lr * weight_decay); compound it, don't use the exponential.": (
                    math.exp(-lr * decay * n_steps)
                ),
                "the factor per step is 1 - lr * weight_decay, with the learning rate in it.": (1 - decay) ** n_steps,
                "the factors multiply from step to step; they do not add up.": 1 - lr * decay * n_steps,
            },
        )
    passed("adamw_shrink", f"{run.n} random (n_steps, lr, weight_decay) match torch.optim.AdamW on zero gradients")
