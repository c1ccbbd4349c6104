"""course_lib.optim against torch.optim: the same trajectories, states and integrations.

The oracle is torch.optim itself. Every run uses float64 (torch's own step counters and NAdam's
running product follow the default dtype, so the default dtype is float64 here too), several param
groups, a scheduler that changes lr every step, parameters whose gradient is None on some steps,
a 0-dim parameter and a non-contiguous one.
"""

from __future__ import annotations

import inspect
import io
from itertools import product
from typing import Any, Callable

import pytest
import torch

import course_lib.optim as co

STEPS = 25


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_params(seed: int = 0) -> list[torch.Tensor]:
    """Five leaf tensors: a matrix, a 0-dim scalar, a non-contiguous (transposed) matrix, a vector, a 3-d block."""
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(3, 4, generator=gen),
        torch.randn((), generator=gen),
        torch.randn(3, 5, generator=gen).t(),
        torch.randn(7, generator=gen),
        torch.randn(2, 3, 2, generator=gen),
    ]
    assert not params[2].is_contiguous()
    return [p.requires_grad_() for p in params]


def set_grads(params: list[torch.Tensor], t: int) -> None:
    """Step t's gradients: seeded noise plus a pull towards zero; some parameters miss some steps."""
    gen = torch.Generator().manual_seed(1000 + t)
    noise = [torch.randn(p.shape, generator=gen) for p in params]
    for i, (p, n) in enumerate(zip(params, noise)):
        skip = (i == 1 and t % 3 == 0) or (i == 3 and t < 2)
        p.grad = None if skip else n + 0.5 * p.detach()


def groups(params: list[torch.Tensor], config: dict[str, Any]) -> list[dict[str, Any]]:
    second = {"params": params[3:], "lr": config["lr"] * 0.5}
    if config.get("weight_decay", 0):
        second["weight_decay"] = config["weight_decay"] * 2
    return [{"params": params[:3]}, second]


def run(
    make_opt: Callable[..., torch.optim.Optimizer], config: dict[str, Any], steps: int = STEPS
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Train make_params() for `steps` steps under a LambdaLR schedule; return the params and the optimizer."""
    params = make_params()
    opt = make_opt(groups(params, config), **config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t))
    for t in range(steps):
        set_grads(params, t)
        opt.step()
        sched.step()
    return params, opt


def assert_same_state(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer, params, ref_params) -> None:
    for p, q in zip(params, ref_params):
        s, r = ours.state[p], theirs.state[q]
        assert set(s) == set(r) | {"step"}
        for key, value in r.items():
            if torch.is_tensor(value) and value.dim() > 0:
                torch.testing.assert_close(s[key], value, rtol=1e-10, atol=1e-12)
            else:
                assert float(s[key]) == pytest.approx(float(value), rel=1e-12), key


def flags(**options: tuple) -> list[dict[str, Any]]:
    """Every combination of the given option values."""
    names = list(options)
    return [dict(zip(names, values)) for values in product(*options.values())]


SGD_CONFIGS = [c for c in flags(lr=(0.1,), momentum=(0.0, 0.9), dampening=(0.0, 0.3), nesterov=(False, True),
                                weight_decay=(0.0, 0.1), maximize=(False, True))
               if not (c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0))]
ADAGRAD_CONFIGS = flags(lr=(0.1,), lr_decay=(0.0, 0.05), initial_accumulator_value=(0.0, 0.1),
                        weight_decay=(0.0, 0.1), maximize=(False, True)) + [dict(lr=0.1, eps=0.1)]
RMSPROP_CONFIGS = flags(lr=(0.01,), centered=(False, True), momentum=(0.0, 0.5), weight_decay=(0.0, 0.1),
                        maximize=(False, True)) + [dict(lr=0.01, alpha=0.5, eps=1e-3)]
ADAM_CONFIGS = flags(lr=(0.01,), amsgrad=(False, True), weight_decay=(0.0, 0.1), maximize=(False, True),
                     decoupled_weight_decay=(False, True)) + [dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3)]
ADAMW_CONFIGS = flags(lr=(0.01,), amsgrad=(False, True), weight_decay=(0.0, 0.1), maximize=(False, True))
NADAM_CONFIGS = flags(lr=(0.01,), weight_decay=(0.0, 0.1), decoupled_weight_decay=(False, True),
                      maximize=(False, True), momentum_decay=(4e-3, 0.1)) + [
    dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, momentum_decay=0.02),
    dict(lr=0.01, betas=(0.5, 0.99), eps=0.1, momentum_decay=0.0, weight_decay=0.1, decoupled_weight_decay=True),
    dict(lr=0.01, betas=(0.0, 0.5), eps=0.0, momentum_decay=1.0),
]
RADAM_CONFIGS = flags(lr=(0.01,), weight_decay=(0.0, 0.1), decoupled_weight_decay=(False, True),
                      maximize=(False, True), betas=((0.9, 0.999), (0.8, 0.9))) + [
    dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3),
    dict(lr=0.01, betas=(0.8, 0.9), eps=0.1, weight_decay=0.1, decoupled_weight_decay=True),
    dict(lr=0.01, betas=(0.5, 0.8), eps=0.0, weight_decay=0.1, decoupled_weight_decay=False),
]


def torch_adam(params, decoupled_weight_decay: bool = False, **config):
    # torch.optim.Adam gained decoupled_weight_decay only in recent versions; AdamW is the same algorithm.
    cls = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
    return cls(params, **{"weight_decay": 0.0, **config})


CASES = (
    [(co.SGD, torch.optim.SGD, c) for c in SGD_CONFIGS]
    + [(co.Adagrad, torch.optim.Adagrad, c) for c in ADAGRAD_CONFIGS]
    + [(co.RMSprop, torch.optim.RMSprop, c) for c in RMSPROP_CONFIGS]
    + [(co.Adam, torch_adam, c) for c in ADAM_CONFIGS]
    + [(co.AdamW, torch.optim.AdamW, c) for c in ADAMW_CONFIGS]
    + [(co.NAdam, torch.optim.NAdam, c) for c in NADAM_CONFIGS]
    + [(co.RAdam, torch.optim.RAdam, c) for c in RADAM_CONFIGS]
)


def case_id(case) -> str:
    cls, _, config = case
    return cls.__name__ + "-" + ",".join(f"{k}={v}" for k, v in config.items() if k != "lr")


@pytest.mark.parametrize("ours_cls, torch_make, config", CASES, ids=[case_id(c) for c in CASES])
def test_trajectory_matches_torch(ours_cls, torch_make, config):
    ours_params, ours = run(ours_cls, config)
    ref_params, ref = run(lambda p, **c: torch_make(p, foreach=False, **c), config)
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert_same_state(ours, ref, ours_params, ref_params)


# --- the fast paths equal the plain loop, bit for bit -------------------------------------------------

FAST_CASES = [
    (co.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (co.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2, maximize=True)),
    (co.SGD, dict(lr=0.1)),
    (co.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (co.Adam, dict(lr=0.01, maximize=True, decoupled_weight_decay=True, weight_decay=0.1)),
    (co.AdamW, dict(lr=0.01)),
    (co.Adagrad, dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1, weight_decay=0.1)),
    (co.RMSprop, dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1)),
    (co.RAdam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def run_with_path(cls, config, foreach, device, tile_size=None):
    params = [p.detach().to(device).requires_grad_() for p in make_params()]
    opt = cls(groups(params, config), foreach=foreach, **config)
    if tile_size is not None:
        opt.tile_size = tile_size
    for t in range(STEPS):
        set_grads(params, t)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad.to(device)
        opt.step()
    return params, opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls, config", FAST_CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(FAST_CASES)])
def test_fast_paths_equal_the_loop(cls, config, device):
    loop_params, loop = run_with_path(cls, config, False, device)
    assert loop.implementation(loop.param_groups[0], torch.device(device)) == "loop"
    paths = {"tiled": (None, 5)} if device == "cpu" else {}
    if hasattr(cls, "update_foreach"):
        paths["foreach"] = (True, None)
    for name, (foreach, tile_size) in paths.items():
        params, opt = run_with_path(cls, config, foreach, device, tile_size)
        assert opt.implementation(opt.param_groups[0], torch.device(device)) == name
        exact = device == "cpu"
        for p, q in zip(params, loop_params):
            if exact:
                assert torch.equal(p, q), name
            else:
                torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        for p, q in zip(params, loop_params):
            for key, value in loop.state[q].items():
                if torch.is_tensor(value):
                    assert torch.equal(opt.state[p][key], value) if exact else torch.allclose(opt.state[p][key], value)
                else:
                    assert opt.state[p][key] == value


FOREACH_CASES = [
    (co.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (co.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, maximize=True)),
    (co.SGD, torch.optim.SGD, dict(lr=0.1)),
    (co.Adam, torch_adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (co.Adam, torch_adam, dict(lr=0.01, maximize=True, decoupled_weight_decay=True, weight_decay=0.1)),
    (co.AdamW, torch.optim.AdamW, dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3)),
]


@pytest.mark.parametrize("torch_foreach", [False, True], ids=["torch-loop", "torch-foreach"])
@pytest.mark.parametrize("ours_cls, torch_make, config", FOREACH_CASES, ids=[case_id(c) for c in FOREACH_CASES])
def test_foreach_path_matches_torch_under_a_scheduler(ours_cls, torch_make, config, torch_foreach):
    """course_lib's multi-tensor path against torch's loop and its foreach path, with LambdaLR changing lr
    every step (the lr reaches the kernels as a number, read afresh at each step)."""
    ours_params, ours = run(lambda p, **c: ours_cls(p, foreach=True, **c), config)
    assert ours.implementation(ours.param_groups[0], torch.device("cpu")) == "foreach"
    ref_params, ref = run(lambda p, **c: torch_make(p, foreach=torch_foreach, **c), config)
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert_same_state(ours, ref, ours_params, ref_params)


def test_tiles_cover_large_tensors_exactly():
    """A tensor several tiles long (with a short last tile) is updated like the whole tensor."""
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(1000, generator=gen)
    results = []
    for foreach, tile in [(False, None), (None, 64)]:
        p = start.clone().requires_grad_()
        opt = co.AdamW([p], lr=0.01, foreach=foreach)
        if tile:
            opt.tile_size = tile
        for _ in range(5):
            p.grad = torch.sin(torch.arange(1000.0)) + p.detach()
            opt.step()
        results.append(p.detach())
    assert torch.equal(*results)


# --- integrations: schedulers, tensor lr, closures, GradScaler, state_dict ------------------------

@pytest.mark.parametrize(
    "ours_cls, torch_cls, config",
    [(co.Adam, torch.optim.Adam, dict(lr=0.01)), (co.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
     (co.NAdam, torch.optim.NAdam, dict(lr=0.01)), (co.RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.5))],
    ids=["Adam", "SGD", "NAdam", "RMSprop"],
)
def test_one_cycle_scheduler_cycles_lr_and_momentum_like_torch(ours_cls, torch_cls, config):
    """OneCycleLR rewrites lr and also betas[0] (Adam family) or momentum (SGD, RMSprop) every step."""
    def one_cycle(make):
        params = make_params()
        opt = make(groups(params, config), **config)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.05, 0.02], total_steps=STEPS)
        assert all("initial_lr" in g for g in opt.param_groups)
        for t in range(STEPS - 1):
            set_grads(params, t)
            opt.step()
            sched.step()
        return params

    for p, q in zip(one_cycle(ours_cls), one_cycle(lambda p, **c: torch_cls(p, foreach=False, **c))):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ours_cls, torch_cls", [(co.Adam, torch.optim.Adam), (co.SGD, torch.optim.SGD)])
def test_tensor_lr_equals_float_lr(ours_cls, torch_cls):
    ours_params, _ = run(lambda p, **c: ours_cls(p, **{**c, "lr": torch.tensor(c["lr"])}), dict(lr=0.01))
    ref_params, _ = run(lambda p, **c: torch_cls(p, foreach=False, **c), dict(lr=0.01))
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    def trajectory(cls):
        p = torch.tensor([-1.5, 2.0], requires_grad=True)
        opt = cls([p], lr=0.01)
        losses = []

        def closure():
            opt.zero_grad()
            loss = (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
            loss.backward()
            return loss

        with torch.no_grad():  # the optimizer must enable grad for the closure itself
            for _ in range(10):
                losses.append(opt.step(closure).item())
        return p.detach(), losses

    (p, losses), (q, ref_losses) = trajectory(co.Adam), trajectory(torch.optim.Adam)
    torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    assert co.Adam([torch.zeros(1, requires_grad=True)]).step() is None


@pytest.mark.parametrize("cls", [co.AdamW, co.SGD])
def test_grad_scaler_unscales_steps_and_skips_inf(cls):
    """torch.amp.GradScaler('cpu'): scaled steps equal unscaled ones; an inf gradient skips the step."""
    torch.set_default_dtype(torch.float32)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)
    w0 = torch.randn(1, 4, generator=gen)

    def train(use_scaler: bool, steps: int = 5):
        w = w0.clone().requires_grad_()
        opt = cls([w], lr=0.01, momentum=0.9) if cls is co.SGD else cls([w], lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if use_scaler else None
        for _ in range(steps):
            opt.zero_grad()
            loss = ((x @ w.t() - y) ** 2).mean()
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        return w, opt, scaler

    w_scaled, opt, scaler = train(True)
    w_plain, _, _ = train(False)
    assert torch.equal(w_scaled, w_plain)  # scaling by a power of two is exact

    before_w = w_scaled.detach().clone()
    before_state = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[w_scaled].items()}
    scale = scaler.get_scale()
    opt.zero_grad()
    scaler.scale(((x @ w_scaled.t() - y) ** 2).mean()).backward()
    w_scaled.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert torch.equal(w_scaled, before_w)
    after_state = opt.state[w_scaled]
    for key, value in before_state.items():
        assert torch.equal(after_state[key], value) if torch.is_tensor(value) else after_state[key] == value
    assert scaler.get_scale() == scale * 0.5


ALL = [
    (co.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (co.Adagrad, dict(lr=0.1, lr_decay=0.01)),
    (co.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (co.Adam, dict(lr=0.01, amsgrad=True)),
    (co.AdamW, dict(lr=0.01)),
    (co.NAdam, dict(lr=0.01, weight_decay=0.1)),
    (co.RAdam, dict(lr=0.01)),
]


@pytest.mark.parametrize("cls, config", ALL, ids=[c.__name__ for c, _ in ALL])
def test_state_dict_survives_save_and_weights_only_load(cls, config):
    """Stop after 10 steps, save, load with weights_only=True, resume: same as never stopping."""
    straight, _ = run(cls, config, steps=20)

    def resumed():
        params, opt = run(cls, config, steps=10)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        for state in saved["state"].values():
            assert all(torch.is_tensor(v) or isinstance(v, (int, float)) for v in state.values())
        fresh = [p.detach().clone().requires_grad_() for p in params]
        new = cls(groups(fresh, config), **config)
        new.load_state_dict(saved)
        sched = torch.optim.lr_scheduler.LambdaLR(new, lambda t: 1 / (1 + 0.1 * t), last_epoch=9)
        for t in range(10, 20):
            set_grads(fresh, t)
            new.step()
            sched.step()
        return fresh, new

    resumed_params, new = resumed()
    for p, q in zip(resumed_params, straight):
        assert torch.equal(p, q)


@pytest.mark.parametrize("foreach", [False, None, True], ids=["loop", "tiled", "foreach"])
def test_sgd_momentum_switched_on_later_follows_the_base_rule(foreach):
    """momentum 0 for three steps, then 0.9 with dampening: the buffer starts at zero at that step (the base
    class's rule for state switched on later), so its first value is (1 - dampening) g; switched off and on
    again, the old buffer comes back, as in torch. Oracle: torch's SGD given a zero buffer at that step."""
    config = dict(lr=0.1, weight_decay=0.1)

    def switching(make, inject):
        params = make_params()
        opt = make(groups(params, config), **config)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t))
        for t in range(STEPS):
            momentum = 0.9 if 3 <= t < 12 or t >= 15 else 0.0
            for group in opt.param_groups:
                group.update(momentum=momentum, dampening=0.3 if momentum else 0.0)
            set_grads(params, t)
            if inject and momentum:
                for p in params:
                    if p.grad is not None and "momentum_buffer" not in opt.state[p]:
                        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
            opt.step()
            sched.step()
        return params, opt

    ours_params, ours = switching(lambda p, **c: co.SGD(p, foreach=foreach, **c), inject=False)
    ref_params, ref = switching(lambda p, **c: torch.optim.SGD(p, foreach=False, **c), inject=True)
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"],
                                   rtol=1e-10, atol=1e-12)


def test_amsgrad_switched_on_later_starts_its_maximum_at_zero():
    """Adam with amsgrad switched on at step 4: the running maximum starts at zero then (the base rule).
    Oracle: torch's Adam(amsgrad=True) given a zero max_exp_avg_sq at that step."""
    def trajectory(make, inject):
        p = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
        opt = make([p])
        for t in range(8):
            if t == 3:
                opt.param_groups[0]["amsgrad"] = True
                if inject:
                    opt.state[p]["max_exp_avg_sq"] = torch.zeros_like(p)
            p.grad = torch.sin(torch.arange(3.0) + t) * (4.0 if t == 2 else 1.0) + p.detach()
            opt.step()
        return p.detach(), opt.state[p]

    ours, ours_state = trajectory(lambda ps: co.Adam(ps, lr=0.01), inject=False)
    theirs, their_state = trajectory(lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False), inject=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_state["max_exp_avg_sq"], their_state["max_exp_avg_sq"], rtol=1e-10, atol=1e-12)


# --- drop-in: signatures, and runs started with torch.optim ---------------------------------------

TWINS = [(cls, getattr(torch.optim, cls.__name__))
         for cls in (co.SGD, co.Adam, co.AdamW, co.Adagrad, co.RMSprop, co.NAdam, co.RAdam, co.Adafactor, co.Muon)
         if hasattr(torch.optim, cls.__name__)]


@pytest.mark.parametrize("ours, theirs", TWINS, ids=[c.__name__ for c, _ in TWINS])
def test_signature_matches_torch(ours, theirs):
    """torch's parameters, in torch's order, with torch's kinds (positional or keyword-only) and defaults;
    course_lib's own extras come after them, keyword-only, and the class docstring describes each."""
    mine = list(inspect.signature(ours).parameters.values())
    reference = list(inspect.signature(theirs).parameters.values())
    assert len(mine) >= len(reference)
    for a, b in zip(mine, reference):
        assert (a.name, a.kind) == (b.name, b.kind), f"{a} is {b} in torch"
        assert a.default == b.default or (a.default is b.default), f"{a.name}: {a.default!r} vs {b.default!r}"
    for extra in mine[len(reference):]:
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY, extra.name
        assert f"{extra.name}:" in ours.__doc__, f"{extra.name} is not documented"


def test_rmsprop_takes_torchs_positional_arguments():
    """RMSprop(params, lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach, maximize)."""
    trajectories = []
    for cls in (co.RMSprop, torch.optim.RMSprop):
        p = torch.tensor([1.0, -2.0], requires_grad=True)
        opt = cls([p], 0.01, 0.9, 1e-8, 0.0, 0.5, True, False, False, True)
        assert opt.param_groups[0]["maximize"] and opt.param_groups[0]["centered"]
        for t in range(5):
            p.grad = p.detach() + t
            opt.step()
        trajectories.append(p.detach())
    torch.testing.assert_close(*trajectories, rtol=1e-12, atol=1e-14)


FROM_TORCH = [
    (co.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (co.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (co.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3, maximize=True)),
    (co.SGD, torch.optim.SGD, dict(lr=0.1)),
    (co.Adam, torch.optim.Adam, dict(lr=0.01)),
    (co.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (co.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (co.AdamW, torch.optim.AdamW, dict(lr=0.01, amsgrad=True, maximize=True)),
    (co.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    (co.RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (co.NAdam, torch.optim.NAdam, dict(lr=0.01, weight_decay=0.1)),
    (co.RAdam, torch.optim.RAdam, dict(lr=0.01)),
]


@pytest.mark.parametrize("ours_cls, torch_cls, config", FROM_TORCH, ids=[case_id(c) for c in FROM_TORCH])
def test_continues_a_run_started_with_torch(ours_cls, torch_cls, config):
    """10 steps with torch.optim.X, its state_dict saved and loaded (weights_only) into course_lib's X,
    10 more steps: the same trajectory as 20 steps of torch.optim.X (float64)."""
    make_torch = lambda p, **c: torch_cls(p, foreach=False, **c)  # noqa: E731
    straight, _ = run(make_torch, config, steps=20)
    params, ref = run(make_torch, config, steps=10)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = [p.detach().clone().requires_grad_() for p in params]
    ours = ours_cls(groups(fresh, config), **config)
    ours.load_state_dict(saved)
    own_params, own = run(ours_cls, config, steps=10)  # the state course_lib itself would hold now
    for p, q, r in zip(fresh, params, own_params):
        state, theirs, expected = ours.state[p], ref.state[q], own.state[r]
        if not theirs:  # SGD without momentum keeps no state; the step count starts at the next step
            assert not state and ours_cls is co.SGD
            continue
        assert {k: type(v) for k, v in state.items()} == {k: type(v) for k, v in expected.items()}
        if "step" in theirs:
            assert state["step"] == expected["step"] == int(theirs["step"])
    sched = torch.optim.lr_scheduler.LambdaLR(ours, lambda t: 1 / (1 + 0.1 * t), last_epoch=9)
    for t in range(10, 20):
        set_grads(fresh, t)
        ours.step()
        sched.step()
    for p, q in zip(fresh, straight):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_a_group_saved_without_a_newer_hyperparameter_takes_its_default():
    """torch before 2.7 saved AdamW's groups without decoupled_weight_decay (nor fused, capturable, ...)."""
    params, ref = run(lambda p, **c: torch.optim.AdamW(p, foreach=False, **c), dict(lr=0.01, weight_decay=0.1))
    saved = ref.state_dict()
    for group in saved["param_groups"]:
        for key in ("decoupled_weight_decay", "fused", "capturable", "differentiable"):
            del group[key]
    ours = co.AdamW(groups([p.detach().clone().requires_grad_() for p in params], dict(lr=0.01)))
    ours.load_state_dict(saved)
    for group in ours.param_groups:
        assert group["decoupled_weight_decay"] is True and group["fused"] is None
        assert group["weight_decay"] in (0.1, 0.2)  # the saved values, not the defaults
