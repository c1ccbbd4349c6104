"""course_lib.schedules against torch's own schedulers, closed forms and round trips."""

import io
import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch.optim import lr_scheduler as tls

from course_lib.schedules import (
    ParamGroupScheduler,
    WarmupCosineLR,
    WarmupPolyLR,
    plot_schedule,
    warmup_cosine_factor,
    warmup_poly_factor,
)


def make_optimizer(lrs=(0.5,), cls=torch.optim.SGD, **kwargs):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return cls(groups, **kwargs)


def trajectory(scheduler, optimizer, steps):
    """LR of every group used by optimizer steps 0 .. steps-1."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def assert_trajectories_close(a, b):
    assert len(a) == len(b)
    for t, (x, y) in enumerate(zip(a, b)):
        assert x == pytest.approx(y, rel=1e-12, abs=1e-15), f"step {t}"


def test_warmup_cosine_without_warmup_equals_cosine_annealing():
    total, ratio = 40, 0.1
    opt_a, opt_b = make_optimizer((0.5, 0.5)), make_optimizer((0.5, 0.5))
    ours = trajectory(WarmupCosineLR(opt_a, 0, total, min_ratio=ratio), opt_a, total + 1)
    theirs = trajectory(tls.CosineAnnealingLR(opt_b, T_max=total, eta_min=0.5 * ratio), opt_b, total + 1)
    assert_trajectories_close(ours, theirs)


def test_warmup_cosine_equals_linear_then_cosine_in_sequential_lr():
    warmup, total, base, start, ratio = 7, 30, 0.4, 0.1, 0.05
    opt_a, opt_b = make_optimizer((base,)), make_optimizer((base,))
    ours = trajectory(WarmupCosineLR(opt_a, warmup, total, min_ratio=ratio, start_ratio=start), opt_a, total + 1)
    torch_sched = tls.SequentialLR(
        opt_b,
        [
            tls.LinearLR(opt_b, start_factor=start, total_iters=warmup),
            tls.CosineAnnealingLR(opt_b, T_max=total - warmup, eta_min=base * ratio),
        ],
        milestones=[warmup],
    )
    assert_trajectories_close(ours, trajectory(torch_sched, opt_b, total + 1))


def test_warmup_cosine_stays_at_floor_after_total_steps():
    opt = make_optimizer((2.0, 0.2))
    lrs = trajectory(WarmupCosineLR(opt, 3, 10, min_ratio=0.25), opt, 20)
    assert lrs[0] == [0.0, 0.0]
    assert lrs[3] == pytest.approx([2.0, 0.2])
    for t in range(10, 20):
        assert lrs[t] == pytest.approx([0.5, 0.05], rel=1e-12)
    # halfway through the decay the cosine term is 1/2: (1 + r) / 2
    assert warmup_cosine_factor(3 + 10, 3, 23, min_ratio=0.2) == pytest.approx(0.6, rel=1e-12)


def test_warmup_linear_decay_equals_one_cycle_lr_linear():
    # OneCycleLR ramps up until step pct_start * total - 1 = 9, then decays until step total - 1 = 49
    total, pct, div, final_div, max_lr = 50, 0.2, 25.0, 100.0, 0.3
    opt_a, opt_b = make_optimizer((max_lr,)), make_optimizer((max_lr,))
    ours = WarmupPolyLR(opt_a, 9, 49, power=1.0, min_ratio=1 / (div * final_div), start_ratio=1 / div)
    theirs = tls.OneCycleLR(
        opt_b, max_lr=max_lr, total_steps=total, pct_start=pct, anneal_strategy="linear",
        cycle_momentum=False, div_factor=div, final_div_factor=final_div, three_phase=False,
    )
    assert_trajectories_close(trajectory(ours, opt_a, total), trajectory(theirs, opt_b, total))


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_warmup_poly_equals_linear_then_polynomial_lr(power):
    warmup, total, start = 5, 25, 0.2
    opt_a, opt_b = make_optimizer((0.3, 0.03)), make_optimizer((0.3, 0.03))
    ours = trajectory(WarmupPolyLR(opt_a, warmup, total, power=power, start_ratio=start), opt_a, total + 1)
    torch_sched = tls.SequentialLR(
        opt_b,
        [tls.LinearLR(opt_b, start_factor=start, total_iters=warmup), tls.PolynomialLR(opt_b, total - warmup, power)],
        milestones=[warmup],
    )
    assert_trajectories_close(ours, trajectory(torch_sched, opt_b, total + 1))


def test_poly_factor_closed_form():
    # (1 - 1/4)^2 of the way from the floor 0.1 to 1
    assert warmup_poly_factor(2 + 5, 2, 22, power=2.0, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.75**2)
    assert warmup_poly_factor(1, 2, 22, start_ratio=0.5) == pytest.approx(0.75)


def test_our_scheduler_chains_inside_sequential_lr():
    opt = make_optimizer((1.0,))
    sched = tls.SequentialLR(
        opt, [tls.ConstantLR(opt, factor=0.5, total_iters=4), WarmupCosineLR(opt, 2, 12, min_ratio=0.1)], milestones=[4]
    )
    got = [lr[0] for lr in trajectory(sched, opt, 20)]
    want = [0.5] * 4 + [warmup_cosine_factor(t - 4, 2, 12, min_ratio=0.1) for t in range(4, 20)]
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: WarmupCosineLR(opt, 4, 20, min_ratio=0.1),
        lambda opt: WarmupPolyLR(opt, 4, 20, power=2.0),
    ],
)
def test_state_dict_round_trip_resumes_the_schedule(make):
    opt = make_optimizer((0.5, 0.1))
    sched = make(opt)
    full = trajectory(sched, opt, 25)

    opt_a = make_optimizer((0.5, 0.1))
    sched_a = make(opt_a)
    trajectory(sched_a, opt_a, 9)
    buffer = io.BytesIO()
    torch.save({"opt": opt_a.state_dict(), "sched": sched_a.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    opt_b = make_optimizer((123.0, 456.0))  # wrong LRs, restored by the optimizer's state dict
    sched_b = make(opt_b)
    opt_b.load_state_dict(state["opt"])
    sched_b.load_state_dict(state["sched"])
    assert_trajectories_close(trajectory(sched_b, opt_b, 16), full[9:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"warmup_steps": -1, "total_steps": 10}, "warmup_steps"),
        ({"warmup_steps": 10, "total_steps": 10}, "total_steps"),
        ({"warmup_steps": 1, "total_steps": 10, "min_ratio": 1.5}, "min_ratio"),
        ({"warmup_steps": 1, "total_steps": 10, "start_ratio": -0.1}, "start_ratio"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosineLR(make_optimizer(), **kwargs)
    with pytest.raises(ValueError, match=match):
        WarmupPolyLR(make_optimizer(), **kwargs)


def test_poly_rejects_non_positive_power():
    with pytest.raises(ValueError, match="power"):
        WarmupPolyLR(make_optimizer(), 1, 10, power=0.0)


def test_param_group_scheduler_sets_every_group_and_records_initial_value():
    opt = make_optimizer((0.1, 0.2), cls=torch.optim.Adam)
    opt.param_groups[1]["eps"] = 1e-6
    sched = ParamGroupScheduler(opt, "eps", lambda t, eps0: eps0 * 0.5**t)
    assert [g["initial_eps"] for g in opt.param_groups] == [1e-8, 1e-6]
    assert sched.get_last() == [1e-8, 1e-6]  # fn(0, initial) applied at construction
    for t in range(1, 5):
        opt.step()
        sched.step()
        assert [g["eps"] for g in opt.param_groups] == pytest.approx([1e-8 * 0.5**t, 1e-6 * 0.5**t], rel=1e-15)
        assert sched.get_last() == [g["eps"] for g in opt.param_groups]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]  # nothing else moved


def test_param_group_scheduler_state_round_trip_and_resume_by_last_epoch():
    def fn(t, eps0):
        return eps0 / (1 + t)

    opt = make_optimizer((0.1,), cls=torch.optim.AdamW)
    sched = ParamGroupScheduler(opt, "eps", fn)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    assert set(state) == {"key", "last_epoch", "_last_values"}
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": state}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    opt_b = make_optimizer((0.1,), cls=torch.optim.AdamW)
    opt_b.load_state_dict(saved["opt"])
    sched_b = ParamGroupScheduler(opt_b, "eps", fn)
    sched_b.load_state_dict(saved["sched"])
    sched.step()
    sched_b.step()
    assert sched_b.get_last() == sched.get_last() == [pytest.approx(1e-8 / 5)]

    # torch's convention: last_epoch=k resumes, the constructor's step applies step k + 1
    sched_c = ParamGroupScheduler(opt_b, "eps", fn, last_epoch=4)
    assert sched_c.get_last() == [pytest.approx(1e-8 / 6)]


def test_param_group_scheduler_errors():
    with pytest.raises(ValueError, match="'eps'"):
        ParamGroupScheduler(make_optimizer(), "eps", lambda t, v: v)  # SGD has no eps
    with pytest.raises(ValueError, match="initial_eps"):
        ParamGroupScheduler(make_optimizer(cls=torch.optim.Adam), "eps", lambda t, v: v, last_epoch=3)
    sched = ParamGroupScheduler(make_optimizer(cls=torch.optim.Adam), "eps", lambda t, v: v)
    with pytest.raises(ValueError, match="key"):
        sched.load_state_dict({"key": "weight_decay", "last_epoch": 0, "_last_values": [0.0]})


def test_param_group_scheduler_is_not_an_lr_scheduler_and_steps_beside_one():
    assert not isinstance(ParamGroupScheduler(make_optimizer(cls=torch.optim.Adam), "eps", lambda t, v: v), tls.LRScheduler)

    # inside SequentialLR it breaks, at the latest when SequentialLR hands over to it
    def sequential():
        opt = make_optimizer(cls=torch.optim.Adam)
        warm = tls.LinearLR(opt, start_factor=0.5, total_iters=2)
        eps = ParamGroupScheduler(opt, "eps", lambda t, v: v / 2**t)
        sched = tls.SequentialLR(opt, [warm, eps], milestones=[2])
        for _ in range(4):
            opt.step()
            sched.step()

    with pytest.raises((AttributeError, TypeError)):
        sequential()

    # side by side, each one moves its own hyperparameter as if it were alone
    opt = make_optimizer((0.1,), cls=torch.optim.Adam)
    lr_sched = tls.LinearLR(opt, start_factor=0.5, total_iters=4)
    eps_sched = ParamGroupScheduler(opt, "eps", lambda t, v: v / 2**t)
    for t in range(1, 6):
        opt.step()
        for sched in (lr_sched, eps_sched):
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * min(1.0, 0.5 + 0.5 * t / 4))
        assert opt.param_groups[0]["eps"] == pytest.approx(1e-8 / 2**t)


def test_plot_schedule_returns_the_trajectory_and_draws_it():
    values = plot_schedule(lambda opt: WarmupCosineLR(opt, 3, 10, min_ratio=0.1), 15, base_value=2.0)
    want = [2.0 * warmup_cosine_factor(t, 3, 10, min_ratio=0.1) for t in range(15)]
    assert values == pytest.approx(want, rel=1e-12)

    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    values = plot_schedule(lambda opt: tls.StepLR(opt, step_size=4, gamma=0.5), 10, ax=ax)
    assert values == [1.0] * 4 + [0.5] * 4 + [0.25] * 2
    assert list(ax.lines[0].get_ydata()) == values
    halve = lambda t, v: v / 2**t  # noqa: E731
    eps = plot_schedule(lambda opt: ParamGroupScheduler(opt, "eps", halve), 5, ax=ax, key="eps", base_value=1e-8)
    assert eps == [1e-8 / 2**t for t in range(5)]
    plt.close("all")
    with pytest.raises(ValueError, match="steps"):
        plot_schedule(lambda opt: tls.StepLR(opt, 1), 0)
    with pytest.raises(ValueError, match="key"):
        plot_schedule(lambda opt: tls.StepLR(opt, 1), 3, key="momentum")


def test_warmup_cosine_is_continuous_at_the_end_of_warmup():
    # one warmup increment before W, exactly 1 at W, then decreasing
    f = [warmup_cosine_factor(t, 10, 50) for t in range(8, 13)]
    assert f[2] == 1.0
    assert f[0] < f[1] < f[2] and f[2] > f[3] > f[4]
    assert math.isclose(f[1], 0.9)
