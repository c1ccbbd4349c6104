"""Checks for the exercise on the capstone paper's epsilon schedule (its equation 2); the oracles are
:func:`course_lib.capstone.method.paper_eps` and :class:`course_lib.capstone.method.PaperEpsScheduler`.

.. math::
    \\epsilon_t = \\begin{cases}
    \\epsilon_{base}\\,(1 - t/T_w) + \\epsilon_{min}\\, t/T_w & t < T_w \\\\
    \\max\\bigl(\\epsilon_{base} / (t/T_d + 1)^{\\alpha},\\ \\epsilon_{min}\\bigr) & t \\ge T_w
    \\end{cases}

Optimizer step :math:`t` (counting from 0) uses :math:`\\epsilon_t`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from course_lib.capstone.method import PaperEpsScheduler
from course_lib.capstone.method import paper_eps as course_paper_eps

from ._core import DTYPE, Student, StudentRaised, Trials, describe, passed
from ._policy import policy

__all__ = ["paper_eps", "eps_scheduler", "eps_floor_step", "reference_floor_step", "POLICY"]

POLICY = policy(
    "paper_eps", "eps_scheduler", "eps_floor_step",
    forbid=("course_lib.capstone.method.paper_eps", "course_lib.capstone.method.PaperEpsScheduler"),
    reason="the task is to write equation 2 and its scheduler yourself (your paper_eps is yours to reuse)",
)  # fmt: skip

_AS_WRITTEN = (
    "equation 2 uses t itself in its second piece, not t - T_w: the two pieces do not meet at T_w, and that "
    "jump is what the paper wrote."
)


def _random_schedule(run: Trials, trial: int) -> dict:
    eps_base = run.log_uniform(1e-9, 1e-5)
    return dict(
        eps_base=eps_base,
        eps_min=0.0 if trial == 2 else eps_base * run.uniform(0.01, 0.6),
        warmup=0 if trial == 1 else run.integer(2, 300),
        decay=run.integer(1, 500),
        alpha=run.uniform(0.05, 0.5) if trial % 2 == 0 else run.uniform(0.5, 3.0),
    )


def _mistakes(t: int, eps_base: float, eps_min: float, warmup: int, decay: int, alpha: float) -> dict[str, float]:
    """eps_t as plausible mistakes compute it."""
    out: dict[str, float] = {}
    if t < warmup:
        frac = t / warmup
        reversed_ = ("the first piece goes from eps_base at t = 0 towards eps_min: "
                     "eps_base * (1 - t/T_w) + eps_min * t/T_w.")
        out[reversed_] = eps_min * (1 - frac) + eps_base * frac
        out["step t uses t / T_w (t counts from 0), not (t + 1) / T_w."] = (
            eps_base * (1 - (t + 1) / warmup) + eps_min * (t + 1) / warmup
        )
    else:
        decayed = eps_base / (t / decay + 1) ** alpha
        if warmup > 0:
            out[_AS_WRITTEN] = max(eps_base / ((t - warmup) / decay + 1) ** alpha, eps_min)
        if t == warmup and warmup > 0:
            out["t = T_w already belongs to the second piece (t >= T_w)."] = eps_min
        out["the floor: take max(..., eps_min); eps never goes below eps_min."] = decayed
        out["max, not min: eps_min is a floor."] = min(decayed, eps_min)
        if t > 0:
            out["the denominator is (t / T_d + 1) ** alpha: the + 1 keeps it 1 at t = 0."] = max(
                eps_base / (t / decay) ** alpha, eps_min
            )
    return out


def paper_eps(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(t, *, eps_base, eps_min, warmup, decay, alpha) -> float`` against
    ``course_lib.capstone.method.paper_eps``: random constants (a trial without warmup, one with
    ``eps_min = 0``), steps at both sides of ``T_w``, inside the warmup, along the decay and far out where
    the floor acts."""
    run = Trials("paper_eps", fn, seed, trials)
    for trial in run:
        schedule = _random_schedule(run, trial)
        warmup, decay = schedule["warmup"], schedule["decay"]
        ratio = schedule["eps_base"] / schedule["eps_min"] if schedule["eps_min"] > 0 else 1e3
        floor = decay * (ratio ** (1 / schedule["alpha"]) - 1)  # where the max starts to act
        steps = {0, 1, warmup, warmup + 1, run.integer(warmup, warmup + 3 * decay), int(min(floor, 1e15)) + 1, 10**6}
        if warmup > 1:
            steps |= {warmup - 1, run.integer(1, warmup - 1)}
        calls = [(describe(t=t, **schedule), (t,), schedule) for t in sorted(steps)]
        for (inputs, (t,), _), got in zip(calls, run.call_each(fn, "paper_eps", calls)):
            run.expect_close(
                f"eps at step {t}", got, course_paper_eps(t, **schedule), inputs, rtol=1e-12, atol=0.0,
                hints=_mistakes(t, **schedule),
            )  # fmt: skip
    passed("paper_eps", f"{run.n} random schedules match course_lib's paper_eps at both sides of T_w and far out")


def _eps_run(eps: list[float], n_steps: int, build: Callable, advance: Callable) -> list[list[float]]:
    """The eps each of the groups (initial eps ``eps[g]``) holds before each of ``n_steps`` AdamW steps;
    ``build(optimizer)`` makes the scheduler, ``advance(scheduler)`` steps it."""
    params = [torch.zeros(2, dtype=DTYPE, requires_grad=True) for _ in eps]
    optimizer = torch.optim.AdamW([{"params": [p], "eps": e} for p, e in zip(params, eps)], lr=1e-3)
    scheduler = build(optimizer)
    seen = []
    for _ in range(n_steps):
        seen.append([float(g["eps"]) for g in optimizer.param_groups])
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        advance(scheduler)
    return seen


def _compounded(eps: float, n_steps: int, settings: dict) -> list[float]:
    """eps before each step when each step takes the group's current eps as eps_base (a mistake)."""
    out = [eps]
    try:
        for t in range(1, n_steps):
            out.append(course_paper_eps(t, eps_base=out[-1], **settings))
    except ValueError:  # eps fell below eps_min
        return []
    return out


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0) for x, y in zip(a, b))


def eps_scheduler(cls: Callable, *, seed: int | None = None, trials: int = 3) -> None:
    """Check a scheduler class ``cls(optimizer, *, eps_min, warmup, decay, alpha)`` with a ``step()`` method:
    before optimizer step ``t`` (from 0) every param group must hold ``paper_eps(t)`` with ``eps_base`` the
    group's eps when the scheduler was built. The oracle is ``PaperEpsScheduler`` on a twin optimizer with
    two or three groups of different eps."""
    run = Trials("eps_scheduler", cls, seed, trials)
    for trial in run:
        eps = [run.log_uniform(1e-9, 1e-8 if trial == 0 else 1e-6) for _ in range(2 + trial % 2)]
        settings = dict(
            eps_min=min(min(eps), 1e-8) * run.uniform(0.01, 0.6),
            warmup=0 if trial == 1 else run.integer(1, 10),
            decay=run.integer(1, 20),
            alpha=run.uniform(0.1, 3.0),
        )
        n_steps = settings["warmup"] + run.integer(10, 25)
        if trial == 0:  # the floor acts within the run: a late eps_min would hide a missing max()
            settings["alpha"] = run.uniform(2.0, 3.0)
            settings["decay"] = run.integer(1, 3)
            settings["eps_min"] = min(eps) * run.uniform(0.3, 0.6)  # below 1e-8, as the paper's base
        inputs = describe(group_eps=eps, **settings)
        seen = run.probe(_drive, cls, run.fn_name, inputs, eps, n_steps, settings)
        if seen["type"] is not None:
            raise run.fail(f"{run.fn_name}(optimizer, ...) should have a step() method; it is a {seen['type']}.")
        got = seen["eps"]
        expected = _eps_run(eps, n_steps, lambda opt: PaperEpsScheduler(opt, **settings), lambda s: s.step())
        for t, g in ((t, g) for t in range(len(got)) for g in range(len(eps))):
            number = isinstance(got[t][g], (int, float)) and not isinstance(got[t][g], bool)
            if number and math.isclose(got[t][g], expected[t][g], rel_tol=1e-12, abs_tol=0.0):
                continue
            if not number:
                raise run.fail(f"before optimizer step {t}, param group {g} holds eps {got[t][g]!r:.100}, not a "
                               f"number, on input\n{inputs}")
            message = (f"before optimizer step {t}, param group {g} holds eps {got[t][g]:.10g}, expected "
                       f"paper_eps({t}) = {expected[t][g]:.10g}, on input\n{inputs}")
            mine = [row[g] for row in got]

            def schedule(base: float, steps) -> list[float]:
                return [course_paper_eps(s, eps_base=base, **settings) for s in steps]

            candidates = {
                "step t (counting from 0) must use paper_eps(t): the scheduler is one step behind; apply the "
                "value for the new step in step(), after advancing the counter.": (
                    schedule(eps[g], [max(s - 1, 0) for s in range(n_steps)])
                ),
                "step t (counting from 0) must use paper_eps(t): the scheduler is one step ahead (step 0 "
                "already used paper_eps(1)).": schedule(eps[g], range(1, n_steps + 1)),
                "eps_base is each group's own eps when the scheduler is built, not the paper's 1e-8.": (
                    schedule(1e-8, range(n_steps)) if settings["eps_min"] <= 1e-8 else []
                ),
                "every param group gets its own schedule, not only the first.": [eps[g]] * n_steps,
                "eps_base is the group's eps when the scheduler was built: keep it (e.g. in a list, or in "
                "group['initial_eps']); group['eps'] has already been changed by earlier steps.": (
                    _compounded(eps[g], n_steps, settings)
                ),
            }
            advice = next((a for a, values in candidates.items() if _same(mine, values)), None)
            raise run.fail(message + (f"\nHint: {advice}" if advice else ""))
        if seen["error"]:
            raise run.reraise(seen["error"], inputs)
    passed("eps_scheduler", f"{run.n} random multi-group runs match PaperEpsScheduler step by step")


def reference_floor_step(*, eps_base: float, eps_min: float, warmup: int, decay: int, alpha: float) -> int:
    """The first integer step at which ``paper_eps`` equals ``eps_min``, found by searching ``paper_eps``."""
    settings = dict(eps_base=eps_base, eps_min=eps_min, warmup=warmup, decay=decay, alpha=alpha)

    def at_floor(t: int) -> bool:
        return course_paper_eps(t, **settings) <= eps_min

    low, high = warmup, max(warmup, 1)
    while not at_floor(high):
        low, high = high, 2 * high
    if at_floor(low):
        return low
    while high - low > 1:  # at_floor(low) is False, at_floor(high) is True
        mid = (low + high) // 2
        low, high = (low, mid) if at_floor(mid) else (mid, high)
    return high


def _safe(value: Callable[[], float]) -> float:
    try:
        return value()
    except (OverflowError, ValueError):
        return math.nan


def eps_floor_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(*, eps_base, eps_min, warmup, decay, alpha) -> int``: the first step ``t`` with
    ``eps_t == eps_min``, against a search over ``paper_eps``. The constants put the answer anywhere from
    the end of warmup to a million steps (one trial inside the warmup's reach, so that the answer is
    ``T_w`` itself)."""
    run = Trials("eps_floor_step", fn, seed, trials)
    for trial in run:
        eps_base = run.log_uniform(1e-9, 1e-6)
        ratio, decay = run.uniform(1.5, 100.0), run.integer(1, 500)
        crossing = run.log_uniform(max(1.5, 0.05 * decay), 1e6)  # where eps_base / (t/decay + 1)^alpha meets eps_min
        alpha = math.log(ratio) / math.log1p(crossing / decay)
        warmup = math.ceil(crossing) + run.integer(1, 100) if trial == 0 else run.integer(0, 50)
        schedule = dict(eps_base=eps_base, eps_min=eps_base / ratio, warmup=warmup, decay=decay, alpha=alpha)
        inputs = describe(**schedule)
        got = run.call(fn, "eps_floor_step", inputs, **schedule)
        expected = reference_floor_step(**schedule)
        exact = decay * (ratio ** (1 / alpha) - 1)
        run.expect_close(
            "the first step at the floor", got, float(expected), inputs, rtol=0.0, atol=1e-6,
            hints={
                "the floor cannot act during the warmup: the answer is at least T_w.": float(math.ceil(exact)),
                "the first integer step at or after the crossing: round up (math.ceil), not down.": (
                    float(max(warmup, math.floor(exact)))
                ),
                "a step is an integer: round the crossing up.": exact,
                "solve eps_base / (t/T_d + 1)^alpha = eps_min for t: t = T_d * ((eps_base/eps_min)^(1/alpha) - 1).": (
                    _safe(lambda: float(max(warmup, math.ceil(decay * (ratio**alpha - 1)))))
                ),
            },
        )  # fmt: skip
    passed("eps_floor_step", f"{run.n} random schedules match a search over paper_eps")


def _drive(cls: Callable, student: Student, eps: list[float], n_steps: int, settings: dict) -> dict:
    """Probe: the eps of each param group before each of ``n_steps`` AdamW steps under the scheduler
    ``cls(optimizer, **settings)``, stepped after every optimizer step; stops at its first exception."""
    params = [torch.zeros(2, dtype=DTYPE, requires_grad=True) for _ in eps]
    optimizer = torch.optim.AdamW([{"params": [p], "eps": e} for p, e in zip(params, eps)], lr=1e-3)
    scheduler = student(getattr(cls, "__name__", "EpsScheduler"), cls, optimizer, **settings)
    if not callable(getattr(scheduler, "step", None)):
        return {"type": type(scheduler).__name__, "eps": [], "error": None}
    seen = []
    for _ in range(n_steps):
        seen.append([g["eps"] for g in optimizer.param_groups])
        for p in params:
            p.grad = torch.ones_like(p)
        try:
            optimizer.step()
            student("step", scheduler.step)
        except StudentRaised as error:
            return {"type": None, "eps": seen, "error": error.to_dict()}
        except Exception as error:  # the student's eps broke AdamW's step
            raised = StudentRaised.from_exception("optimizer.step() with the eps your scheduler set", error)
            return {"type": None, "eps": seen, "error": raised.to_dict()}
    return {"type": None, "eps": seen, "error": None}
