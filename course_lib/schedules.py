"""Learning-rate and hyperparameter schedules that plug into ``torch.optim.lr_scheduler``.

Each schedule is a plain function of the step (the math, easy to read and to plot) and a
small scheduler class that applies it to every param group of an optimizer:

- :func:`warmup_cosine_factor` / :class:`WarmupCosineLR`: linear warmup, then cosine decay
  to a floor;
- :func:`warmup_poly_factor` / :class:`WarmupPolyLR`: linear warmup, then polynomial decay;
- :class:`ParamGroupScheduler`: any group hyperparameter (``eps``, ``weight_decay``, ...)
  as a function of the step (the capstone's epsilon schedule,
  :class:`course_lib.capstone.method.PaperEpsScheduler`, is one);
- :func:`plot_schedule`: the trajectory of any scheduler, drawn and returned.

The LR schedulers subclass :class:`torch.optim.lr_scheduler.LRScheduler`, so they have
``step()``, ``get_last_lr()``, ``state_dict()``/``load_state_dict()`` and chain with
``SequentialLR`` like torch's own. :class:`ParamGroupScheduler` does not: step it beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "ParamGroupScheduler",
    "WarmupCosineLR",
    "WarmupPolyLR",
    "plot_schedule",
    "warmup_cosine_factor",
    "warmup_poly_factor",
]


class ParamGroupScheduler:
    """Sets group[key] = fn(step, group['initial_' + key]) for every param group, on every step().

    The LR schedulers of torch only move ``lr``; this one moves any hyperparameter a param
    group holds (``eps``, ``weight_decay``, ``momentum``, ...). Like a torch scheduler, it
    records ``group['initial_<key>']`` on construction (unless already there) and applies
    ``fn(0, initial)`` at once, so the first optimizer step already uses the step-0 value.
    Each ``step()`` then advances the step counter ``last_epoch`` by one and applies ``fn``.

    ``state_dict()`` holds the counter and the last values, not ``fn``: rebuild the
    scheduler with the same ``fn`` and load the state (the optimizer's own state dict keeps
    ``group[key]`` and ``group['initial_<key>']``).

    It is not a :class:`torch.optim.lr_scheduler.LRScheduler`, so it cannot be a member of
    ``SequentialLR``, which calls LRScheduler internals on its members (it fails with an
    ``AttributeError`` or ``TypeError``). ``ChainedScheduler`` only calls ``step()`` and so
    steps it, but its ``get_last_lr()`` reports ``lr`` alone. The plain way to combine it with
    an LR schedule is to step the two side by side, e.g.
    ``Trainer(..., scheduler=[lr_scheduler, eps_scheduler])``.

    Example: ``ParamGroupScheduler(opt, "eps", lambda t, eps0: eps0 * 0.5 ** (t // 100))``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        key: str,
        fn: Callable[[int, float], float],
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if last_epoch < -1:
            raise ValueError(f"last_epoch must be >= -1, got {last_epoch}")
        initial_key = "initial_" + key
        for i, group in enumerate(optimizer.param_groups):
            if key not in group:
                raise ValueError(f"key {key!r} is not a hyperparameter of param_groups[{i}] ({sorted(group)})")
            if last_epoch == -1:
                group.setdefault(initial_key, group[key])
            elif initial_key not in group:
                raise ValueError(
                    f"last_epoch={last_epoch} resumes a schedule, but param_groups[{i}] has no {initial_key!r}: "
                    "load the optimizer's state dict first"
                )
        self.optimizer = optimizer
        self.key = key
        self.fn = fn
        self.last_epoch = last_epoch
        self.step()

    def step(self) -> None:
        """Advance one step and set ``group[key] = fn(step, group['initial_<key>'])``."""
        self.last_epoch += 1
        for group in self.optimizer.param_groups:
            group[self.key] = float(self.fn(self.last_epoch, group["initial_" + self.key]))
        self._last_values = [group[self.key] for group in self.optimizer.param_groups]

    def get_last(self) -> list[float]:
        """The current value of ``group[key]``, one per param group."""
        return list(self._last_values)

    def state_dict(self) -> dict[str, Any]:
        """The step counter, key and last values (``fn`` is code, not state)."""
        return {"key": self.key, "last_epoch": self.last_epoch, "_last_values": list(self._last_values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counter saved by :meth:`state_dict` (the key must match)."""
        if state["key"] != self.key:
            raise ValueError(f"state is for key {state['key']!r}, this scheduler moves {self.key!r}")
        self.last_epoch = int(state["last_epoch"])
        self._last_values = list(state["_last_values"])


def _check_warmup_args(warmup_steps: int, total_steps: int, min_ratio: float, start_ratio: float) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps must be > warmup_steps ({warmup_steps}), got {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if not 0.0 <= start_ratio <= 1.0:
        raise ValueError(f"start_ratio must be in [0, 1], got {start_ratio}")


def _linear_warmup(step: int, warmup_steps: int, start_ratio: float) -> float:
    """Multiplier rising linearly from ``start_ratio`` at step 0 to 1 at ``warmup_steps``."""
    return start_ratio + (1.0 - start_ratio) * step / warmup_steps


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, start_ratio: float = 0.0
) -> float:
    r"""LR multiplier: linear warmup, then cosine decay from 1 to ``min_ratio``.

    With warmup length :math:`W`, end :math:`T`, floor :math:`r`, start :math:`s`:

    .. math::
        f(t) = \begin{cases}
        s + (1 - s)\,t / W & t < W \\
        r + (1 - r)\,\tfrac12\bigl(1 + \cos(\pi\,\tfrac{t - W}{T - W})\bigr) & W \le t \le T \\
        r & t > T
        \end{cases}

    The learning rate of a group is ``base_lr * f(t)``; the floor is a fraction of
    ``base_lr``, so groups with different LRs keep their ratios.
    """
    if step < warmup_steps:
        return _linear_warmup(step, warmup_steps, start_ratio)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_poly_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
    min_ratio: float = 0.0,
    start_ratio: float = 0.0,
) -> float:
    r"""LR multiplier: linear warmup, then polynomial decay from 1 to ``min_ratio``.

    .. math::
        f(t) = \begin{cases}
        s + (1 - s)\,t / W & t < W \\
        r + (1 - r)\bigl(1 - \tfrac{t - W}{T - W}\bigr)^{p} & W \le t \le T \\
        r & t > T
        \end{cases}

    ``power=1`` is linear decay (BERT's schedule); ``power=0.5`` stays high longer,
    ``power=2`` drops early.
    """
    if step < warmup_steps:
        return _linear_warmup(step, warmup_steps, start_ratio)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress) ** power


class WarmupCosineLR(LRScheduler):
    """Linear warmup for ``warmup_steps``, then cosine decay to ``min_ratio * base_lr`` at ``total_steps``.

    Step it once per optimizer step. The multiplier is :func:`warmup_cosine_factor`; after
    ``total_steps`` the LR stays at the floor.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_ratio: float = 0.0,
        start_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_warmup_args(warmup_steps, total_steps, min_ratio, start_ratio)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio
        self.start_ratio = start_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        f = warmup_cosine_factor(self.last_epoch, self.warmup_steps, self.total_steps, self.min_ratio, self.start_ratio)
        return [base_lr * f for base_lr in self.base_lrs]


class WarmupPolyLR(LRScheduler):
    """Linear warmup for ``warmup_steps``, then polynomial decay (``power``) to ``min_ratio * base_lr``.

    Step it once per optimizer step. The multiplier is :func:`warmup_poly_factor`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        power: float = 1.0,
        min_ratio: float = 0.0,
        start_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_warmup_args(warmup_steps, total_steps, min_ratio, start_ratio)
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.power = power
        self.min_ratio = min_ratio
        self.start_ratio = start_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        f = warmup_poly_factor(
            self.last_epoch, self.warmup_steps, self.total_steps, self.power, self.min_ratio, self.start_ratio
        )
        return [base_lr * f for base_lr in self.base_lrs]


def plot_schedule(
    make_scheduler: Callable[[Optimizer], Any],
    steps: int,
    ax: Any = None,
    key: str = "lr",
    base_value: float = 1.0,
) -> list[float]:
    """Step a scheduler ``steps`` times on a throwaway optimizer; draw and return ``group[key]`` per step.

    ``make_scheduler(optimizer)`` builds the scheduler (any torch LR scheduler except
    ``ReduceLROnPlateau``, which needs a metric, or a :class:`ParamGroupScheduler`). The
    throwaway optimizer is an ``AdamW`` on one scalar, with ``group[key] = base_value`` at
    the start, so with the default ``base_value=1`` an LR scheduler shows its multiplier.
    ``values[t]`` is the value the optimizer step ``t`` would use.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    if key not in optimizer.param_groups[0]:
        raise ValueError(f"key must be a hyperparameter of AdamW ({sorted(optimizer.param_groups[0])}), got {key!r}")
    optimizer.param_groups[0][key] = base_value
    scheduler = make_scheduler(optimizer)
    values = []
    for _ in range(steps):
        values.append(float(optimizer.param_groups[0][key]))
        optimizer.step()  # no gradients: changes nothing, but keeps the scheduler's call-order check quiet
        scheduler.step()
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(steps), values, label=type(scheduler).__name__)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    return values
