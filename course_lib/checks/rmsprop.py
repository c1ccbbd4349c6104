"""Checks for the RMSprop exercise; the oracle is ``torch.optim.RMSprop``.

RMSprop keeps a running average of squared gradients and divides the step by its square root:

.. math::
    v_t = \\alpha v_{t-1} + (1 - \\alpha) g_t^2, \\qquad
    \\theta_t = \\theta_{t-1} - \\eta \\, \\frac{g_t}{\\sqrt{v_t} + \\epsilon}.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch

from ._core import DTYPE, Trials, describe, passed
from ._policy import policy

__all__ = ["rmsprop_step", "run_rmsprop", "steps_to_reach", "rmsprop_nesterov_step", "rosenbrock", "POLICY"]

POLICY = [
    policy(
        "rmsprop_step", "run_rmsprop",
        forbid=("torch.optim.RMSprop", "course_lib.optim.RMSprop"),
        reason="the task is to write RMSprop's update yourself, with tensor operations",
    ),
    policy(
        "rmsprop_nesterov_step",
        forbid=("torch.optim.RMSprop", "course_lib.optim.RMSprop", "torch.optim.SGD", "course_lib.optim.SGD"),
        reason="the task is to write the update yourself, with tensor operations",
    ),
    policy("steps_to_reach", reason="plain Python is all it takes"),
]  # fmt: skip

_EPS_INSIDE = "eps goes outside the square root: grad / (sqrt(square_avg) + eps), as torch.optim.RMSprop does."


def rosenbrock(xy: torch.Tensor, a: float = 1.0, b: float = 100.0) -> torch.Tensor:
    """Rosenbrock's valley :math:`(a - x)^2 + b (y - x^2)^2`, minimum 0 at :math:`(a, a^2)`."""
    x, y = xy[0], xy[1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


def _rmsprop_oracle(
    theta: torch.Tensor, grads: Sequence[torch.Tensor], **hyper
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(theta, square_avg) after each step of ``torch.optim.RMSprop`` fed with ``grads``."""
    param = theta.clone().requires_grad_(True)
    optimizer = torch.optim.RMSprop([param], **hyper)
    states = []
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        states.append((param.detach().clone(), optimizer.state[param]["square_avg"].clone()))
    return states


def rmsprop_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(theta, grad, square_avg, *, lr, alpha, eps) -> (theta, square_avg)``.

    Every step of several short random runs of ``torch.optim.RMSprop`` (random shapes, learning
    rates, ``alpha`` and ``eps``, gradients spanning four orders of magnitude) must be reproduced from
    the state before it.
    """
    run = Trials("rmsprop_step", fn, seed, trials)
    for _ in run:
        shape = run.shape()
        hyper = dict(lr=run.log_uniform(1e-3, 1e-1), alpha=run.uniform(0.5, 0.999), eps=run.log_uniform(1e-4, 1e-1))
        theta = run.normal(*shape)
        grads = [run.mixed_scale(*shape) for _ in range(run.integer(2, 4))]
        square_avg = torch.zeros_like(theta)
        for grad, (want_theta, want_avg) in zip(grads, _rmsprop_oracle(theta, grads, **hyper)):
            inputs = describe(theta=theta, grad=grad, square_avg=square_avg, **hyper)
            result = run.call(fn, "rmsprop_step", inputs, theta.clone(), grad.clone(), square_avg.clone(), **hyper)
            got_theta, got_avg = run.expect_tuple(result, ("theta", "square_avg"), "rmsprop_step")
            lr, alpha, eps = hyper["lr"], hyper["alpha"], hyper["eps"]
            average_hints = {
                "the new gradient gets weight 1 - alpha, the old average gets alpha.": (1 - alpha) * square_avg
                + alpha * grad**2,
                "average the squared gradient, grad**2, not the gradient.": alpha * square_avg + (1 - alpha) * grad,
            }
            run.expect_tensor("square_avg", got_avg, want_avg, inputs, hints=average_hints)
            theta_hints = {
                _EPS_INSIDE: theta - lr * grad / (want_avg + eps).sqrt(),
                "use the updated square_avg (this step's) in the denominator.": theta
                - lr * grad / (square_avg.sqrt() + eps),
            }
            run.expect_tensor("theta", got_theta, want_theta, inputs, hints=theta_hints)
            theta, square_avg = want_theta, want_avg
    passed("rmsprop_step", f"{run.n} random runs match torch.optim.RMSprop step by step")


def run_rmsprop(fn: Callable, *, seed: int | None = None, trials: int = 3) -> None:
    """Check ``fn(loss_fn, x0, *, lr, alpha, eps, n_steps) -> positions`` (shape ``(n_steps + 1, 2)``).

    The reference trajectory is ``torch.optim.RMSprop`` minimizing a Rosenbrock function with random
    ``a`` and ``b`` from a random start; row 0 of the positions is the start. ``eps`` is large enough
    (1e-4 to 1e-2) that every mistake :func:`rmsprop_step` lists changes the trajectory too.
    """
    run = Trials("run_rmsprop", fn, seed, trials)
    for _ in run:
        a, b = run.uniform(0.5, 2.0), run.uniform(10.0, 100.0)
        x0 = torch.tensor([run.uniform(-2.0, 2.0), run.uniform(-1.0, 3.0)], dtype=DTYPE)
        hyper = dict(lr=run.log_uniform(1e-3, 1e-2), alpha=run.uniform(0.8, 0.99), eps=run.log_uniform(1e-4, 1e-2))
        n_steps = run.integer(10, 40)
        loss_fn = partial(rosenbrock, a=a, b=b)
        param = x0.clone().requires_grad_(True)
        optimizer = torch.optim.RMSprop([param], **hyper)
        expected = [x0.clone()]
        for _ in range(n_steps):
            optimizer.zero_grad()
            loss_fn(param).backward()
            optimizer.step()
            expected.append(param.detach().clone())
        inputs = describe(loss_fn=f"Rosenbrock with a={a:.6g}, b={b:.6g}", x0=x0, n_steps=n_steps, **hyper)
        got = run.call(fn, "run_rmsprop", inputs, loss_fn, x0.clone(), n_steps=n_steps, **hyper)
        run.expect_tensor("positions", got, torch.stack(expected), inputs, rtol=1e-7, atol=1e-9)
    passed("run_rmsprop", f"{run.n} random Rosenbrock runs match torch.optim.RMSprop's trajectory")


def steps_to_reach(fn: Callable, *, seed: int | None = None, trials: int = 8) -> None:
    """Check ``fn(losses, threshold) -> int | None``: the first index with ``losses[i] < threshold``.

    Index ``i`` is the number of optimizer steps taken (``losses[0]`` is the loss at the start);
    ``None`` when the threshold is never reached. The trials include a loss equal to the threshold
    (not below it), a start already below it, and a run that never gets there.
    """
    run = Trials("steps_to_reach", fn, seed, trials)
    for trial in run:
        n = run.integer(5, 30)
        losses = (run.normal(n, scale=0.3).cumsum(0) + torch.linspace(3.0, 0.0, n, dtype=DTYPE)).exp().tolist()
        case = trial % 4
        if case == 0:  # crossing somewhere after the start, with a value equal to the threshold before it
            cut = run.integer(1, n - 1)
            threshold = min(losses[:cut]) * run.uniform(0.5, 1.0)
            losses[cut - 1] = threshold
        elif case == 1:  # already below at the start
            threshold = losses[0] * run.uniform(1.01, 2.0)
        elif case == 2:  # never below
            threshold = min(losses) * run.uniform(0.1, 1.0)
        else:  # a threshold drawn among the values
            threshold = losses[run.integer(0, n - 1)] * run.uniform(0.9, 1.1)
        below = (torch.tensor(losses, dtype=DTYPE) < threshold).nonzero()
        expected = int(below[0]) if len(below) else None
        inputs = describe(losses=[round(x, 6) for x in losses], threshold=threshold)
        got = run.call(fn, "steps_to_reach", inputs, list(losses), threshold)
        if got is not None and (isinstance(got, bool) or not isinstance(got, int)):
            raise run.fail(f"steps_to_reach should return an int or None, but it returned {got!r:.100}")
        if got != expected:
            advice = ""
            if got is not None and 0 <= got < n and losses[got] == threshold:
                advice = "\nHint: the loss must be strictly below the threshold."
            elif expected is None:
                advice = "\nHint: return None when no loss is below the threshold."
            elif got == expected + 1:
                advice = "\nHint: index 0 is the start (zero steps); losses[i] is the loss after i steps."
            raise run.fail(f"steps_to_reach returned {got!r}, expected {expected!r}, on input\n{inputs}{advice}")
    passed("steps_to_reach", f"{run.n} random loss curves, including edge cases")


def rmsprop_nesterov_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(theta, grad, square_avg, buf, *, lr, alpha, eps, momentum) -> (theta, square_avg, buf)``.

    RMSprop with Nesterov momentum applies Nesterov's look-ahead to the preconditioned gradient
    :math:`u_t = g_t / (\\sqrt{v_t} + \\epsilon)`:

    .. math::
        b_t = \\mu b_{t-1} + u_t, \\qquad \\theta_t = \\theta_{t-1} - \\eta (u_t + \\mu b_t).

    The oracle composes two torch optimizers: ``torch.optim.RMSprop`` gives :math:`v_t`, and
    ``torch.optim.SGD(momentum=mu, nesterov=True)`` fed with :math:`u_t` as its gradient gives
    :math:`b_t` and :math:`\\theta_t`.
    """
    run = Trials("rmsprop_nesterov_step", fn, seed, trials)
    for _ in run:
        shape = run.shape()
        lr, alpha, eps = run.log_uniform(1e-3, 1e-1), run.uniform(0.5, 0.999), run.log_uniform(1e-4, 1e-1)
        momentum = run.uniform(0.5, 0.95)
        theta = run.normal(*shape)
        grads = [run.mixed_scale(*shape) for _ in range(run.integer(2, 4))]
        square_avg, buf = torch.zeros_like(theta), torch.zeros_like(theta)
        averages = [avg for _, avg in _rmsprop_oracle(theta, grads, lr=lr, alpha=alpha, eps=eps)]
        param = theta.clone().requires_grad_(True)
        sgd = torch.optim.SGD([param], lr=lr, momentum=momentum, nesterov=True)
        for grad, want_avg in zip(grads, averages):
            param.grad = grad / (want_avg.sqrt() + eps)
            sgd.step()
            want_theta, want_buf = param.detach().clone(), sgd.state[param]["momentum_buffer"].clone()
            hyper = dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum)
            inputs = describe(theta=theta, grad=grad, square_avg=square_avg, buf=buf, **hyper)
            state = (theta.clone(), grad.clone(), square_avg.clone(), buf.clone())
            result = run.call(fn, "rmsprop_nesterov_step", inputs, *state, **hyper)
            names = ("theta", "square_avg", "buf")
            got_theta, got_avg, got_buf = run.expect_tuple(result, names, "rmsprop_nesterov_step")
            run.expect_tensor("square_avg", got_avg, want_avg, inputs)
            run.expect_tensor("buf", got_buf, want_buf, inputs)
            run.expect_tensor(
                "theta",
                got_theta,
                want_theta,
                inputs,
                hints={
                    "that is heavy-ball momentum (theta -= lr * buf); Nesterov steps along u + momentum * buf.": theta
                    - lr * want_buf
                },
            )
            theta, square_avg, buf = want_theta, want_avg, want_buf
    passed("rmsprop_nesterov_step", f"{run.n} random runs match RMSprop + torch's Nesterov SGD step by step")
