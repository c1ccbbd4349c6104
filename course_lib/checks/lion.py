"""Checks for the Lion exercise; the oracle is Lion's published update, written out below.

Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms") steps along
the sign of an interpolation between the momentum and the gradient, and only then updates the
momentum, with a second, slower coefficient:

.. math::
    \\theta &\\leftarrow \\theta (1 - \\eta \\lambda) \\\\
    c &= \\beta_1 m + (1 - \\beta_1) g \\\\
    \\theta &\\leftarrow \\theta - \\eta\\, \\mathrm{sign}(c) \\\\
    m &\\leftarrow \\beta_2 m + (1 - \\beta_2) g
"""

from __future__ import annotations

from typing import Callable

import torch

from ._core import DTYPE, Student, StudentRaised, Trials, describe, passed
from ._policy import policy

__all__ = ["lion_reference", "lion_step", "lion_optimizer", "POLICY"]

POLICY = policy(
    "lion_step", "lion_optimizer",
    forbid=("course_lib.optim.Lion", "lion_pytorch.*"),
    reason="the task is to write Lion yourself (your lion_step is yours to reuse in the optimizer)",
)  # fmt: skip

_MOMENTUM_FIRST = (
    "take the sign of c = beta1 * m + (1 - beta1) * grad with the momentum from before this step; "
    "update m only afterwards."
)
_SIGN_OF_MOMENTUM = "the step follows sign(c) with c = beta1 * m + (1 - beta1) * grad, not the updated momentum."


def lion_reference(
    theta: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lion step as published: decoupled decay, the sign of the interpolation, then the momentum."""
    theta = theta * (1 - lr * weight_decay)
    c = beta1 * m + (1 - beta1) * grad
    theta = theta - lr * torch.sign(c)
    m = beta2 * m + (1 - beta2) * grad
    return theta, m


def _random_lion_state(run: Trials, shape: tuple[int, ...], beta1: float, beta2: float):
    """A random momentum, and a gradient planted against it by :func:`_plant`."""
    m = run.normal(*shape)
    return m, _plant(run, m, beta1, beta2)


def _plant(run: Trials, m: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """A gradient with entries planted against the momentum ``m`` where the order of the update matters.

    With ``g = -r m``, the interpolation :math:`c = \\beta_1 m + (1 - \\beta_1) g` takes the sign of the
    gradient once :math:`r > r_c = \\beta_1 / (1 - \\beta_1)`. About a third of the entries get
    :math:`r_c < r < \\beta_2 / (1 - \\beta_2)`, where the updated momentum still has the sign of ``m``
    (catches stepping along the updated momentum); another third get
    :math:`\\beta_1 \\beta_2 / (\\beta_1 (1 - \\beta_2) + 1 - \\beta_1) < r < r_c`, where interpolating
    with the updated momentum already flips the sign (catches updating the momentum first).
    """
    shape = tuple(m.shape)
    grad = run.mixed_scale(*shape, low=1e-2, high=10.0)
    critical = beta1 / (1 - beta1)
    regions = [
        (critical, beta2 / (1 - beta2)),
        (beta1 * beta2 / (beta1 * (1 - beta2) + 1 - beta1), critical),
    ]
    kind = torch.randint(0, 3, shape, generator=run.generator).view(-1)
    kind[0], kind[1] = 0, 1
    position = torch.rand(shape, generator=run.generator, dtype=DTYPE).clamp(0.05, 0.95).view(-1)
    ratio = torch.zeros_like(position)
    for index, (low, high) in enumerate(regions):
        ratio = torch.where(kind == index, low + (high - low) * position, ratio)
    planted = (kind < 2).view(shape) & (m != 0)
    return torch.where(planted, -ratio.view(shape) * m, grad)


def _random_lion_hyper(run: Trials) -> dict:
    return dict(
        lr=run.log_uniform(1e-3, 1e-1),
        beta1=run.uniform(0.8, 0.95),
        beta2=run.uniform(0.97, 0.999),
        weight_decay=run.log_uniform(1e-2, 1.0),
    )


def lion_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(theta, grad, m, *, lr, beta1, beta2, weight_decay) -> (theta, m)`` against the
    published update, on states chosen so that the order of the update matters.
    """
    run = Trials("lion_step", fn, seed, trials)
    for _ in run:
        shape = run.shape()
        hyper = _random_lion_hyper(run)
        lr, beta1, beta2, decay = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["weight_decay"]
        theta = run.normal(*shape)
        m, grad = _random_lion_state(run, shape, beta1, beta2)
        for _ in range(2):
            want_theta, want_m = lion_reference(theta, grad, m, **hyper)
            inputs = describe(theta=theta, grad=grad, m=m, **hyper)
            result = run.call(fn, "lion_step", inputs, theta.clone(), grad.clone(), m.clone(), **hyper)
            got_theta, got_m = run.expect_tuple(result, ("theta", "m"), "lion_step")
            decayed = theta * (1 - lr * decay)
            c_with_beta1 = beta1 * m + (1 - beta1) * grad
            step = lr * torch.sign(c_with_beta1)
            momentum_hints = {"the momentum uses beta2: m = beta2 * m + (1 - beta2) * grad.": c_with_beta1}
            run.expect_tensor("m", got_m, want_m, inputs, hints=momentum_hints)
            theta_hints = {
                _MOMENTUM_FIRST: decayed - lr * torch.sign(beta1 * want_m + (1 - beta1) * grad),
                _SIGN_OF_MOMENTUM: decayed - lr * torch.sign(want_m),
                "the interpolation c uses beta1; beta2 is for the momentum.": decayed
                - lr * torch.sign(beta2 * m + (1 - beta2) * grad),
                "the decay shrinks theta: multiply by (1 - lr * weight_decay).": theta * (1 + lr * decay) - step,
                "scale the decay by the learning rate: theta * (1 - lr * weight_decay).": theta * (1 - decay) - step,
            }
            run.expect_tensor("theta", got_theta, want_theta, inputs, hints=theta_hints)
            theta, m, grad = want_theta, want_m, run.mixed_scale(*shape)
    passed("lion_step", f"{run.n} random runs match Lion's published update")


def lion_optimizer(cls: Callable, *, seed: int | None = None, trials: int = 3) -> None:
    """Check a ``torch.optim.Optimizer`` subclass ``cls(params, lr, betas, weight_decay)`` implementing Lion.

    Two parameter groups with their own ``lr`` and ``weight_decay``, a parameter without a gradient
    (it must not move), three steps; each parameter must follow the published update. After the first
    step the gradients are planted where the order of the update matters (as in :func:`lion_step`), so
    that every mistake that check lists shows here too.
    """
    run = Trials("lion_optimizer", cls, seed, trials)
    for _ in run:
        hyper = [_random_lion_hyper(run) for _ in range(2)]
        betas = (hyper[0]["beta1"], hyper[0]["beta2"])
        shapes = [run.shape() for _ in range(3)]
        start = [run.normal(*shape) for shape in shapes]
        settings = [dict(lr=h["lr"], beta1=betas[0], beta2=betas[1], weight_decay=h["weight_decay"]) for h in hyper]
        groups = [{"lr": h["lr"], "weight_decay": h["weight_decay"]} for h in hyper]
        inputs = describe(groups=[{k: round(v, 6) for k, v in g.items()} for g in groups], betas=betas)
        # the momentum does not depend on the parameters: plant each step's gradients against it
        momenta = [torch.zeros_like(p) for p in start]
        grads: list[list[torch.Tensor | None]] = []
        for step in range(3):
            step_grads: list[torch.Tensor | None] = []
            for i, shape in enumerate(shapes):
                if i == 1:  # the second parameter of the first group gets no gradient
                    step_grads.append(None)
                    continue
                grad = run.normal(*shape) if step == 0 else _plant(run, momenta[i], *betas)
                step_grads.append(grad)
                momenta[i] = betas[1] * momenta[i] + (1 - betas[1]) * grad
            grads.append(step_grads)
        seen = run.probe(_drive_optimizer, cls, run.fn_name, inputs, start, groups, betas, grads)
        if seen["type"] is not None:
            raise run.fail(f"{run.fn_name}(...) should be a torch.optim.Optimizer, but it is a {seen['type']}.")
        expected, momenta = [p.clone() for p in start], [torch.zeros_like(p) for p in start]
        for step, after in enumerate(seen["params"]):
            for i, g in enumerate(grads[step]):
                if g is not None:
                    expected[i], momenta[i] = lion_reference(expected[i], g, momenta[i], **settings[0 if i < 2 else 1])
            for i, got in enumerate(after):
                what = f"parameter {i} (group {0 if i < 2 else 1}) after step {step + 1}"
                run.expect_tensor(what, got, expected[i], inputs)
        if seen["error"]:
            raise run.reraise(seen["error"], inputs)
    passed("lion_optimizer", f"{run.n} random two-group runs match Lion's published update")


def _drive_optimizer(cls: Callable, student: Student, start: list, groups: list[dict], betas: tuple, grads: list):
    """Probe: the parameters after each step of ``cls(groups, lr=..., betas=betas, weight_decay=0.0)`` fed
    ``grads`` (None: no gradient); stops at the first exception of the optimizer's."""
    params = [p.clone().requires_grad_(True) for p in start]
    param_groups = [{"params": params[:2], **groups[0]}, {"params": params[2:], **groups[1]}]
    optimizer = student(getattr(cls, "__name__", "Lion"), cls, param_groups, lr=groups[0]["lr"], betas=betas,
                        weight_decay=0.0)  # fmt: skip
    if not isinstance(optimizer, torch.optim.Optimizer):
        return {"type": type(optimizer).__name__, "params": [], "error": None}
    trajectory = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.clone()
        try:
            student("step", optimizer.step)
        except StudentRaised as error:
            return {"type": None, "params": trajectory, "error": error.to_dict()}
        trajectory.append([p.detach().clone() for p in params])
    return {"type": None, "params": trajectory, "error": None}
