"""LARS: its trajectories against the paper's algorithm written out plainly, closed-form first steps, zero norms.

The reference is LARS (You, Gitman & Ginsburg 2017, Algorithm 1) one tensor at a time in float64,
without the library. With adaptation switched off, LARS is torch.optim.SGD. The state-dict round
trip, maximize, bad hyperparameters and the other properties are in test_contract.py.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from course_lib.optim.lars import LARS
from optim_helpers import F64, SMALL, STEPS, Zeros, decay, make_params, run, seeded_grads, two_groups

SHAPES = (*SMALL[:3], Zeros((6,)))  # the vector is a fresh bias of zeros: no norm to trust
#: Seeded noise of very different scales per parameter plus a pull towards 0; parameter 1 misses every
#: third step.
GRADS = partial(seeded_grads, scale=lambda i, p: 10.0 ** (i - 2))


def train(make_opt, params: list[torch.Tensor], group_options: dict, steps: int = STEPS) -> torch.optim.Optimizer:
    """The first two parameters in a group with the optimizer's options, the others with ``group_options``."""
    return run(make_opt(two_groups(params, 2, **group_options)), params, steps, grads=GRADS)


def reference_lars(params, group_options, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3,
                   nesterov=False):
    """LARS (You et al. 2017, Algorithm 1) for the same groups, gradients and schedule, plainly;
    the momentum buffer starts at the first step's direction, as in torch.optim.SGD."""
    theta = [p.detach().clone() for p in params]
    buf: list[torch.Tensor | None] = [None] * len(theta)
    for t in range(STEPS):
        for i, g in enumerate(GRADS(theta, t)):
            if g is None:
                continue
            options = dict(lr=lr, weight_decay=weight_decay, adapt=True)
            if i >= 2:
                options.update(group_options)
            beta = options["weight_decay"]
            w_norm = math.sqrt(float((theta[i] ** 2).sum()))
            g_norm = math.sqrt(float((g**2).sum()))
            local = trust_coefficient * w_norm / (g_norm + beta * w_norm)
            if not options["adapt"] or w_norm == 0 or g_norm == 0:
                local = 1.0
            d = local * (g + beta * theta[i])
            buf[i] = d if buf[i] is None else momentum * buf[i] + d
            step = d + momentum * buf[i] if nesterov else buf[i]
            theta[i] = theta[i] - options["lr"] * decay(t) * step
    return theta


LARS_CASES = [
    (dict(lr=2.0), {}),
    (dict(lr=2.0, weight_decay=0.01), {"weight_decay": 0.0, "adapt": False, "lr": 0.1}),
    (dict(lr=1.0, momentum=0.5, nesterov=True, trust_coefficient=0.02, weight_decay=0.05), {}),
    (dict(lr=1.0, momentum=0.0, trust_coefficient=0.01), {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("config, group_options", LARS_CASES, ids=[str(c) for c, _ in LARS_CASES])
def test_lars_follows_the_plain_reference(config, group_options):
    params = make_params(SHAPES, dtype=F64)
    train(lambda g: LARS(g, **config), params, group_options)
    expected = reference_lars(make_params(SHAPES, dtype=F64), group_options, **config)
    for p, q in zip(params, expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


def test_lars_first_step_in_closed_form():
    """theta_1 = theta_0 - lr * eta * ||w|| / (||g|| + beta ||w||) * (g + beta w)."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(6, 3, generator=gen, dtype=F64)
    g = 50 * torch.randn(6, 3, generator=gen, dtype=F64)
    lr, eta, beta = 2.0, 1e-3, 5e-4
    p = w.clone().requires_grad_()
    opt = LARS([p], lr=lr, trust_coefficient=eta, weight_decay=beta)
    p.grad = g.clone()
    opt.step()
    local = eta * w.norm() / (g.norm() + beta * w.norm())
    torch.testing.assert_close(p.detach(), w - lr * local * (g + beta * w), rtol=1e-14, atol=1e-15)


def test_lars_first_step_does_not_depend_on_the_gradient_scale():
    """Without decay the local rate divides by ||g||: the step is lr * eta * ||w|| * g / ||g||."""
    gen = torch.Generator().manual_seed(5)
    w, g = torch.randn(10, generator=gen, dtype=F64), torch.randn(10, generator=gen, dtype=F64)
    moved = []
    for scale in (1e-6, 1.0, 1e6):
        p = w.clone().requires_grad_()
        p.grad = scale * g
        LARS([p], lr=1.0).step()
        moved.append(p.detach())
    torch.testing.assert_close(moved[0], moved[2], rtol=1e-14, atol=0)
    torch.testing.assert_close(moved[1], w - 1e-3 * w.norm() * g / g.norm(), rtol=1e-14, atol=1e-16)


def test_lars_zero_norms_fall_back_to_local_rate_one():
    zero_weight = torch.zeros(4, dtype=F64, requires_grad=True)
    zero_grad = torch.ones(4, dtype=F64, requires_grad=True)
    opt = LARS([zero_weight, zero_grad], lr=0.1, weight_decay=0.5)
    zero_weight.grad = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=F64)
    zero_grad.grad = torch.zeros(4, dtype=F64)
    opt.step()
    torch.testing.assert_close(zero_weight.detach(), -0.1 * zero_weight.grad, rtol=0, atol=1e-16)
    torch.testing.assert_close(zero_grad.detach(), torch.full((4,), 1 - 0.1 * 0.5, dtype=F64), rtol=0, atol=1e-16)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_without_adaptation_is_sgd(nesterov):
    ours, ref = make_params(SHAPES, dtype=F64), make_params(SHAPES, dtype=F64)
    config = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    train(lambda g: LARS(g, adapt=False, **config), ours, {"weight_decay": 0.0})
    train(lambda g: torch.optim.SGD(g, foreach=False, **config), ref, {"weight_decay": 0.0})
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_lars_momentum_switched_on_later_follows_the_base_rule():
    """Momentum 0, then 0.9 from step 4: the buffer starts at zero then (the base class's rule). Oracle:
    LARS without adaptation is SGD, and torch's SGD given a zero buffer at that step does the same."""
    def trajectory(make, inject):
        p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        opt = make([p])
        for t in range(8):
            if t == 3:
                opt.param_groups[0]["momentum"] = 0.9
                if inject:
                    opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
            p.grad = torch.sin(torch.arange(3.0, dtype=torch.float64) + t) + p.detach()
            opt.step()
        return p.detach()

    ours = trajectory(lambda ps: LARS(ps, lr=0.1, momentum=0.0, adapt=False), inject=False)
    theirs = trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.0, foreach=False), inject=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
