"""course_lib.optim's twins of torch.optim (SGD, Adagrad, RMSprop, Adam, AdamW, NAdam, RAdam) against torch.optim.

One parametrized file for the seven: the oracle is torch.optim itself, the same for each. The
trajectories and states agree to float64 round-off. Every run uses float64 (torch's own step
counters and NAdam's running product follow the default dtype, so the default dtype is float64
here too), two param groups, a scheduler that changes lr every step, parameters whose gradient is
None on some steps, a 0-dim parameter and a non-contiguous one. Also here: the foreach kernels
against torch's, OneCycleLR (which also cycles momentum), tensor learning rates, GradScaler,
state switched on after the first step, torch's signatures (Adafactor's and Muon's included) and
flags, validation stricter than torch's, and runs started with torch.optim continued here.

The properties that need no oracle (descent, maximize, zero gradients, frozen groups, the
state-dict round trip, determinism, bad hyperparameters, sparse gradients, the closure, the fast
paths against the loop) are checked for every optimizer in test_contract.py.
"""

from __future__ import annotations

import inspect
from functools import partial
from itertools import product
from typing import Any, Callable

import pytest
import torch

import course_lib.optim as co
from optim_helpers import (
    MIXED,
    assert_same_state,
    clones,
    make_params,
    run,
    scaled_groups,
    seeded_grads,
    set_grads,
    skips,
    weights_only_round_trip,
)

pytestmark = pytest.mark.usefixtures("float64")

STEPS = 25
#: Step t's gradients: seeded noise plus a pull towards zero; parameter 1 misses every third step and
#: parameter 3 the first two.
GRADS = partial(seeded_grads, seed=1000, skip=skips(every_third=1, first_two=3))
SEVEN = [co.SGD, co.Adagrad, co.RMSprop, co.Adam, co.AdamW, co.NAdam, co.RAdam]


def groups(params: list[torch.Tensor], config: dict[str, Any]) -> list[dict[str, Any]]:
    """The matrix, the scalar and the transposed matrix; the vector and the 3-d block with half the lr."""
    return scaled_groups(params, config, split=3)


def trajectory(
    make_opt: Callable[..., torch.optim.Optimizer], config: dict[str, Any], steps: int = STEPS
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Train make_params(MIXED) for `steps` steps under a LambdaLR schedule; return the params and the optimizer."""
    params = make_params(MIXED)
    opt = make_opt(groups(params, config), **config)
    run(opt, params, steps, grads=GRADS)
    return params, opt


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
    ours_params, ours = trajectory(ours_cls, config)
    ref_params, ref = trajectory(lambda p, **c: torch_make(p, foreach=False, **c), config)
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert_same_state(ours, ref, ours_params, ref_params)


# --- the foreach kernels against torch's ---------------------------------------------------------

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
    ours_params, ours = trajectory(lambda p, **c: ours_cls(p, foreach=True, **c), config)
    assert ours.implementation(ours.param_groups[0], torch.device("cpu")) == "foreach"
    ref_params, ref = trajectory(lambda p, **c: torch_make(p, foreach=torch_foreach, **c), config)
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert_same_state(ours, ref, ours_params, ref_params)

# --- integrations: schedulers, tensor lr, GradScaler -----------------------------------------------

@pytest.mark.parametrize(
    "ours_cls, torch_cls, config",
    [(co.Adam, torch.optim.Adam, dict(lr=0.01)), (co.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
     (co.NAdam, torch.optim.NAdam, dict(lr=0.01)), (co.RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.5))],
    ids=["Adam", "SGD", "NAdam", "RMSprop"],
)
def test_one_cycle_scheduler_cycles_lr_and_momentum_like_torch(ours_cls, torch_cls, config):
    """OneCycleLR rewrites lr and also betas[0] (Adam family) or momentum (SGD, RMSprop) every step."""
    def one_cycle(make):
        params = make_params(MIXED)
        opt = make(groups(params, config), **config)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.05, 0.02], total_steps=STEPS)
        assert all("initial_lr" in g for g in opt.param_groups)
        for t in range(STEPS - 1):
            set_grads(params, GRADS(params, t))
            opt.step()
            sched.step()
        return params

    for p, q in zip(one_cycle(ours_cls), one_cycle(lambda p, **c: torch_cls(p, foreach=False, **c))):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ours_cls, torch_cls", [(co.Adam, torch.optim.Adam), (co.SGD, torch.optim.SGD)])
def test_tensor_lr_equals_float_lr(ours_cls, torch_cls):
    ours_params, _ = trajectory(lambda p, **c: ours_cls(p, **{**c, "lr": torch.tensor(c["lr"])}), dict(lr=0.01))
    ref_params, _ = trajectory(lambda p, **c: torch_cls(p, foreach=False, **c), dict(lr=0.01))
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


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


# --- state switched on after the first step -------------------------------------------------------

@pytest.mark.parametrize("foreach", [False, None, True], ids=["loop", "tiled", "foreach"])
def test_sgd_momentum_switched_on_later_follows_the_base_rule(foreach):
    """momentum 0 for three steps, then 0.9 with dampening: the buffer starts at zero at that step (the base
    class's rule for state switched on later), so its first value is (1 - dampening) g; switched off and on
    again, the old buffer comes back, as in torch. Oracle: torch's SGD given a zero buffer at that step."""
    config = dict(lr=0.1, weight_decay=0.1)

    def switching(make, inject):
        params = make_params(MIXED)
        opt = make(groups(params, config), **config)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t))
        for t in range(STEPS):
            momentum = 0.9 if 3 <= t < 12 or t >= 15 else 0.0
            for group in opt.param_groups:
                group.update(momentum=momentum, dampening=0.3 if momentum else 0.0)
            set_grads(params, GRADS(params, t))
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


def test_rmsprop_momentum_and_centered_switched_on_later_start_at_zero():
    """Switched on at step 4, the momentum buffer and the average of gradients start at zero then:
    the oracle is torch's RMSprop with zero buffers put into its state at that step."""
    def trajectory(make, add_buffers=None):
        p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        opt = make([p], lr=0.01)
        for t in range(8):
            if t == 3:
                opt.param_groups[0].update(momentum=0.9, centered=True)
                if add_buffers:
                    add_buffers(opt.state[p], p)
            p.grad = torch.sin(torch.arange(3.0, dtype=torch.float64) + t) + p.detach()
            opt.step()
        return p.detach(), opt.state[p]

    def zeros(state, p):
        state["momentum_buffer"] = torch.zeros_like(p)
        state["grad_avg"] = torch.zeros_like(p)

    ours, ours_state = trajectory(co.RMSprop)
    theirs, their_state = trajectory(lambda p, **kw: torch.optim.RMSprop(p, foreach=False, **kw), zeros)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    for key in ("square_avg", "momentum_buffer", "grad_avg"):
        torch.testing.assert_close(ours_state[key], their_state[key], rtol=1e-12, atol=1e-14)


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
    straight, _ = trajectory(make_torch, config, steps=20)
    params, ref = trajectory(make_torch, config, steps=10)
    saved = weights_only_round_trip(ref.state_dict())
    fresh = clones(params)
    ours = ours_cls(groups(fresh, config), **config)
    ours.load_state_dict(saved)
    own_params, own = trajectory(ours_cls, config, steps=10)  # the state course_lib itself would hold now
    for p, q, r in zip(fresh, params, own_params):
        state, theirs, expected = ours.state[p], ref.state[q], own.state[r]
        if not theirs:  # SGD without momentum keeps no state; the step count starts at the next step
            assert not state and ours_cls is co.SGD
            continue
        assert {k: type(v) for k, v in state.items()} == {k: type(v) for k, v in expected.items()}
        if "step" in theirs:
            assert state["step"] == expected["step"] == int(theirs["step"])
    run(ours, fresh, 10, start=10, grads=GRADS)
    for p, q in zip(fresh, straight):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_a_group_saved_without_a_newer_hyperparameter_takes_its_default():
    """torch before 2.7 saved AdamW's groups without decoupled_weight_decay (nor fused, capturable, ...)."""
    params, ref = trajectory(lambda p, **c: torch.optim.AdamW(p, foreach=False, **c), dict(lr=0.01, weight_decay=0.1))
    saved = ref.state_dict()
    for group in saved["param_groups"]:
        for key in ("decoupled_weight_decay", "fused", "capturable", "differentiable"):
            del group[key]
    ours = co.AdamW(groups(clones(params), dict(lr=0.01)))
    ours.load_state_dict(saved)
    for group in ours.param_groups:
        assert group["decoupled_weight_decay"] is True and group["fused"] is None
        assert group["weight_decay"] in (0.1, 0.2)  # the saved values, not the defaults


# --- validation and torch's flags ----------------------------------------------------------------

STRICTER_THAN_TORCH = [
    (co.SGD, torch.optim.SGD, dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
    (co.SGD, torch.optim.SGD, dict(momentum=1.5), "momentum"),
    (co.SGD, torch.optim.SGD, dict(dampening=1.5), r"dampening must be in \[0.0, 1.0\]"),
    (co.SGD, torch.optim.SGD, dict(dampening=-0.5), "dampening"),
    (co.RMSprop, torch.optim.RMSprop, dict(alpha=1.0), r"alpha must be in \[0.0, 1.0\)"),
    (co.RMSprop, torch.optim.RMSprop, dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
]


@pytest.mark.parametrize("ours, theirs, kw, match", STRICTER_THAN_TORCH,
                         ids=[f"{c.__name__}-{k}" for c, _, k, _ in STRICTER_THAN_TORCH])
def test_validation_stricter_than_torch_as_documented(ours, theirs, kw, match):
    """torch accepts these values (the docstrings say so); course_lib rejects them, naming the argument."""
    theirs([torch.zeros(2, requires_grad=True)], **kw)
    with pytest.raises(ValueError, match=match):
        ours([torch.zeros(2, requires_grad=True)], **kw)
    name = next(iter(kw))
    assert "stricter than torch" in ours.__doc__ and f"``{name}" in ours.__doc__


TORCH_ONLY_FEATURES = [(cls, name) for cls in SEVEN for name, default in
                       (("capturable", False), ("differentiable", False), ("fused", None))
                       if name in inspect.signature(getattr(torch.optim, cls.__name__)).parameters]


@pytest.mark.parametrize("cls, name", TORCH_ONLY_FEATURES, ids=[f"{c.__name__}-{n}" for c, n in TORCH_ONLY_FEATURES])
def test_torch_only_features_accepted_at_their_defaults_and_rejected_otherwise(cls, name):
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    default = inspect.signature(cls).parameters[name].default
    assert default == inspect.signature(getattr(torch.optim, cls.__name__)).parameters[name].default
    allowed = [default, False] if name == "fused" else [default]
    for value in allowed:
        opt = cls([a], **{name: value})
        a.grad = torch.ones(2)
        opt.step()
        assert opt.param_groups[0][name] == value
    with pytest.raises(ValueError, match=f"{name} must be") as error:
        cls([a], **{name: True})
    assert f"torch.optim.{cls.__name__}({name}=True)" in str(error.value)
    if name == "fused":
        assert "foreach=True" in str(error.value)
    with pytest.raises(ValueError, match=name):  # a param group may not switch it on either
        cls([a]).add_param_group({"params": [b], name: True})
