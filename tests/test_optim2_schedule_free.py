"""course_lib.optim.schedule_free.ScheduleFreeAdamW against the paper's equations and ``schedulefree``.

The paper's equations are written out below in float64 (independent of both implementations);
the reference package, where installed, is a second oracle for the same trajectories.
"""

from __future__ import annotations

import inspect
import io

import pytest
import torch

from course_lib.optim.schedule_free import ScheduleFreeAdamW

STEPS = 20
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: one thread beats waking a second one, by far on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(3, 4, generator=gen, dtype=F64), torch.randn((), generator=gen, dtype=F64),
              torch.randn(5, 3, generator=gen, dtype=F64).t(), torch.randn(6, generator=gen, dtype=F64)]
    return [p.requires_grad_() for p in params]


def grads_at(params: list[torch.Tensor], t: int) -> list[torch.Tensor | None]:
    """Seeded noise plus a pull towards 0; parameter 1 has no gradient every third step."""
    gen = torch.Generator().manual_seed(100 + t)
    return [None if i == 1 and t % 3 == 0 else torch.randn(p.shape, generator=gen, dtype=F64) + 0.5 * p.detach()
            for i, p in enumerate(params)]


def lr_factor(t: int) -> float:
    return 1 / (1 + 0.05 * t)


def run(make_opt, params, steps: int = STEPS, start: int = 0, opt=None, eval_every: int = 0):
    """Steps with a scheduler; eval()/train() every ``eval_every`` steps (as a validation pass would)."""
    opt = opt or make_opt([{"params": params[:2]}, {"params": params[2:], "lr": 5e-3}])
    opt.train()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor, last_epoch=start - 1)
    for t in range(start, start + steps):
        for p, g in zip(params, grads_at(params, t)):
            p.grad = g
        opt.step()
        sched.step()
        if eval_every and t % eval_every == 0:
            opt.eval()
            opt.train()
    return opt


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
        grads = grads_at(y, t)
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
    params = make_params()
    opt = run(lambda g: ScheduleFreeAdamW(g, foreach=foreach, **config), params, eval_every=4)
    y, x = paper_reference(make_params(), **config)
    for p, q in zip(params, y):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)
    opt.eval()
    for p, q in zip(params, x):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
@pytest.mark.parametrize("reference", ["AdamWScheduleFree", "AdamWScheduleFreeReference"])
def test_trajectory_equals_the_schedulefree_package(config, reference):
    schedulefree = pytest.importorskip("schedulefree", reason="the reference package is an optional oracle")
    ours, ref = make_params(), make_params()
    opt = run(lambda g: ScheduleFreeAdamW(g, **config), ours)
    ref_opt = run(lambda g: getattr(schedulefree, reference)(g, foreach=False, **config), ref)
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
    params = make_params()
    opt = run(lambda g: ScheduleFreeAdamW(g, lr=0.01), params)
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


def test_tiles_of_a_large_tensor_equal_the_whole():
    start = torch.randn(1000, dtype=F64, generator=torch.Generator().manual_seed(1))
    results = []
    for foreach, tile in [(False, None), (None, 64)]:
        p = start.clone().requires_grad_()
        opt = ScheduleFreeAdamW([p], lr=0.01, weight_decay=0.1, warmup_steps=2, foreach=foreach)
        if tile:
            opt.tile_size = tile
        assert opt.implementation(opt.param_groups[0], p.device) == ("tiled" if tile else "loop")
        for _ in range(3):
            p.grad = torch.sin(torch.arange(1000.0, dtype=F64)) + p.detach()
            opt.step()
        opt.eval()
        results.append(p.detach())
    assert torch.equal(*results)


@pytest.mark.parametrize("eval_before_saving", [False, True])
def test_state_dict_survives_save_and_weights_only_load(eval_before_saving):
    make = lambda g: ScheduleFreeAdamW(g, lr=0.01, weight_decay=0.1, warmup_steps=3)  # noqa: E731
    straight = make_params()
    run(make, straight, steps=10)

    params = make_params()
    opt = run(make, params, steps=5)
    if eval_before_saving:
        opt.eval()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = [p.detach().clone().requires_grad_() for p in params]
    new = make([{"params": fresh[:2]}, {"params": fresh[2:]}])
    new.load_state_dict(torch.load(buffer, weights_only=True))
    assert new.param_groups[0]["train_mode"] is not eval_before_saving
    run(None, fresh, steps=5, start=5, opt=new)  # run() calls train() first
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-0.1), r"lr must be in \[0.0, inf\)"),
    (dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (dict(eps=-1.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(warmup_steps=-1), r"warmup_steps must be an integer in \[0, inf\)"),
    (dict(warmup_steps=2.5), "warmup_steps"),
    (dict(r=-1.0), "r must be"),
    (dict(weight_lr_power=-2.0), "weight_lr_power"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        ScheduleFreeAdamW([torch.zeros(2, requires_grad=True)], **kw)
