"""course_lib.optim's LAMB and LARS: closed-form first steps, zero norms, plain float64 references.

The references below are written from the papers' equations, one tensor at a time, without the
library. With adaptation switched off, LAMB is torch.optim.AdamW and LARS is torch.optim.SGD.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from course_lib.optim.lamb import LAMB
from course_lib.optim.lars import LARS

STEPS = 20


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: one thread beats waking a second one, by far on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
F64 = torch.float64


def make_params(seed: int = 0) -> list[torch.Tensor]:
    """A matrix, a 0-dim scalar, a non-contiguous matrix, a vector of zeros (a fresh bias)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(3, 4, generator=gen, dtype=F64),
              torch.randn((), generator=gen, dtype=F64),
              torch.randn(5, 3, generator=gen, dtype=F64).t(),
              torch.zeros(6, dtype=F64)]
    return [p.requires_grad_() for p in params]


def grads_at(params: list[torch.Tensor], t: int) -> list[torch.Tensor | None]:
    """Seeded noise plus a pull towards 0, of very different scales; parameter 1 misses every third step."""
    gen = torch.Generator().manual_seed(100 + t)
    grads = []
    for i, p in enumerate(params):
        noise = torch.randn(p.shape, generator=gen, dtype=F64) * 10.0 ** (i - 2)
        grads.append(None if i == 1 and t % 3 == 0 else noise + 0.5 * p.detach())
    return grads


def lr_factor(t: int) -> float:
    return 1 / (1 + 0.1 * t)


def run(make_opt, params: list[torch.Tensor], group_options: dict, steps: int = STEPS, start: int = 0, opt=None):
    opt = opt or make_opt([{"params": params[:2]}, {"params": params[2:], **group_options}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor, last_epoch=start - 1)
    for t in range(start, start + steps):
        for p, g in zip(params, grads_at(params, t)):
            p.grad = g
        opt.step()
        sched.step()
    return opt


# --- LAMB -----------------------------------------------------------------------------------------

def reference_lamb(params, group_options, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                   bias_correction=True, clamp_value=None):
    """LAMB (You et al. 2020, Algorithm 2) for the same groups, gradients and schedule, plainly."""
    b1, b2 = betas
    theta = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    count = [0] * len(theta)
    for t in range(STEPS):
        for i, g in enumerate(grads_at(theta, t)):
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
            theta[i] = theta[i] - options["lr"] * lr_factor(t) * ratio * u
    return theta


LAMB_CASES = [
    (dict(lr=0.01), {}),
    (dict(lr=0.01, weight_decay=0.1), {"weight_decay": 0.0, "adapt": False}),
    (dict(lr=0.01, weight_decay=0.1, clamp_value=0.5), {"lr": 0.02}),
    (dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3, bias_correction=False), {"weight_decay": 0.3}),
]


@pytest.mark.parametrize("config, group_options", LAMB_CASES, ids=[str(c) for c, _ in LAMB_CASES])
def test_lamb_follows_the_plain_reference(config, group_options):
    params = make_params()
    opt = run(lambda g: LAMB(g, **config), params, group_options)
    expected = reference_lamb(make_params(), group_options, **config)
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
    params = make_params()[:3]
    opt = LAMB(params, lr=0.01, betas=(0.8, 0.9))
    for t in range(6):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads_at(params, t)):
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
    ours, ref = make_params(), make_params()
    run(lambda g: LAMB(g, lr=0.01, weight_decay=0.1, eps=1e-8, adapt=False), ours, {"weight_decay": 0.2})
    run(lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.1, eps=1e-8, foreach=False), ref, {"weight_decay": 0.2})
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


# --- LARS -----------------------------------------------------------------------------------------

def reference_lars(params, group_options, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3,
                   nesterov=False):
    """LARS (You et al. 2017, Algorithm 1) for the same groups, gradients and schedule, plainly;
    the momentum buffer starts at the first step's direction, as in torch.optim.SGD."""
    theta = [p.detach().clone() for p in params]
    buf: list[torch.Tensor | None] = [None] * len(theta)
    for t in range(STEPS):
        for i, g in enumerate(grads_at(theta, t)):
            if g is None:
                continue
            options = dict(lr=lr, weight_decay=weight_decay, adapt=True)
            if i >= 2:
                options.update(group_options)
            beta = options["weight_decay"]
            w_norm = math.sqrt(float((theta[i] ** 2).sum()))
            g_norm = math.sqrt(float((g**2).sum()))
            local = trust_coefficient * w_norm / (g_norm + beta * w_norm)
            if not options["adapt"] or w_norm == 0 or g_norm == 0:
                local = 1.0
            d = local * (g + beta * theta[i])
            buf[i] = d if buf[i] is None else momentum * buf[i] + d
            step = d + momentum * buf[i] if nesterov else buf[i]
            theta[i] = theta[i] - options["lr"] * lr_factor(t) * step
    return theta


LARS_CASES = [
    (dict(lr=2.0), {}),
    (dict(lr=2.0, weight_decay=0.01), {"weight_decay": 0.0, "adapt": False, "lr": 0.1}),
    (dict(lr=1.0, momentum=0.5, nesterov=True, trust_coefficient=0.02, weight_decay=0.05), {}),
    (dict(lr=1.0, momentum=0.0, trust_coefficient=0.01), {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("config, group_options", LARS_CASES, ids=[str(c) for c, _ in LARS_CASES])
def test_lars_follows_the_plain_reference(config, group_options):
    params = make_params()
    run(lambda g: LARS(g, **config), params, group_options)
    expected = reference_lars(make_params(), group_options, **config)
    for p, q in zip(params, expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


def test_lars_first_step_in_closed_form():
    """theta_1 = theta_0 - lr * eta * ||w|| / (||g|| + beta ||w||) * (g + beta w)."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(6, 3, generator=gen, dtype=F64)
    g = 50 * torch.randn(6, 3, generator=gen, dtype=F64)
    lr, eta, beta = 2.0, 1e-3, 5e-4
    p = w.clone().requires_grad_()
    opt = LARS([p], lr=lr, trust_coefficient=eta, weight_decay=beta)
    p.grad = g.clone()
    opt.step()
    local = eta * w.norm() / (g.norm() + beta * w.norm())
    torch.testing.assert_close(p.detach(), w - lr * local * (g + beta * w), rtol=1e-14, atol=1e-15)


def test_lars_first_step_does_not_depend_on_the_gradient_scale():
    """Without decay the local rate divides by ||g||: the step is lr * eta * ||w|| * g / ||g||."""
    gen = torch.Generator().manual_seed(5)
    w, g = torch.randn(10, generator=gen, dtype=F64), torch.randn(10, generator=gen, dtype=F64)
    moved = []
    for scale in (1e-6, 1.0, 1e6):
        p = w.clone().requires_grad_()
        p.grad = scale * g
        LARS([p], lr=1.0).step()
        moved.append(p.detach())
    torch.testing.assert_close(moved[0], moved[2], rtol=1e-14, atol=0)
    torch.testing.assert_close(moved[1], w - 1e-3 * w.norm() * g / g.norm(), rtol=1e-14, atol=1e-16)


def test_lars_zero_norms_fall_back_to_local_rate_one():
    zero_weight = torch.zeros(4, dtype=F64, requires_grad=True)
    zero_grad = torch.ones(4, dtype=F64, requires_grad=True)
    opt = LARS([zero_weight, zero_grad], lr=0.1, weight_decay=0.5)
    zero_weight.grad = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=F64)
    zero_grad.grad = torch.zeros(4, dtype=F64)
    opt.step()
    torch.testing.assert_close(zero_weight.detach(), -0.1 * zero_weight.grad, rtol=0, atol=1e-16)
    torch.testing.assert_close(zero_grad.detach(), torch.full((4,), 1 - 0.1 * 0.5, dtype=F64), rtol=0, atol=1e-16)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_without_adaptation_is_sgd(nesterov):
    ours, ref = make_params(), make_params()
    config = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    run(lambda g: LARS(g, adapt=False, **config), ours, {"weight_decay": 0.0})
    run(lambda g: torch.optim.SGD(g, foreach=False, **config), ref, {"weight_decay": 0.0})
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_lars_momentum_switched_on_later_follows_the_base_rule():
    """Momentum 0, then 0.9 from step 4: the buffer starts at zero then (the base class's rule). Oracle:
    LARS without adaptation is SGD, and torch's SGD given a zero buffer at that step does the same."""
    def trajectory(make, inject):
        p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        opt = make([p])
        for t in range(8):
            if t == 3:
                opt.param_groups[0]["momentum"] = 0.9
                if inject:
                    opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
            p.grad = torch.sin(torch.arange(3.0, dtype=torch.float64) + t) + p.detach()
            opt.step()
        return p.detach()

    ours = trajectory(lambda ps: LARS(ps, lr=0.1, momentum=0.0, adapt=False), inject=False)
    theirs = trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.0, foreach=False), inject=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


# --- both -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda g: LAMB(g, lr=0.01, weight_decay=0.1, clamp_value=10.0),
                                  lambda g: LARS(g, lr=1.0, weight_decay=0.01, nesterov=True)],
                         ids=["LAMB", "LARS"])
def test_state_dict_survives_save_and_weights_only_load(make):
    straight = make_params()
    run(make, straight, {"adapt": False}, steps=10)

    params = make_params()
    opt = run(make, params, {"adapt": False}, steps=5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = [p.detach().clone().requires_grad_() for p in params]
    new = make([{"params": fresh[:2]}, {"params": fresh[2:]}])
    new.load_state_dict(torch.load(buffer, weights_only=True))
    assert new.param_groups[1]["adapt"] is False
    run(None, fresh, {}, steps=5, start=5, opt=new)
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_maximize_ascends(cls):
    p = torch.tensor([1.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    opt = cls([p], lr=0.1, maximize=True)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        opt.step()
        losses.append(float((p.detach() ** 2).sum()))
    assert losses[-1] > losses[0] > 5.25


@pytest.mark.parametrize("cls, kw, match", [
    (LAMB, dict(lr=-0.1), r"lr must be in \[0.0, inf\)"),
    (LAMB, dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0.0, 1.0\)"),
    (LAMB, dict(eps=-1e-6), "eps"),
    (LAMB, dict(weight_decay=-0.1), "weight_decay"),
    (LAMB, dict(clamp_value=-1.0), "clamp_value"),
    (LARS, dict(lr=float("nan")), "lr"),
    (LARS, dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
    (LARS, dict(weight_decay=-1.0), "weight_decay"),
    (LARS, dict(trust_coefficient=-1e-3), "trust_coefficient"),
    (LARS, dict(momentum=0.0, nesterov=True), "nesterov"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(2, requires_grad=True)], **kw)
