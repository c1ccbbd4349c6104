"""Properties of course_lib.optim that do not need torch.optim as an oracle.

Descent, ascent with maximize, zero gradients, frozen groups, determinism, convergence to the known
minima of Rosenbrock and Beale, the errors for bad hyperparameters, and the base class's plug-in
points.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch

import course_lib.optim as co
from course_lib.optim import CourseOptimizer, check_range

DEFAULTS = [co.SGD, co.Adagrad, co.RMSprop, co.Adam, co.AdamW, co.NAdam, co.RAdam]
WITH_MOMENTUM = {
    co.SGD: dict(lr=0.01, momentum=0.9, nesterov=True),
    co.Adagrad: dict(lr=0.01, lr_decay=0.01, initial_accumulator_value=0.1),
    co.RMSprop: dict(lr=0.01, momentum=0.5, centered=True),
    co.Adam: dict(lr=0.01, amsgrad=True),
    co.AdamW: dict(lr=0.01),
    co.NAdam: dict(lr=0.01),
    co.RAdam: dict(lr=0.01),
}
NAMES = [c.__name__ for c in DEFAULTS]


def quadratic(p: torch.Tensor) -> torch.Tensor:
    """A convex bowl with unequal curvatures along its axes; minimum 0 at the origin."""
    curvature = torch.linspace(0.5, 2.0, p.numel(), dtype=p.dtype)
    return 0.5 * (curvature * p.reshape(-1) ** 2).sum()


def steps_on_quadratic(opt_cls, steps: int, **kw) -> list[float]:
    p = torch.linspace(-1.0, 1.5, 6, dtype=torch.float64).requires_grad_()
    opt = opt_cls([p], **kw)
    losses = [quadratic(p).item()]
    for _ in range(steps):
        opt.zero_grad()
        quadratic(p).backward()
        opt.step()
        losses.append(quadratic(p).item())
    return losses


@pytest.mark.parametrize("cls", DEFAULTS, ids=NAMES)
def test_descends_with_default_hyperparameters(cls):
    losses = steps_on_quadratic(cls, 20)
    assert losses[1] < losses[0] and losses[-1] < losses[1]


@pytest.mark.parametrize("cls", DEFAULTS, ids=NAMES)
def test_maximize_ascends(cls):
    losses = steps_on_quadratic(cls, 20, maximize=True, **WITH_MOMENTUM[cls])
    assert losses[1] > losses[0] and losses[-1] > losses[1]


@pytest.mark.parametrize("cls", DEFAULTS, ids=NAMES)
def test_zero_gradient_is_a_no_op_without_weight_decay(cls):
    kw = dict(WITH_MOMENTUM[cls], weight_decay=0.0)
    p = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    start = p.detach().clone()
    opt = cls([p], **kw)
    for _ in range(5):
        p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.equal(p, start)


@pytest.mark.parametrize("cls", DEFAULTS, ids=NAMES)
def test_group_with_zero_lr_stays_put_while_the_other_moves(cls):
    kw = dict(WITH_MOMENTUM[cls])
    decay = {"weight_decay": 0.1}  # coupled or decoupled, decay is scaled by lr too
    moving = torch.ones(3, dtype=torch.float64, requires_grad=True)
    frozen = torch.ones(3, dtype=torch.float64, requires_grad=True)
    tiny = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = cls([{"params": [moving]}, {"params": [frozen], "lr": 0.0, **decay},
               {"params": [tiny], "lr": 1e-12, **decay}], **kw)
    for t in range(10):
        for p in (moving, frozen, tiny):
            p.grad = torch.full_like(p, 1.0 + t)
        opt.step()
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(tiny, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-9)
    assert (moving - 1).abs().min() > 1e-4


def _train_state_dict(cls, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    opt = cls(model.parameters(), **WITH_MOMENTUM[cls])
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt.state_dict()


def _assert_equal_nested(a: Any, b: Any) -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_equal_nested(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal_nested(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("cls", DEFAULTS, ids=NAMES)
def test_state_dict_is_deterministic(cls):
    first, second = _train_state_dict(cls, 0), _train_state_dict(cls, 0)
    _assert_equal_nested(first, second)
    assert first["state"][0]["step"] == 5


# --- convergence to known minima (closed forms written here, independent of the library) --------

def rosenbrock(x: float, y: float) -> float:
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_grad(x: float, y: float) -> tuple[float, float]:
    return -2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)


BEALE_C = (1.5, 2.25, 2.625)


def beale(x: float, y: float) -> float:
    return sum((c - x + x * y ** (i + 1)) ** 2 for i, c in enumerate(BEALE_C))


def beale_grad(x: float, y: float) -> tuple[float, float]:
    gx = gy = 0.0
    for i, c in enumerate(BEALE_C, start=1):
        r = c - x + x * y**i
        gx += 2 * r * (y**i - 1)
        gy += 2 * r * x * i * y ** (i - 1)
    return gx, gy


@pytest.mark.parametrize(
    "f, grad, point", [(rosenbrock, rosenbrock_grad, (0.3, -0.7)), (beale, beale_grad, (1.2, 0.4))]
)
def test_closed_form_gradients_match_autograd(f, grad, point):
    p = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    f(p[0], p[1]).backward()
    torch.testing.assert_close(p.grad, torch.tensor(grad(*point), dtype=torch.float64))


ROSENBROCK_START, BEALE_START = (-1.5, 2.0), (1.0, 1.0)
# (optimizer, hyperparameters, lr decay per step or None, start, steps): settings found by a sweep.
CONVERGENCE = [
    ("rosenbrock", co.SGD, dict(lr=2e-3, momentum=0.95), None, ROSENBROCK_START, 600),
    ("rosenbrock", co.Adam, dict(lr=0.05), None, ROSENBROCK_START, 2000),
    ("rosenbrock", co.AdamW, dict(lr=0.05, weight_decay=1e-5), None, ROSENBROCK_START, 2000),
    ("rosenbrock", co.NAdam, dict(lr=0.1), 0.999, ROSENBROCK_START, 3000),
    ("rosenbrock", co.RAdam, dict(lr=0.01, betas=(0.9, 0.99)), 0.999, ROSENBROCK_START, 2000),
    ("rosenbrock", co.RMSprop, dict(lr=0.005, momentum=0.9), 0.999, ROSENBROCK_START, 1200),
    # Adagrad's steps shrink for good after the steep descent into the valley from (-1.5, 2);
    # from (0, 0) it reaches the minimum in a few thousand steps.
    ("rosenbrock", co.Adagrad, dict(lr=0.3), None, (0.0, 0.0), 6000),
    ("beale", co.SGD, dict(lr=2e-3, momentum=0.95), None, BEALE_START, 600),
    ("beale", co.Adam, dict(lr=0.1), None, BEALE_START, 500),
    ("beale", co.AdamW, dict(lr=0.1, weight_decay=1e-5), None, BEALE_START, 500),
    ("beale", co.NAdam, dict(lr=0.1), 0.999, BEALE_START, 600),
    ("beale", co.RAdam, dict(lr=0.05), None, BEALE_START, 1200),
    ("beale", co.Adagrad, dict(lr=0.5), None, BEALE_START, 600),
    ("beale", co.RMSprop, dict(lr=0.01, alpha=0.9), 0.998, BEALE_START, 800),
]
FUNCTIONS = {"rosenbrock": (rosenbrock, rosenbrock_grad, (1.0, 1.0)), "beale": (beale, beale_grad, (3.0, 0.5))}


@pytest.mark.parametrize("name, cls, kw, decay, start, steps", CONVERGENCE,
                         ids=[f"{c[0]}-{c[1].__name__}" for c in CONVERGENCE])
def test_converges_to_the_known_minimum(name, cls, kw, decay, start, steps):
    f, grad, minimum = FUNCTIONS[name]
    assert f(*minimum) == 0 and grad(*minimum) == (0, 0)
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = cls([p], **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: decay**t) if decay else None
    for _ in range(steps):
        p.grad = torch.tensor(grad(*p.tolist()), dtype=torch.float64)
        opt.step()
        if sched:
            sched.step()
    distance = math.dist(p.tolist(), minimum)
    assert distance < 1e-2, f"ended at {p.tolist()}, {distance:.3g} from {minimum}"
    assert f(*p.tolist()) < 1e-3


# --- errors ---------------------------------------------------------------------------------------

BAD = [
    (co.SGD, dict(lr=-0.1), r"lr must be in \[0.0, inf\), got -0.1"),
    (co.SGD, dict(momentum=-0.1), "momentum"),
    (co.SGD, dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
    (co.SGD, dict(dampening=1.5), r"dampening must be in \[0.0, 1.0\]"),
    (co.SGD, dict(weight_decay=-1.0), "weight_decay"),
    (co.SGD, dict(nesterov=True), "nesterov"),
    (co.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    (co.Adagrad, dict(lr_decay=-1.0), "lr_decay"),
    (co.Adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (co.Adagrad, dict(eps=-1e-10), "eps"),
    (co.RMSprop, dict(alpha=1.0), r"alpha must be in \[0.0, 1.0\)"),
    (co.RMSprop, dict(alpha=-0.5), "alpha"),
    (co.RMSprop, dict(momentum=-0.5), "momentum"),
    (co.RMSprop, dict(eps=-1.0), "eps"),
    (co.Adam, dict(lr=float("nan")), "lr"),
    (co.Adam, dict(lr="0.1"), "lr must be a real number"),
    (co.Adam, dict(lr=torch.tensor([0.1, 0.2])), "lr must be a number or a 1-element tensor"),
    (co.Adam, dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0.0, 1.0\)"),
    (co.Adam, dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (co.Adam, dict(betas=(0.9,)), "betas must be a pair"),
    (co.Adam, dict(eps=-1e-8), "eps"),
    (co.Adam, dict(weight_decay=-0.1), "weight_decay"),
    (co.AdamW, dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (co.AdamW, dict(weight_decay=-0.1), "weight_decay"),
    (co.NAdam, dict(momentum_decay=-1.0), "momentum_decay"),
    (co.NAdam, dict(betas=(-0.1, 0.999)), r"betas\[0\]"),
    (co.RAdam, dict(eps=-1.0), "eps"),
    (co.RAdam, dict(lr=-1.0), "lr"),
]


@pytest.mark.parametrize("cls, kw, match", BAD, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD])
def test_bad_hyperparameter_raises_value_error_naming_it(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(2, requires_grad=True)], **kw)


def test_bad_hyperparameter_in_a_param_group_is_caught_too():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        co.Adam([{"params": [a]}, {"params": [b], "betas": (1.5, 0.9)}])
    opt = co.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [b], "lr": -1.0})


def test_sparse_gradients_are_rejected_with_a_clear_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        co.Adagrad(emb.parameters()).step()


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


TORCH_ONLY_FEATURES = [(cls, name) for cls in DEFAULTS for name, default in
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


# --- the base class's plug-in points --------------------------------------------------------------

class ClippedSGD(CourseOptimizer):
    """SGD whose step is scaled so that the group's global gradient norm is at most max_norm."""

    def __init__(self, params, lr: float = 0.1, max_norm: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, max_norm=max_norm, foreach=None, maximize=False))

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("max_norm", group["max_norm"], 0.0, math.inf)

    def update(self, param, grad, state, group) -> None:
        param.add_(grad, alpha=-group["lr"])

    def step_group(self, group, params, grads, states, scale: float = 1.0) -> None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        factor = scale * min(1.0, group["max_norm"] / (float(norm) + 1e-12))
        for param, grad, state in zip(params, grads, states):
            self.update(param, grad * factor, state, group)


def test_a_whole_group_optimizer_with_extra_step_arguments():
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen)]
    grads = [10 * torch.randn(3, 2, generator=gen), 10 * torch.randn(4, generator=gen)]
    ours = [t.clone().requires_grad_() for t in start]
    ref = [t.clone().requires_grad_() for t in start]
    opt = ClippedSGD(ours, lr=0.1, max_norm=1.0)
    for p, g in zip(ours, grads):
        p.grad = g.clone()
    opt.step(scale=0.5)
    for p, g in zip(ref, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ref, max_norm=1.0)
    torch.optim.SGD(ref, lr=0.05).step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q)
    assert all(opt.state[p]["step"] == 1 for p in ours)
    with pytest.raises(ValueError, match="max_norm"):
        ClippedSGD(ours, max_norm=-1.0)
    with pytest.raises(TypeError):
        co.Adam(ours).step(scale=0.5)


def test_a_subclass_must_define_its_update():
    class NoUpdate(CourseOptimizer):
        pass

    with pytest.raises(TypeError):
        NoUpdate([torch.zeros(1, requires_grad=True)], dict(lr=0.1))


@pytest.mark.parametrize(
    "cls, kw, device, expected",
    [(co.Adam, {}, "cpu", "tiled"), (co.Adam, {}, "cuda", "foreach"), (co.Adam, dict(foreach=True), "cpu", "foreach"),
     (co.Adam, dict(foreach=False), "cuda", "loop"), (co.SGD, {}, "cpu", "tiled"), (co.SGD, {}, "cuda", "foreach"),
     (co.Adagrad, {}, "cuda", "loop"), (co.Adagrad, dict(foreach=True), "cpu", "tiled"), (co.NAdam, {}, "cpu", "loop")],
)
def test_implementation_choice(cls, kw, device, expected):
    opt = cls([torch.zeros(1, requires_grad=True)], **kw)
    assert opt.implementation(opt.param_groups[0], torch.device(device)) == expected
