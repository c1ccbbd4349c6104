"""Lookahead against a hand-written Lookahead loop (Zhang et al. 2019, Algorithm 1) around torch.optim and
course_lib optimizers, and its wrapper's duties (shared param groups, state dict, copies, GradScaler).

Bad k and alpha, the closure, maximize and the other properties of Lookahead(AdamW) are in
test_contract.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from course_lib.optim.adam import Adam
from course_lib.optim.lookahead import Lookahead
from optim_helpers import F64, SMALL, clones, decay, make_params, seeded_grads, set_grads, weights_only_round_trip
from optim_helpers import run as run_steps

STEPS = 23  # not a multiple of k: the run ends between two slow updates


def groups(params: list[torch.Tensor]) -> list[dict]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int = STEPS, start: int = 0):
    """Seeded gradients (parameter 1 misses every third step) under a LambdaLR schedule."""
    return run_steps(opt, params, steps, start=start)


def hand_written_lookahead(make_inner, k: int, alpha: float) -> list[torch.Tensor]:
    """Zhang et al. 2019, Algorithm 1: k fast steps of the inner optimizer, then
    slow <- slow + alpha (fast - slow), fast <- slow."""
    fast = make_params(SMALL, dtype=F64)
    slow = [p.detach().clone() for p in fast]
    inner = make_inner(groups(fast))
    sched = torch.optim.lr_scheduler.LambdaLR(inner, decay)
    for t in range(STEPS):
        set_grads(fast, seeded_grads(fast, t))
        inner.step()
        sched.step()
        if (t + 1) % k == 0:
            with torch.no_grad():
                for p, s in zip(fast, slow):
                    s += alpha * (p - s)
                    p.copy_(s)
    return fast


INNER = {
    "SGD": lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, foreach=False),
    "Adam": lambda g: torch.optim.Adam(g, lr=0.01, foreach=False),
    "course Adam": lambda g: Adam(g, lr=0.01),
}


@pytest.mark.parametrize("k, alpha", [(5, 0.5), (1, 0.8), (3, 0.25)])
@pytest.mark.parametrize("inner", list(INNER))
def test_trajectory_equals_the_hand_written_loop(inner, k, alpha):
    params = make_params(SMALL, dtype=F64)
    opt = run(Lookahead(INNER[inner](groups(params)), k=k, alpha=alpha), params)
    expected = hand_written_lookahead(INNER[inner], k, alpha)
    for p, q in zip(params, expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-14)
    assert opt.fast_steps == STEPS


def test_alpha_one_is_the_inner_optimizer_alone():
    params, ref = make_params(SMALL, dtype=F64), make_params(SMALL, dtype=F64)
    run(Lookahead(torch.optim.SGD(groups(params), lr=0.05, momentum=0.9), k=4, alpha=1.0), params)
    run(torch.optim.SGD(groups(ref), lr=0.05, momentum=0.9), ref)
    for p, q in zip(params, ref):
        assert torch.equal(p, q)


def test_alpha_zero_returns_to_the_start_every_k_steps():
    params = make_params(SMALL, dtype=F64)
    start = [p.detach().clone() for p in params]
    opt = Lookahead(torch.optim.SGD(groups(params), lr=0.05), k=4, alpha=0.0)
    for t in range(8):
        set_grads(params, seeded_grads(params, t))
        opt.step()
        assert all(torch.equal(p, s) for p, s in zip(params, start)) == ((t + 1) % 4 == 0)


def test_param_groups_are_shared_so_schedulers_reach_the_inner_optimizer():
    params = make_params(SMALL, dtype=F64)
    inner = torch.optim.SGD(groups(params), lr=0.1)
    opt = Lookahead(inner, k=3)
    assert opt.param_groups is inner.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    set_grads(params, seeded_grads(params, 0))
    opt.step()
    sched.step()
    assert [g["lr"] for g in inner.param_groups] == [0.05, 0.01]
    extra = torch.zeros(2, dtype=F64, requires_grad=True)
    opt.add_param_group({"params": [extra], "lr": 0.3})
    assert inner.param_groups[-1]["params"] == [extra] and inner.param_groups[-1]["momentum"] == 0
    extra.grad = torch.ones(2, dtype=F64)
    opt.step()  # the new parameter's slow copy is taken before its first step
    assert torch.equal(opt.state[extra]["slow"], torch.zeros(2, dtype=F64))
    assert torch.equal(extra.detach(), torch.full((2,), -0.3, dtype=F64))


def test_closure_and_zero_grad_go_through():
    p = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    opt = Lookahead(torch.optim.SGD([p], lr=0.1))

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 2.0
    torch.testing.assert_close(p.detach(), torch.tensor([0.8, -0.8], dtype=F64))
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("inner", ["SGD", "course Adam"])
def test_state_dict_brings_k_alpha_and_the_inner_state(inner):
    """A wrapper built with other k and alpha takes the saved ones, and the resumed run is the uninterrupted one
    (around torch's SGD too; the round trip around course_lib's AdamW is in test_contract.py)."""
    straight = make_params(SMALL, dtype=F64)
    run(Lookahead(INNER[inner](groups(straight)), k=3, alpha=0.6), straight, steps=14)

    params = make_params(SMALL, dtype=F64)
    opt = run(Lookahead(INNER[inner](groups(params)), k=3, alpha=0.6), params, steps=7)
    saved = weights_only_round_trip(opt.state_dict())
    fresh = clones(params)
    new = Lookahead(INNER[inner](groups(fresh)), k=5, alpha=0.1)  # k and alpha come from the state
    new.load_state_dict(saved)
    assert (new.k, new.alpha, new.fast_steps) == (3, 0.6, 7)
    assert new.param_groups is new.optimizer.param_groups
    assert len(new.optimizer.state) == len(opt.optimizer.state)  # the inner state came along
    run(new, fresh, steps=7, start=7)
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)


def test_a_deep_copy_steps_like_the_original():
    params = make_params(SMALL, dtype=F64)
    opt = run(Lookahead(torch.optim.SGD(groups(params), lr=0.05, momentum=0.9), k=3), params, steps=4)
    twin = copy.deepcopy(opt)
    twin_params = [p for group in twin.param_groups for p in group["params"]]
    assert twin.param_groups is twin.optimizer.param_groups and twin.k == 3 and twin.fast_steps == 4
    run(opt, params, steps=5, start=4)
    run(twin, twin_params, steps=5, start=4)
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q) and p is not q


def test_grad_scaler_skips_the_whole_step_on_inf():
    p = torch.ones(3, requires_grad=True)
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=1, alpha=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale((p**2).sum()).backward()
    p.grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), torch.ones(3)) and opt.fast_steps == 0
    opt.zero_grad()
    scaler.scale((p**2).sum()).backward()
    scaler.step(opt)
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))  # slow 1 -> 1 + 0.5 (0.8 - 1)


def test_the_inner_optimizer_must_be_an_optimizer():
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        Lookahead([torch.zeros(2, requires_grad=True)])
