"""Checks for the scheduler-ablation exercise; the oracles are torch's own schedulers and
:class:`course_lib.schedules.WarmupCosineLR`.

The five schedules of the ablation, for a run of :math:`T` optimizer steps whose optimizer starts at
the peak rate :math:`\\eta`:

- ``"none"``: :math:`\\eta` at every step;
- ``"step"``: ``StepLR(step_size, gamma)``, :math:`\\eta\\, \\gamma^{\\lfloor s / \\text{step\\_size} \\rfloor}`;
- ``"cosine"``: ``CosineAnnealingLR(T_max=T)``, from :math:`\\eta` down towards 0 at step :math:`T`;
- ``"onecycle"``: ``OneCycleLR(max_lr=eta, total_steps=T)`` with torch's other defaults;
- ``"warmup_cosine"``: ``WarmupCosineLR(warmup_steps, total_steps=T)``, a linear ramp from 0, then a
  cosine to 0.

The learning rate of step :math:`s` is the one the optimizer holds when ``optimizer.step()`` is called
for the :math:`(s+1)`-th time, the scheduler being stepped once after every optimizer step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim import lr_scheduler

from course_lib.schedules import WarmupCosineLR

from ._core import DTYPE, Student, StudentRaised, Trials, describe, passed
from ._policy import policy

__all__ = ["SCHEDULE_NAMES", "reference_schedule_lrs", "make_scheduler", "converged_at", "POLICY"]

POLICY = policy(
    "make_scheduler", "converged_at",
    reason="the task is to choose and configure torch's schedulers and course_lib's WarmupCosineLR",
)  # fmt: skip

SCHEDULE_NAMES = ("none", "step", "cosine", "onecycle", "warmup_cosine")

_AHEAD = (
    "your learning rates are one step ahead of the reference: the scheduler must not be stepped (or its "
    "step counted from 1) before the first optimizer step; step s uses the rate of scheduler step s."
)
_BEHIND = "your learning rates are one step behind the reference: count steps from 0, starting at the peak."


def _lrs_of(make: Callable, peak_lr: float, n_steps: int) -> list[float]:
    """The lr of each of ``n_steps`` optimizer steps under the scheduler ``make(optimizer)`` (or none)."""
    param = torch.zeros(1, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=peak_lr, momentum=0.9)
    scheduler = make(optimizer)
    lrs = []
    for _ in range(n_steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient: nothing moves; torch wants a step before each scheduler step
        if scheduler is not None:
            scheduler.step()
    return lrs


def _factory(name: str, *, total_steps: int, warmup_steps: int, step_size: int, gamma: float) -> Callable:
    """The reference scheduler of schedule ``name``, as a function of the optimizer."""
    if name == "none":
        return lambda optimizer: None
    if name == "step":
        return lambda optimizer: lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return lambda optimizer: lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        return lambda optimizer: lr_scheduler.OneCycleLR(
            optimizer, max_lr=optimizer.param_groups[0]["lr"], total_steps=total_steps
        )
    if name == "warmup_cosine":
        return lambda optimizer: WarmupCosineLR(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULE_NAMES}")


def reference_schedule_lrs(
    name: str, *, peak_lr: float, total_steps: int, warmup_steps: int, step_size: int, gamma: float
) -> list[float]:
    """The learning rates of steps ``0 .. total_steps - 1`` under schedule ``name``, from torch's
    schedulers (``course_lib``'s ``WarmupCosineLR`` for ``"warmup_cosine"``)."""
    hyper = dict(total_steps=total_steps, warmup_steps=warmup_steps, step_size=step_size, gamma=gamma)
    return _lrs_of(_factory(name, **hyper), peak_lr, total_steps)


def _mistakes(name: str, peak_lr: float, total_steps: int, warmup_steps: int, step_size: int, gamma: float):
    """(advice, learning rates) for plausible mistakes in schedule ``name``."""
    T, W = total_steps, warmup_steps

    def cosine(s: int, start: int, length: int) -> float:
        return peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - start) / length)))

    if name == "step":
        advice = (
            "StepLR multiplies the rate by gamma after every step_size steps: "
            "step s uses lr * gamma ** (s // step_size)."
        )
        yield advice, [peak_lr * gamma ** ((s + 1) // step_size) for s in range(T)]
        yield advice, [peak_lr * gamma ** (s // (step_size + 1)) for s in range(T)]
        yield advice, [peak_lr * gamma ** (s // (step_size - 1)) for s in range(T)]
    elif name == "cosine":
        advice = "the cosine lasts the whole run: CosineAnnealingLR(T_max=total_steps) reaches 0 at step total_steps."
        yield advice, [cosine(s, 0, T - 1) for s in range(T)]
        yield advice, [cosine(s, 0, T + 1) for s in range(T)]
    elif name == "warmup_cosine":
        yield (
            "the warmup starts at 0 on step 0 and reaches the peak at step warmup_steps: lr * s / warmup_steps.",
            [peak_lr * (s + 1) / W if s < W else cosine(s, W, T - W) for s in range(T)],
        )
        yield (
            "the cosine starts at step warmup_steps: progress = (s - warmup_steps) / (total_steps - warmup_steps).",
            [peak_lr * s / W if s < W else cosine(s, 0, T) for s in range(T)],
        )
        yield (
            "the cosine reaches 0 at step total_steps, not at total_steps - 1.",
            [peak_lr * s / W if s < W else cosine(s, W, T - W - 1) for s in range(T)],
        )
    elif name == "onecycle":
        for total in (T + 1, T + 2):
            yield "OneCycleLR's total_steps is the number of optimizer steps of the run, total_steps.", _lrs_of(
                lambda o, total=total: lr_scheduler.OneCycleLR(o, max_lr=peak_lr, total_steps=total), peak_lr, T
            )
        yield "max_lr is the peak: the optimizer's own lr (OneCycleLR then starts at max_lr / div_factor).", _lrs_of(
            lambda o: lr_scheduler.OneCycleLR(o, max_lr=peak_lr / 25, total_steps=T), peak_lr, T
        )


def _same(a: list[float], b: list[float], rtol: float = 1e-7) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=rtol, abs_tol=1e-12) for x, y in zip(a, b))


def _show(values: list[float], first: int) -> str:
    shown = values[max(0, first - 2) : first + 4]
    start = max(0, first - 2)
    return ", ".join(f"[{start + i}] {v:.6g}" for i, v in enumerate(shown))


def make_scheduler(fn: Callable, *, seed: int | None = None, trials: int = 3) -> None:
    """Check ``fn(name, optimizer, *, total_steps, warmup_steps, step_size, gamma) -> scheduler or None``.

    For each of the five names and random run lengths (10 to 300 steps), warmup lengths, step sizes,
    decay factors and peak rates, the learning rate of every optimizer step must equal the reference
    scheduler's (see the module's docstring) to a relative 1e-7. The optimizer is an SGD with
    momentum 0.9 whose ``lr`` is the peak; the check calls ``scheduler.step()`` after every
    ``optimizer.step()``. ``"none"`` may return ``None``.
    """
    run = Trials("make_scheduler", fn, seed, trials)
    for _ in run:
        for name in SCHEDULE_NAMES:
            total_steps = run.integer(10, 300)
            hyper = dict(
                total_steps=total_steps,
                warmup_steps=run.integer(1, max(1, total_steps // 4)),
                step_size=run.integer(2, max(2, total_steps // 2)),
                gamma=run.uniform(0.1, 0.9),
            )
            peak_lr = run.log_uniform(1e-3, 1.0)
            inputs = describe(name=name, optimizer=f"SGD with lr={peak_lr:.6g}, momentum=0.9", **hyper)
            seen = run.probe(_drive, fn, "make_scheduler", inputs, name, peak_lr, hyper)
            if seen["type"] is not None:
                raise run.fail(
                    f"make_scheduler({name!r}, ...) should return a torch.optim.lr_scheduler scheduler (or None "
                    f"for 'none'), but it returned a {seen['type']}, on input\n{inputs}"
                )
            if seen["error"] and seen["error"].get("delegated"):
                raise run.reraise(seen["error"], inputs)
            if seen["error"]:
                error = seen["error"]
                advice = ""
                if name == "onecycle":
                    advice = "\nHint: OneCycleLR(total_steps=...) is the number of optimizer steps of the run."
                raise run.fail(
                    f"scheduler.step() after optimizer step {len(seen['lrs']) - 1} raised {error['type_name']}: "
                    f"{error['message']}\non input\n{inputs}{advice}"
                )
            got = seen["lrs"]
            want = reference_schedule_lrs(name, peak_lr=peak_lr, **hyper)
            if _same(got, want):
                continue
            first = next(s for s, (x, y) in enumerate(zip(got, want)) if not _same([x], [y]))
            message = (
                f"schedule {name!r}: the learning rate of step {first} should be {want[first]:.10g}, "
                f"got {got[first]:.10g}.\n  expected lrs: {_show(want, first)}\n  returned lrs: {_show(got, first)}\n"
                f"on input\n{inputs}"
            )
            hints = [
                *_mistakes(name, peak_lr, **hyper),
                (_AHEAD, want[1:] + got[-1:]),
                (_BEHIND, [peak_lr] + want[:-1]),
                ("this schedule changes the learning rate: did you return None?", [peak_lr] * total_steps),
            ]
            for advice, mistaken in hints:
                if _same(got, mistaken):
                    message += f"\nHint: {advice}"
                    break
            raise run.fail(message)
    passed("make_scheduler", f"{run.n} random runs of each of the 5 schedules match torch's schedulers step by step")


def reference_converged_at(losses: list[float], target: float, window: int) -> int | None:
    """The first step ``i >= window - 1`` whose trailing mean ``mean(losses[i - window + 1 : i + 1])`` is
    below ``target``; ``None`` if there is none."""
    for i in range(window - 1, len(losses)):
        if math.fsum(losses[i - window + 1 : i + 1]) / window < target:
            return i
    return None


def converged_at(fn: Callable, *, seed: int | None = None, trials: int = 8) -> None:
    """Check ``fn(losses, target, window) -> int | None``: the first step whose trailing mean over
    ``window`` losses is below ``target`` (see :func:`reference_converged_at`).

    Noisy decreasing loss curves of 20 to 120 steps and windows of 1 to 12; the trials include a
    target that is never reached, one that only single losses (not their mean) reach early, and one
    reached by the first full window. Targets stay clear of every trailing mean, so round-off in the
    averaging cannot change the answer.
    """
    run = Trials("converged_at", fn, seed, trials)
    for trial in run:
        n, window = run.integer(20, 120), run.integer(1, 12) if trial % 4 else run.integer(3, 12)
        noise = run.normal(n, scale=0.6)
        losses = (torch.linspace(0.5, -2.5, n, dtype=DTYPE) + noise).exp().tolist()
        means = [math.fsum(losses[i - window + 1 : i + 1]) / window for i in range(window - 1, n)]
        case = trial % 4
        if case == 0:  # never reached by a mean, though maybe by single losses
            target = min(means) * run.uniform(0.5, 0.95)
        elif case == 1:  # reached by the first full window
            target = means[0] * run.uniform(1.05, 1.5)
        else:
            target = sorted(means)[run.integer(0, len(means) - 1)] * run.uniform(0.97, 1.03)
        while min(abs(m - target) for m in means) < 1e-9 * target:  # keep clear of ties
            target *= 1.0 + 1e-6
        expected = reference_converged_at(losses, target, window)
        inputs = describe(losses=[round(x, 6) for x in losses], target=target, window=window)
        got = run.call(fn, "converged_at", inputs, list(losses), target, window)
        if got is not None and (isinstance(got, bool) or not isinstance(got, int)):
            raise run.fail(f"converged_at should return an int or None, but it returned {got!r:.100}")
        if got == expected:
            continue
        first_single = next((i for i, loss in enumerate(losses) if loss < target), None)
        advice = ""
        if got is not None and expected is not None and got == expected - window + 1:
            advice = "\nHint: return the index of the window's last step (the step at which the mean is known)."
        elif got is not None and got == first_single:
            advice = "\nHint: compare the mean of the last `window` losses with the target, not a single loss."
        elif expected is None:
            advice = "\nHint: return None when no trailing mean is below the target."
        elif got is not None and got < window - 1:
            advice = f"\nHint: the first trailing mean needs {window} losses: no step before {window - 1} counts."
        raise run.fail(f"converged_at returned {got!r}, expected {expected!r}, on input\n{inputs}{advice}")
    passed("converged_at", f"{run.n} random loss curves, including a target never reached")


def _drive(fn: Callable, student: Student, name: str, peak_lr: float, hyper: dict) -> dict:
    """Probe: the lr of each optimizer step under ``fn(name, optimizer, **hyper)`` (an SGD with momentum
    0.9 at ``peak_lr``), the scheduler stepped after every optimizer step; stops at its first exception."""
    param = torch.zeros(1, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=peak_lr, momentum=0.9)
    scheduler = student("make_scheduler", fn, name, optimizer, **hyper)
    if scheduler is not None and not isinstance(scheduler, lr_scheduler.LRScheduler):
        return {"type": type(scheduler).__name__, "lrs": [], "error": None}
    lrs: list = []
    for _ in range(hyper["total_steps"]):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient: nothing moves; torch wants a step before each scheduler step
        if scheduler is None:
            continue
        try:
            student("scheduler.step", scheduler.step)
        except StudentRaised as error:
            return {"type": None, "lrs": lrs, "error": error.to_dict()}
    return {"type": None, "lrs": lrs, "error": None}
