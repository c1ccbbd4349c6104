"""Convergence to known minima: Rosenbrock and Beale (closed forms written here, independent of the
library) for the optimizers of lessons 02-04, and a least-squares fit for Adafactor's two variants."""

from __future__ import annotations

import math

import pytest
import torch

import course_lib.optim as co


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


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("variant", ["torch", "paper"])
def test_adafactor_fits_a_least_squares_problem(variant):
    gen = torch.Generator().manual_seed(0)
    x, w_true = torch.randn(64, 8, generator=gen), torch.randn(8, 3, generator=gen)
    w = torch.zeros(8, 3, requires_grad=True)
    opt = co.Adafactor([w], lr=0.3, variant=variant, beta1=0.9 if variant == "paper" else None)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = ((x @ w - x @ w_true) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0]
