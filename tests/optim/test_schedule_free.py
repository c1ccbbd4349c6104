"""ScheduleFreeAdamW against the paper's equations and the reference package ``schedulefree``.

The paper's equations are written out below in float64 (independent of both implementations);
the reference package, where installed, is a second oracle for the same trajectories (skipped
where it is not). The tiled loop against the plain one, the state-dict round trip in train mode,
bad hyperparameters and the other properties are in test_contract.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from course_lib.optim.schedule_free import ScheduleFreeAdamW
from optim_helpers import F64, SMALL, STEPS, clones, make_params, run, seeded_grads, two_groups, weights_only_round_trip


def lr_factor(t: int) -> float:
    return 1 / (1 + 0.05 * t)


def train(make_opt, params, steps: int = STEPS, start: int = 0, opt=None, eval_every: int = 0):
    """Steps with a scheduler; eval()/train() every ``eval_every`` steps (as a validation pass would).
    The last two parameters are in a group of their own at lr 5e-3; parameter 1 misses every third step."""
    opt = opt or make_opt(two_groups(params, 2, lr=5e-3))
    opt.train()

    def step(opt, params, t):
        opt.step()
        if eval_every and t % eval_every == 0:
            opt.eval()
            opt.train()

    return run(opt, params, steps, start=start, lr_lambda=lr_factor, step=step)


def paper_reference(params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0,
                    weight_lr_power=2.0):
    """Schedule-free AdamW (Defazio et al. 2024, Algorithm 1, with the package's warmup and
    weighting), one group schedule per param group; returns (y, x) after STEPS steps."""
    b1, b2 = betas
    groups = [[0, 1], [2, 3]]
    base_lr = [lr, 5e-3]
    y = [p.detach().clone() for p in params]
    z = [p.clone() for p in y]
    x = [p.clone() for p in y]
    v = [torch.zeros_like(p) for p in y]
    k, lr_max, weight_sum = [0, 0], [-1.0, -1.0], [0.0, 0.0]
    for t in range(STEPS):
        grads = seeded_grads(y, t)
        for gi, members in enumerate(groups):
            k[gi] += 1
            n = k[gi]
            gamma = base_lr[gi] * lr_factor(t) * (min(1.0, n / warmup_steps) if warmup_steps else 1.0)
            lr_max[gi] = max(lr_max[gi], gamma)
            weight = n**r * lr_max[gi] ** weight_lr_power
            weight_sum[gi] += weight
            c = weight / weight_sum[gi]
            for i in members:
                g = grads[i]
                if g is None:
                    continue
                v[i] = b2 * v[i] + (1 - b2) * g * g
                z[i] = z[i] - gamma * (g / (torch.sqrt(v[i] / (1 - b2**n)) + eps) + weight_decay * y[i])
                x[i] = (1 - c) * x[i] + c * z[i]
                y[i] = b1 * x[i] + (1 - b1) * z[i]
    return y, x


CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1, warmup_steps=5),
    dict(lr=0.02, betas=(0.5, 0.9), eps=1e-3, r=1.0, weight_lr_power=0.0),
    dict(lr=0.01, warmup_steps=30, weight_lr_power=1.0),
]


@pytest.mark.parametrize("foreach", [False, None])
@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_trajectory_follows_the_papers_equations(config, foreach):
    params = make_params(SMALL, dtype=F64)
    opt = train(lambda g: ScheduleFreeAdamW(g, foreach=foreach, **config), params, eval_every=4)
    y, x = paper_reference(make_params(SMALL, dtype=F64), **config)
    for p, q in zip(params, y):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)
    opt.eval()
    for p, q in zip(params, x):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
@pytest.mark.parametrize("reference", ["AdamWScheduleFree", "AdamWScheduleFreeReference"])
def test_trajectory_equals_the_schedulefree_package(config, reference):
    schedulefree = pytest.importorskip("schedulefree", reason="the reference package is an optional oracle")
    ours, ref = make_params(SMALL, dtype=F64), make_params(SMALL, dtype=F64)
    opt = train(lambda g: ScheduleFreeAdamW(g, **config), ours)
    ref_opt = train(lambda g: getattr(schedulefree, reference)(g, foreach=False, **config), ref)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    opt.eval()
    ref_opt.eval()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_defaults_are_the_schedulefree_packages():
    schedulefree = pytest.importorskip("schedulefree", reason="the reference package is an optional oracle")
    theirs = inspect.signature(schedulefree.AdamWScheduleFree).parameters
    ours = inspect.signature(ScheduleFreeAdamW).parameters
    for name in ("lr", "betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power"):
        assert ours[name].default == theirs[name].default, name


def test_eval_puts_x_in_and_train_restores_y_bit_for_bit():
    params = make_params(SMALL, dtype=F64)
    opt = train(lambda g: ScheduleFreeAdamW(g, lr=0.01), params)
    y = [p.detach().clone() for p in params]
    opt.eval()
    for p in params:
        assert torch.equal(p, opt.state[p]["x"])
        assert not torch.equal(p, opt.state[p]["z"])
    opt.eval()  # a second eval() changes nothing
    assert all(torch.equal(p, opt.state[p]["x"]) for p in params)
    opt.train()
    for p, before in zip(params, y):
        assert torch.equal(p, before)
    opt.train()
    assert all(torch.equal(p, before) for p, before in zip(params, y))


def test_step_in_eval_mode_is_an_error():
    p = torch.ones(3, requires_grad=True)
    opt = ScheduleFreeAdamW([p])
    p.grad = torch.ones(3)
    opt.step()  # the optimizer starts in train mode
    opt.eval()
    with pytest.raises(RuntimeError, match=r"eval mode: call optimizer.train\(\)"):
        opt.step()
    opt.train()
    opt.step()
    assert opt.param_groups[0]["k"] == 2


def test_constant_lr_averages_all_iterates_equally():
    """With r = 0 and a constant rate, c_t = 1/t: x_t is the plain mean of z_1 ... z_t."""
    p = torch.tensor([2.0, -1.0, 0.5], dtype=F64, requires_grad=True)
    opt = ScheduleFreeAdamW([p], lr=0.1)
    zs = []
    for t in range(10):
        p.grad = torch.sin(p.detach() * (t + 1))
        opt.step()
        assert opt.param_groups[0]["average_weight"] == pytest.approx(1 / (t + 1), rel=1e-15)
        zs.append(opt.state[p]["z"].clone())
    torch.testing.assert_close(opt.state[p]["x"], torch.stack(zs).mean(0), rtol=1e-13, atol=1e-15)


def test_warmup_ramps_the_rate_and_weights_the_average_by_lr_squared():
    p = torch.ones(2, dtype=F64, requires_grad=True)
    opt = ScheduleFreeAdamW([p], lr=0.04, warmup_steps=4)
    lrs, weights = [], []
    for _ in range(6):
        p.grad = torch.ones(2, dtype=F64)
        opt.step()
        lrs.append(opt.param_groups[0]["scheduled_lr"])
        weights.append(opt.param_groups[0]["average_weight"])
    assert lrs == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.04, 0.04], rel=1e-15)
    squares = [lr**2 for lr in lrs]
    assert weights == pytest.approx([w / sum(squares[: i + 1]) for i, w in enumerate(squares)], rel=1e-13)


def test_a_state_saved_in_eval_mode_resumes_after_train():
    """Saved after eval() (as a checkpoint is): the loaded optimizer is in eval mode, and after train() the
    run resumes exactly (a state saved in train mode: test_contract.py)."""
    make = lambda g: ScheduleFreeAdamW(g, lr=0.01, weight_decay=0.1, warmup_steps=3)  # noqa: E731
    straight = make_params(SMALL, dtype=F64)
    train(make, straight, steps=10)

    params = make_params(SMALL, dtype=F64)
    opt = train(make, params, steps=5)
    opt.eval()
    saved = weights_only_round_trip(opt.state_dict())
    fresh = clones(params)
    new = make([{"params": fresh[:2]}, {"params": fresh[2:]}])
    new.load_state_dict(saved)
    assert new.param_groups[0]["train_mode"] is False
    train(None, fresh, steps=5, start=5, opt=new)  # train() calls opt.train() first
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)
