"""LAMB: its trajectories against the paper's algorithm written out plainly, closed-form first steps, zero norms.

The reference is LAMB (You et al. 2020, Algorithm 2) one tensor at a time in float64, without the
library. With adaptation switched off, LAMB is torch.optim.AdamW. The state-dict round trip,
maximize, bad hyperparameters and the other properties are in test_contract.py.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from course_lib.optim.lamb import LAMB
from optim_helpers import F64, SMALL, STEPS, Zeros, decay, make_params, run, seeded_grads, two_groups

SHAPES = (*SMALL[:3], Zeros((6,)))  # the vector is a fresh bias of zeros: no norm to trust
#: Seeded noise of very different scales per parameter plus a pull towards 0; parameter 1 misses every
#: third step.
GRADS = partial(seeded_grads, scale=lambda i, p: 10.0 ** (i - 2))


def train(make_opt, params: list[torch.Tensor], group_options: dict, steps: int = STEPS) -> torch.optim.Optimizer:
    """The first two parameters in a group with the optimizer's options, the others with ``group_options``."""
    return run(make_opt(two_groups(params, 2, **group_options)), params, steps, grads=GRADS)


def reference_lamb(params, group_options, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                   bias_correction=True, clamp_value=None):
    """LAMB (You et al. 2020, Algorithm 2) for the same groups, gradients and schedule, plainly."""
    b1, b2 = betas
    theta = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    count = [0] * len(theta)
    for t in range(STEPS):
        for i, g in enumerate(GRADS(theta, t)):
            if g is None:
                continue
            options = dict(lr=lr, weight_decay=weight_decay, adapt=True)
            if i >= 2:
                options.update(group_options)
            count[i] += 1
            n = count[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**n) if bias_correction else m[i]
            v_hat = v[i] / (1 - b2**n) if bias_correction else v[i]
            u = m_hat / (torch.sqrt(v_hat) + eps) + options["weight_decay"] * theta[i]
            w_norm = math.sqrt(float((theta[i] ** 2).sum()))
            if clamp_value is not None:
                w_norm = min(w_norm, clamp_value)
            u_norm = math.sqrt(float((u**2).sum()))
            ratio = w_norm / u_norm if options["adapt"] and w_norm > 0 and u_norm > 0 else 1.0
            theta[i] = theta[i] - options["lr"] * decay(t) * ratio * u
    return theta


LAMB_CASES = [
    (dict(lr=0.01), {}),
    (dict(lr=0.01, weight_decay=0.1), {"weight_decay": 0.0, "adapt": False}),
    (dict(lr=0.01, weight_decay=0.1, clamp_value=0.5), {"lr": 0.02}),
    (dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3, bias_correction=False), {"weight_decay": 0.3}),
]


@pytest.mark.parametrize("config, group_options", LAMB_CASES, ids=[str(c) for c, _ in LAMB_CASES])
def test_lamb_follows_the_plain_reference(config, group_options):
    params = make_params(SHAPES, dtype=F64)
    opt = train(lambda g: LAMB(g, **config), params, group_options)
    expected = reference_lamb(make_params(SHAPES, dtype=F64), group_options, **config)
    for p, q in zip(params, expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)
    assert opt.state[params[3]]["step"] == STEPS


def test_lamb_first_step_in_closed_form():
    """Step 1 with bias correction and eps = 0: u = g / |g| = sign(g), so each tensor moves by
    lr * ||theta|| * sign(g) / sqrt(n), whatever the scale of its gradient."""
    gen = torch.Generator().manual_seed(3)
    theta0 = [torch.randn(4, 5, generator=gen, dtype=F64), torch.randn(7, generator=gen, dtype=F64)]
    grads = [1e-4 * torch.randn(4, 5, generator=gen, dtype=F64), 1e3 * torch.randn(7, generator=gen, dtype=F64)]
    params = [t.clone().requires_grad_() for t in theta0]
    opt = LAMB(params, lr=0.1, eps=0.0)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    for p, t0, g in zip(params, theta0, grads):
        expected = t0 - 0.1 * t0.norm() * torch.sign(g) / math.sqrt(t0.numel())
        torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=1e-15)
        assert float((p.detach() - t0).norm()) == pytest.approx(0.1 * float(t0.norm()), rel=1e-13)


def test_lamb_moves_each_tensor_by_lr_times_its_norm_every_step():
    params = make_params(SHAPES, dtype=F64)[:3]
    opt = LAMB(params, lr=0.01, betas=(0.8, 0.9))
    for t in range(6):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, GRADS(params, t)):
            p.grad = g
        opt.step()
        for p, b in zip(params, before):
            if p.grad is not None:
                assert float((p.detach() - b).norm()) == pytest.approx(0.01 * float(b.norm()), rel=1e-10)


def test_lamb_zero_norms_fall_back_to_ratio_one():
    zero_weight = torch.zeros(5, dtype=F64, requires_grad=True)  # ||theta|| = 0: the AdamW step
    zero_grad = torch.ones(5, dtype=F64, requires_grad=True)     # u = 0 (eps > 0): no move, no NaN
    opt = LAMB([{"params": [zero_weight], "eps": 0.0}, {"params": [zero_grad]}], lr=0.01)
    zero_weight.grad = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0], dtype=F64)
    zero_grad.grad = torch.zeros(5, dtype=F64)
    opt.step()
    torch.testing.assert_close(zero_weight.detach(), -0.01 * torch.sign(zero_weight.grad), rtol=0, atol=1e-16)
    assert torch.equal(zero_grad.detach(), torch.ones(5, dtype=F64))


def test_lamb_without_adaptation_is_adamw():
    ours, ref = make_params(SHAPES, dtype=F64), make_params(SHAPES, dtype=F64)
    train(lambda g: LAMB(g, lr=0.01, weight_decay=0.1, eps=1e-8, adapt=False), ours, {"weight_decay": 0.2})
    train(lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.1, eps=1e-8, foreach=False), ref, {"weight_decay": 0.2})
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
