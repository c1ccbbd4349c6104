"""Checks for the warmup-then-cosine exercise; the oracle stitches a linear ramp to the learning rates
that ``torch.optim.lr_scheduler.CosineAnnealingLR`` itself produces.

With peak :math:`\\eta`, floor :math:`\\eta_{min}`, warmup length :math:`W` and end :math:`T`, the
learning rate used by optimizer step :math:`s = 0, 1, 2, \\dots` is

.. math::
    \\eta_s = \\begin{cases}
    \\eta\\, s / W & s < W \\\\
    \\eta_{min} + (\\eta - \\eta_{min})\\, \\tfrac12 \\bigl(1 + \\cos(\\pi \\tfrac{s - W}{T - W})\\bigr)
        & W \\le s \\le T \\\\
    \\eta_{min} & s > T
    \\end{cases}
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ._core import DTYPE, Student, StudentRaised, Trials, describe, passed
from ._policy import policy

__all__ = ["warmup_cosine_lr", "warmup_cosine_scheduler", "POLICY"]

POLICY = policy(
    "warmup_cosine_lr", "warmup_cosine_scheduler",
    forbid=("course_lib.schedules.WarmupCosineLR", "course_lib.schedules.warmup_cosine_factor"),
    reason="the task is to write the schedule yourself (torch's LambdaLR is the way to drive an optimizer with it)",
)  # fmt: skip

_WARMUP = "the warmup starts at 0 on step 0 and reaches peak_lr at step warmup_steps: peak_lr * s / warmup_steps."
_COSINE_START = "the cosine starts at step warmup_steps: progress = (s - warmup_steps) / (total_steps - warmup_steps)."


def reference_lrs(peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float, n_steps: int) -> list[float]:
    """The learning rates of steps ``0..n_steps-1``: a linear ramp from 0, then the values of
    ``CosineAnnealingLR(T_max=total_steps - warmup_steps, eta_min=min_lr)``, then ``min_lr`` after the end
    (torch's cosine would rise again).
    """
    param = torch.zeros(1, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=peak_lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr)
    decay = [cosine.get_last_lr()[0]]
    for _ in range(total_steps - warmup_steps):
        optimizer.step()  # no gradient: nothing moves; torch wants a step before each scheduler step
        cosine.step()
        decay.append(cosine.get_last_lr()[0])
    lrs = [peak_lr * s / warmup_steps for s in range(warmup_steps)] + decay
    return (lrs + [min_lr] * n_steps)[:n_steps]


def _random_schedule(run: Trials, trial: int) -> dict:
    warmup = 0 if trial == 1 else run.integer(1, 20)
    peak = run.log_uniform(1e-4, 1.0)
    return dict(
        peak_lr=peak,
        warmup_steps=warmup,
        total_steps=warmup + run.integer(1, 80),
        min_lr=0.0 if trial == 0 else peak * run.uniform(0.0, 0.2),
    )


def _schedule_hints(s: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> dict[str, float]:
    """The learning rate at step ``s`` as a few plausible mistakes would compute it."""
    if s < warmup_steps:
        return {_WARMUP: peak_lr * (s + 1) / warmup_steps}
    cosine = 0.5 * (1 + math.cos(math.pi * (s - warmup_steps) / (total_steps - warmup_steps)))
    if s > total_steps:
        return {"after total_steps the learning rate stays at min_lr.": min_lr + (peak_lr - min_lr) * cosine}
    from_start = 0.5 * (1 + math.cos(math.pi * s / total_steps))
    return {
        "the cosine decays from peak_lr to min_lr, not to 0.": peak_lr * cosine,
        _COSINE_START: min_lr + (peak_lr - min_lr) * from_start,
    }


def warmup_cosine_lr(fn: Callable, *, seed: int | None = None, trials: int = 6) -> None:
    """Check ``fn(step, *, peak_lr, warmup_steps, total_steps, min_lr) -> float`` at every step from 0
    to a few steps past ``total_steps``, for random schedules (including no warmup and a zero floor).
    """
    run = Trials("warmup_cosine_lr", fn, seed, trials)
    for trial in run:
        schedule = _random_schedule(run, trial)
        n_steps = schedule["total_steps"] + 4
        calls = [(describe(step=s, **schedule), (s,), schedule) for s in range(n_steps)]
        results = run.call_each(fn, "warmup_cosine_lr", calls)
        for s, (want, got) in enumerate(zip(reference_lrs(**schedule, n_steps=n_steps), results)):
            inputs = calls[s][0]
            run.expect_close(f"the learning rate at step {s}", got, want, inputs, hints=_schedule_hints(s, **schedule))
    passed("warmup_cosine_lr", f"{run.n} random schedules match torch's CosineAnnealingLR after a linear warmup")


def warmup_cosine_scheduler(fn: Callable, *, seed: int | None = None, trials: int = 4) -> None:
    """Check ``fn(optimizer, *, warmup_steps, total_steps, min_lr) -> LRScheduler``.

    The scheduler must set the optimizer's learning rate to the warmup-cosine value of each step, the
    optimizer's initial ``lr`` being the peak, when stepped once after every ``optimizer.step()``.
    """
    run = Trials("warmup_cosine_scheduler", fn, seed, trials)
    for trial in run:
        schedule = _random_schedule(run, trial)
        peak = schedule.pop("peak_lr")
        inputs = describe(optimizer=f"SGD with lr={peak:.6g}", **schedule)
        n_steps = schedule["total_steps"] + 4
        seen = run.probe(_drive_scheduler, fn, "warmup_cosine_scheduler", inputs, peak, schedule, n_steps)
        if seen["type"] is not None:
            raise run.fail(
                "warmup_cosine_scheduler should return a torch.optim.lr_scheduler scheduler (e.g. LambdaLR), "
                f"but it returned a {seen['type']}."
            )
        for s, (want, got) in enumerate(zip(reference_lrs(peak, **schedule, n_steps=n_steps), seen["lrs"])):
            run.expect_close(
                f"the optimizer's lr at step {s}",
                got,
                want,
                inputs,
                hints={"LambdaLR multiplies the initial lr by what the lambda returns: return a factor, "
                "lr / peak_lr, not the learning rate itself.": want * peak},
            )
        if seen["error"]:
            raise run.reraise(seen["error"], inputs)
    passed("warmup_cosine_scheduler", f"{run.n} random schedules drive an optimizer's lr correctly")


def _drive_scheduler(fn: Callable, student: Student, peak: float, schedule: dict, n_steps: int) -> dict:
    """Probe: the optimizer's lr before each of ``n_steps`` steps under ``fn(optimizer, **schedule)``,
    stepped once after every optimizer step; stops at the first exception of the scheduler's."""
    param = torch.zeros(1, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = student("warmup_cosine_scheduler", fn, optimizer, **schedule)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        return {"type": type(scheduler).__name__, "lrs": [], "error": None}
    lrs = []
    for _ in range(n_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: nothing moves; torch wants a step before each scheduler step
        try:
            student("scheduler.step", scheduler.step)
        except StudentRaised as error:
            return {"type": None, "lrs": lrs, "error": error.to_dict()}
    return {"type": None, "lrs": lrs, "error": None}
