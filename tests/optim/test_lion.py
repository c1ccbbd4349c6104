"""Lion against the reference package lion-pytorch (skipped where it is not installed), the paper's first
step in closed form, and its steps of exactly lr.

The fast paths against the loop, maximize, the state-dict round trip, bad hyperparameters and the
other properties are in test_contract.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from course_lib.optim.lion import Lion
from optim_helpers import F64, SMALL, STEPS, make_params, run, two_groups


def train(make_opt, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """STEPS steps of seeded gradients (parameter 1 misses every third), the last two parameters at lr 2e-3."""
    return run(make_opt(two_groups(params, 2, lr=2e-3)), params)


CONFIGS = [dict(lr=1e-3), dict(lr=1e-3, weight_decay=0.5), dict(lr=1e-3, betas=(0.5, 0.9), weight_decay=0.1),
           dict(lr=1e-3, betas=(0.0, 0.0))]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
@pytest.mark.parametrize("foreach", [False, True, None])
def test_trajectory_equals_lion_pytorch_in_float64(config, foreach):
    """On every path (loop, foreach kernels, tiled loop): bit for bit lion-pytorch's trajectory and state."""
    lion_pytorch = pytest.importorskip("lion_pytorch", reason="lion-pytorch is the test oracle for Lion")
    ours, ref = make_params(SMALL, dtype=F64), make_params(SMALL, dtype=F64)
    opt = train(lambda g: Lion(g, foreach=foreach, **config), ours)
    ref_opt = train(lambda g: lion_pytorch.Lion(g, **config), ref)
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg"], ref_opt.state[q]["exp_avg"])
    assert opt.state[ours[1]]["step"] == sum(1 for t in range(STEPS) if t % 3 != 0)


def test_defaults_are_the_papers_and_lion_pytorchs():
    lion_pytorch = pytest.importorskip("lion_pytorch", reason="lion-pytorch is the test oracle for Lion")
    ours = Lion([torch.zeros(1, requires_grad=True)]).defaults
    theirs = inspect.signature(lion_pytorch.Lion).parameters
    assert ours["lr"] == theirs["lr"].default == 1e-4
    assert tuple(ours["betas"]) == tuple(theirs["betas"].default) == (0.9, 0.99)
    assert ours["weight_decay"] == theirs["weight_decay"].default == 0.0


def test_first_step_in_closed_form():
    """m_0 = 0, so c_1 = (1 - beta1) g: the first step is -lr * sign(g) after the decay."""
    lr, wd, beta2 = 0.01, 0.3, 0.99
    theta0 = torch.tensor([1.5, -2.0, 0.25, 3.0], dtype=torch.float64)
    g = torch.tensor([0.2, -1e-9, 0.0, -4.0], dtype=torch.float64)
    p = theta0.clone().requires_grad_()
    opt = Lion([p], lr=lr, weight_decay=wd)
    p.grad = g.clone()
    opt.step()
    expected = theta0 * (1 - lr * wd) - lr * torch.tensor([1.0, -1.0, 0.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - beta2) * g, rtol=0, atol=0)


def test_every_coordinate_moves_by_exactly_lr_without_decay():
    p = torch.randn(50, dtype=torch.float64, requires_grad=True)
    opt = Lion([p], lr=0.125)
    for t in range(5):
        before = p.detach().clone()
        p.grad = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
        opt.step()
        moves = (p.detach() - before).abs()
        torch.testing.assert_close(moves, torch.full((50,), 0.125, dtype=torch.float64), rtol=0, atol=1e-15)
