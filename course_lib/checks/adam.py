"""Checks for the exercise on Adam's bias correction; the oracle is ``torch.optim.Adam``.

Adam's moving averages start at zero, so early on they are too small by the factors
:math:`1 - \\beta_1^t` and :math:`1 - \\beta_2^t`; the corrected update divides them out:

.. math::
    \\hat m_t = \\frac{m_t}{1 - \\beta_1^t}, \\quad \\hat v_t = \\frac{v_t}{1 - \\beta_2^t}, \\quad
    \\theta_t = \\theta_{t-1} - \\eta \\, \\frac{\\hat m_t}{\\sqrt{\\hat v_t} + \\epsilon}.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ._core import Trials, describe, passed
from ._policy import policy

__all__ = ["adam_step", "adam_step_uncorrected", "uncorrected_ratio", "POLICY", "ADAM_CLASSES"]

#: What an exercise that asks for Adam's update (this one, and the AdamW exercise) may not call.
ADAM_CLASSES = ("torch.optim.Adam", "torch.optim.AdamW", "course_lib.optim.Adam", "course_lib.optim.AdamW")

POLICY = policy(
    "adam_step", "adam_step_uncorrected",
    forbid=ADAM_CLASSES,
    reason="the task is to write Adam's update yourself, with tensor operations",
)  # fmt: skip
policy("uncorrected_ratio", reason="plain arithmetic is all it takes")

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def torch_adam_states(
    optimizer_cls: type[torch.optim.Optimizer],
    theta: torch.Tensor,
    grads: Sequence[torch.Tensor],
    *,
    uncorrected: bool = False,
    **hyper,
) -> list[State]:
    """(theta, exp_avg, exp_avg_sq) after each step of ``optimizer_cls`` (Adam or AdamW) fed ``grads``.

    With ``uncorrected=True`` the bias correction is undone by rescaling each step's learning rate and
    eps: torch steps by :math:`\\frac{\\eta'}{b_1} m / (\\sqrt{v}/\\sqrt{b_2} + \\epsilon')`, which is
    :math:`\\eta\\, m / (\\sqrt{v} + \\epsilon)` for :math:`\\eta' = \\eta b_1 / \\sqrt{b_2}` and
    :math:`\\epsilon' = \\epsilon / \\sqrt{b_2}` (:math:`b_i = 1 - \\beta_i^t`).
    """
    param = theta.clone().requires_grad_(True)
    optimizer = optimizer_cls([param], **hyper)
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    states = []
    for t, grad in enumerate(grads, start=1):
        if uncorrected:
            b1, b2 = 1 - beta1**t, 1 - beta2**t
            group["lr"], group["eps"] = hyper["lr"] * b1 / math.sqrt(b2), hyper["eps"] / math.sqrt(b2)
        param.grad = grad.clone()
        optimizer.step()
        state = optimizer.state[param]
        states.append((param.detach().clone(), state["exp_avg"].clone(), state["exp_avg_sq"].clone()))
    return states


def _random_adam_run(run: Trials) -> tuple[dict, torch.Tensor, list[torch.Tensor], int]:
    """Hyperparameters, a start, gradients, and the first step to check (earlier steps only warm up)."""
    shape = run.shape()
    hyper = dict(
        lr=run.log_uniform(1e-3, 1e-1),
        beta1=run.uniform(0.5, 0.95),
        beta2=run.uniform(0.9, 0.9999),
        eps=run.log_uniform(1e-4, 1e-1),
    )
    first = 1 if run.integer(0, 1) else run.integer(2, 30)
    grads = [run.mixed_scale(*shape) for _ in range(first + 2)]
    return hyper, run.normal(*shape), grads, first


Hints = Callable[..., dict[str, dict[str, torch.Tensor]]]


def _check_adam_like(
    run: Trials,
    fn: Callable,
    name: str,
    states: Sequence[State],
    theta: torch.Tensor,
    grads: Sequence[torch.Tensor],
    first: int,
    hyper: dict,
    hints: Hints,
    **extra,
) -> None:
    """Feed ``fn`` the reference state before steps ``first, first+1, ...``; compare each step's result.

    ``hints(theta, grad, m, v, t, want)`` gets a step's inputs and the reference ``want = (theta, m, v)``
    after it, and returns ``{"m": {...}, "theta": {...}}``: advice mapped to what a mistake would give.
    """
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    for t, (grad, want) in enumerate(zip(grads, states), start=1):
        if t >= first:
            inputs = describe(theta=theta, grad=grad, m=m, v=v, t=t, **hyper, **extra)
            result = run.call(fn, name, inputs, theta.clone(), grad.clone(), m.clone(), v.clone(), t, **hyper, **extra)
            got_theta, got_m, got_v = run.expect_tuple(result, ("theta", "m", "v"), name)
            advice = hints(theta, grad, m, v, t, want)
            run.expect_tensor("m", got_m, want[1], inputs, hints=advice.get("m"))
            run.expect_tensor("v", got_v, want[2], inputs, hints=advice.get("v"))
            run.expect_tensor("theta", got_theta, want[0], inputs, hints=advice.get("theta"))
        theta, m, v = want


def _adam_candidates(theta, m, v, t, *, lr, beta1, beta2, eps, **_):
    """The update as a few plausible mistakes would compute it (for hints)."""
    b1, b2 = 1 - beta1**t, 1 - beta2**t
    return {
        "uncorrected": theta - lr * m / (v.sqrt() + eps),
        "corrected": theta - lr * (m / b1) / ((v / b2).sqrt() + eps),
        "eps inside": theta - lr * (m / b1) / (v / b2 + eps).sqrt(),
        "eps before correction": theta - lr * (m / b1) / ((v.sqrt() + eps) / math.sqrt(b2)),
        "t off by one": theta - lr * (m / (1 - beta1 ** (t + 1))) / ((v / (1 - beta2 ** (t + 1))).sqrt() + eps),
        "t off by one (t-1)": theta
        - lr * (m / max(1 - beta1 ** (t - 1), 1e-300)) / ((v / max(1 - beta2 ** (t - 1), 1e-300)).sqrt() + eps),
    }


def adam_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(theta, grad, m, v, t, *, lr, beta1, beta2, eps, bias_correction=True) -> (theta, m, v)``.

    ``t`` is the number of the step being taken, counting from 1. Each trial compares a few steps
    (sometimes the first ones, sometimes later ones) with ``torch.optim.Adam`` on random gradients
    spanning four orders of magnitude, with random betas and an ``eps`` large enough to matter.
    """
    run = Trials("adam_step", fn, seed, trials)
    for _ in run:
        hyper, theta, grads, first = _random_adam_run(run)
        torch_hyper = dict(lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"])
        states = torch_adam_states(torch.optim.Adam, theta, grads, **torch_hyper)

        def hints(theta, grad, m, v, t, want):
            wrong = _adam_candidates(theta, want[1], want[2], t, **hyper)
            return {"theta": {
                "the step is not bias-corrected: divide m by 1 - beta1**t and v by 1 - beta2**t.": wrong["uncorrected"],
                "eps goes outside the square root: m_hat / (sqrt(v_hat) + eps).": wrong["eps inside"],
                "add eps after correcting v: sqrt(v / (1 - beta2**t)) + eps.": wrong["eps before correction"],
                "t is the number of this step, starting at 1: the first step uses beta1**1.": wrong["t off by one"],
                "t already counts this step: use beta**t, not beta**(t - 1).": wrong["t off by one (t-1)"],
            }}

        _check_adam_like(run, fn, "adam_step", states, theta, grads, first, hyper, hints)
    passed("adam_step", f"{run.n} random runs match torch.optim.Adam step by step")


def adam_step_uncorrected(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(..., bias_correction=False)``: Adam's update from the raw averages,
    :math:`\\theta_t = \\theta_{t-1} - \\eta\\, m_t / (\\sqrt{v_t} + \\epsilon)`.

    The oracle is ``torch.optim.Adam`` with each step's ``lr`` and ``eps`` rescaled to cancel its bias
    correction (see :func:`torch_adam_states`).
    """
    run = Trials("adam_step_uncorrected", fn, seed, trials)
    for _ in run:
        hyper, theta, grads, first = _random_adam_run(run)
        torch_hyper = dict(lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"])
        states = torch_adam_states(torch.optim.Adam, theta, grads, uncorrected=True, **torch_hyper)

        def hints(theta, grad, m, v, t, want):
            wrong = _adam_candidates(theta, want[1], want[2], t, **hyper)
            return {"theta": {"with bias_correction=False, use m and v as they are, undivided.": wrong["corrected"]}}

        _check_adam_like(run, fn, "adam_step", states, theta, grads, first, hyper, hints, bias_correction=False)
    passed("adam_step_uncorrected", f"{run.n} random runs match uncorrected Adam step by step")


def _ratio_by_recursion(t: int, beta1: float, beta2: float) -> float:
    """Step size without correction over step size with it, for a constant gradient g = 1 and eps = 0.

    With correction the step is exactly the learning rate (:math:`\\hat m_t = g`, :math:`\\hat v_t = g^2`),
    so the ratio is :math:`m_t / \\sqrt{v_t}`, computed here by running the two averages.
    """
    m = v = 0.0
    for _ in range(t):
        m = beta1 * m + (1 - beta1)
        v = beta2 * v + (1 - beta2)
    return m / math.sqrt(v)


def uncorrected_ratio(fn: Callable, *, seed: int | None = None, trials: int = 8) -> None:
    """Check ``fn(t, beta1, beta2) -> float``: how many times larger the uncorrected step is at step ``t``.

    For a constant gradient and ``eps = 0`` this is :math:`(1 - \\beta_1^t) / \\sqrt{1 - \\beta_2^t}`; the
    reference runs the two moving averages instead of using the closed form.
    """
    run = Trials("uncorrected_ratio", fn, seed, trials)
    for trial in run:
        t = 1 if trial == 0 else run.integer(1, 300)
        beta1, beta2 = run.uniform(0.5, 0.99), run.uniform(0.9, 0.99999)
        inputs = describe(t=t, beta1=beta1, beta2=beta2)
        got = run.call(fn, "uncorrected_ratio", inputs, t, beta1, beta2)
        run.expect_close(
            "uncorrected_ratio",
            got,
            _ratio_by_recursion(t, beta1, beta2),
            inputs,
            hints={
                "the ratio depends on t: use beta1**t and beta2**t.": (1 - beta1) / math.sqrt(1 - beta2),
                "the second moment enters through its square root.": (1 - beta1**t) / (1 - beta2**t),
                "that is the inverse: uncorrected step / corrected step.": math.sqrt(1 - beta2**t) / (1 - beta1**t),
            },
        )
    passed("uncorrected_ratio", f"{run.n} random (t, beta1, beta2) match the running averages")
