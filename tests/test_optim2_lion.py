"""course_lib.optim.lion.Lion against the reference package lion-pytorch and the paper's first step."""

from __future__ import annotations

import inspect
import io

import pytest
import torch

from course_lib.optim.lion import Lion

lion_pytorch = pytest.importorskip("lion_pytorch", reason="lion-pytorch is the test oracle for Lion")

STEPS = 20


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: one thread beats waking a second one, by far on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_params(seed: int = 0) -> list[torch.Tensor]:
    """A matrix, a 0-dim scalar, a non-contiguous matrix and a vector, in float64."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(3, 4, generator=gen, dtype=torch.float64),
              torch.randn((), generator=gen, dtype=torch.float64),
              torch.randn(5, 3, generator=gen, dtype=torch.float64).t(),
              torch.randn(6, generator=gen, dtype=torch.float64)]
    return [p.requires_grad_() for p in params]


def set_grads(params: list[torch.Tensor], t: int) -> None:
    """Seeded noise plus a pull towards 0; parameter 1 has no gradient every third step."""
    gen = torch.Generator().manual_seed(100 + t)
    for i, p in enumerate(params):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device)
        p.grad = None if i == 1 and t % 3 == 0 else noise + 0.5 * p.detach()


def run(make_opt, params: list[torch.Tensor], steps: int = STEPS, start: int = 0, opt=None):
    opt = opt or make_opt([{"params": params[:2]}, {"params": params[2:], "lr": 2e-3}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t), last_epoch=start - 1)
    for t in range(start, start + steps):
        set_grads(params, t)
        opt.step()
        sched.step()
    return opt


CONFIGS = [dict(lr=1e-3), dict(lr=1e-3, weight_decay=0.5), dict(lr=1e-3, betas=(0.5, 0.9), weight_decay=0.1),
           dict(lr=1e-3, betas=(0.0, 0.0))]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
@pytest.mark.parametrize("foreach", [False, True, None])
def test_trajectory_equals_lion_pytorch_in_float64(config, foreach):
    ours, ref = make_params(), make_params()
    opt = run(lambda g: Lion(g, foreach=foreach, **config), ours)
    ref_opt = run(lambda g: lion_pytorch.Lion(g, **config), ref)
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg"], ref_opt.state[q]["exp_avg"])
    assert opt.state[ours[1]]["step"] == sum(1 for t in range(STEPS) if t % 3 != 0)


def test_defaults_are_the_papers_and_lion_pytorchs():
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


def test_maximize_equals_descending_the_negated_gradient():
    ours, ref = make_params(), make_params()
    opt = Lion(ours, lr=1e-3, weight_decay=0.1, maximize=True)
    ref_opt = Lion(ref, lr=1e-3, weight_decay=0.1)
    for t in range(5):
        set_grads(ours, t)
        set_grads(ref, t)
        for q in ref:
            if q.grad is not None:
                q.grad.neg_()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_foreach_kernels_equal_the_loop(device):
    results = []
    for foreach in (False, True):
        params = [p.detach().to(device).requires_grad_() for p in make_params()]
        opt = Lion(params, lr=1e-3, weight_decay=0.1, foreach=foreach)
        assert opt.implementation(opt.param_groups[0], torch.device(device)) == ("foreach" if foreach else "loop")
        for t in range(5):
            set_grads(params, t)
            opt.step()
        results.append(params)
    for p, q in zip(*results):
        if device == "cpu":
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_tiles_of_a_large_tensor_equal_the_whole():
    start = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for foreach, tile in [(False, None), (None, 64)]:
        p = start.clone().requires_grad_()
        opt = Lion([p], lr=1e-3, weight_decay=0.1, foreach=foreach)
        if tile:
            opt.tile_size = tile
        assert opt.implementation(opt.param_groups[0], p.device) == ("tiled" if tile else "loop")
        for _ in range(3):
            p.grad = torch.sin(torch.arange(1000.0, dtype=torch.float64)) + p.detach()
            opt.step()
        results.append(p.detach())
    assert torch.equal(*results)


def test_state_dict_survives_save_and_weights_only_load():
    straight = make_params()
    run(lambda g: Lion(g, lr=1e-3, weight_decay=0.1), straight, steps=10)

    params = make_params()
    opt = run(lambda g: Lion(g, lr=1e-3, weight_decay=0.1), params, steps=5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = [p.detach().clone().requires_grad_() for p in params]
    new = Lion([{"params": fresh[:2]}, {"params": fresh[2:], "lr": 2e-3}], lr=1e-3, weight_decay=0.1)
    new.load_state_dict(torch.load(buffer, weights_only=True))
    run(None, fresh, steps=5, start=5, opt=new)
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1e-4), r"lr must be in \[0.0, inf\)"),
    (dict(betas=(1.0, 0.99)), r"betas\[0\] must be in \[0.0, 1.0\)"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (dict(betas=(0.9,)), "betas must be a pair"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        Lion([torch.zeros(2, requires_grad=True)], **kw)
