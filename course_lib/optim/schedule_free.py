"""Schedule-free AdamW (Defazio et al., 2024, "The Road Less Scheduled").

No learning-rate schedule: the optimizer keeps an average of its iterates, and that average is
what a schedule's annealing would have produced. The parameters hold the point where gradients
are taken during training (:math:`y`) and the average (:math:`x`) during evaluation, so call
``optimizer.train()`` and ``optimizer.eval()`` together with ``model.train()`` and
``model.eval()``. Learned from the paper and the reference package ``schedulefree``
(github.com/facebookresearch/schedule_free), whose semantics and defaults this follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, State, check_range, zeros

__all__ = ["ScheduleFreeAdamW", "schedule_free_adamw_update", "gradient_point"]


def gradient_point(x: Tensor, z: Tensor, beta1: float) -> Tensor:
    r"""The point where the gradient is taken: :math:`y = \beta_1 x + (1 - \beta_1) z`."""
    return torch.lerp(z, x, beta1)


def schedule_free_adamw_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    average_weight: float,
) -> None:
    r"""One schedule-free AdamW step; ``param`` holds :math:`y_t` and gets :math:`y_{t+1}`.

    Three sequences: :math:`z` takes plain AdamW-like steps (no momentum), :math:`x` is a
    weighted average of the :math:`z`'s, and the gradient is taken at :math:`y`, between them.
    At step :math:`t` with (warmed-up) learning rate :math:`\eta_t`:

    .. math::

        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2,
            \qquad g_t = \nabla f(y_t) \\
        z_{t+1} &\leftarrow z_t - \eta_t \left(
            \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda y_t \right) \\
        x_{t+1} &\leftarrow (1 - c_{t+1})\, x_t + c_{t+1}\, z_{t+1} \\
        y_{t+1} &\leftarrow \beta_1 x_{t+1} + (1 - \beta_1)\, z_{t+1}

    with :math:`c_{t+1} = w_t / \sum_{i \le t} w_i` (``average_weight``), :math:`w_t =
    t^r\, \eta_{\max,t}^{\,p}`: with :math:`r = 0` and :math:`p = 2` every step counts in
    proportion to its squared learning rate, so the small steps of warmup barely count. The
    momentum of Adam is replaced by the interpolation :math:`\beta_1`; :math:`x` needs no
    schedule because averaging already anneals it.
    """
    z, x, exp_avg_sq = state["z"], state["x"], state["exp_avg_sq"]
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps)
    if weight_decay != 0:
        z.sub_(param, alpha=lr * weight_decay)
    z.addcdiv_(grad, denom, value=-lr)
    x.lerp_(z, average_weight)
    param.copy_(gradient_point(x, z, beta1))


class ScheduleFreeAdamW(CourseOptimizer):
    r"""Schedule-free AdamW (see :func:`schedule_free_adamw_update`); the defaults of ``schedulefree``.

    Use it like this::

        opt = ScheduleFreeAdamW(model.parameters(), lr=2.5e-3, warmup_steps=100)
        model.train(); opt.train()
        ...  # training steps: loss.backward(); opt.step(); opt.zero_grad()
        model.eval(); opt.eval()   # the parameters now hold the average x
        ...  # evaluate, save a checkpoint
        model.train(); opt.train() # back to y, bit for bit

    The optimizer starts in train mode. ``step()`` in eval mode raises ``RuntimeError``.
    Models with BatchNorm need their running statistics recomputed at :math:`x` after
    ``eval()`` (the statistics were gathered at :math:`y`).

    The schedule is per group, as in the reference package: the group holds its step count
    ``k``, the running maximum ``lr_max`` of the warmed-up rate, the sum ``weight_sum`` of the
    averaging weights, and for logging ``scheduled_lr`` and ``average_weight`` (:math:`c_t`).
    An LR scheduler may change ``lr``; warmup then multiplies the scheduled value. Each
    parameter's state holds ``z``, ``x`` and ``exp_avg_sq`` (the package's memory-saving
    version keeps ``x`` implicitly and swaps by interpolation, which is exact only up to
    round-off; here ``train()`` restores :math:`y` exactly).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0` after warmup.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1): the interpolation between
            :math:`x` and :math:`z`, and the decay of the squared-gradient average.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        weight_decay: :math:`\lambda \ge 0`, applied to :math:`z` at the point :math:`y`.
        warmup_steps: steps of linear warmup of the learning rate (0: none).
        r: the power of :math:`t` in the averaging weights, :math:`r \ge 0`.
        weight_lr_power: the power :math:`p \ge 0` of the learning rate in the weights.
        maximize: ascend the objective instead of descending it.
        foreach: ``False`` the per-tensor loop; ``None`` or ``True`` the tiled loop on the CPU.
    """

    tileable = True

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 2.5e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                        maximize=maximize, foreach=foreach, train_mode=True, k=0, lr_max=-1.0,
                        weight_sum=0.0, scheduled_lr=0.0, average_weight=0.0)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        steps = group["warmup_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"warmup_steps must be an integer in [0, inf), got {steps!r}")
        check_range("r", group["r"])
        check_range("weight_lr_power", group["weight_lr_power"])

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {
            "z": param.detach().clone(memory_format=torch.preserve_format),
            "x": param.detach().clone(memory_format=torch.preserve_format),
            "exp_avg_sq": zeros(param),
        }

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, **kwargs: Any) -> Tensor | None:
        """Take one step at :math:`y`; only in train mode (see :meth:`train`)."""
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError("ScheduleFreeAdamW.step() was called in eval mode: call "
                               "optimizer.train() before training (and optimizer.eval() before "
                               "evaluating or saving)")
        return super().step(closure, **kwargs)

    def step_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        """Advance the group's schedule (warmup, averaging weight), then update its tensors."""
        group["k"] += 1
        k, warmup = group["k"], group["warmup_steps"]
        lr = float(group["lr"]) * (min(1.0, k / warmup) if warmup > 0 else 1.0)
        group["lr_max"] = max(lr, group["lr_max"])
        weight = k ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
        group["weight_sum"] += weight
        group["scheduled_lr"] = lr
        group["average_weight"] = weight / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
        super().step_group(group, params, grads, states)

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        schedule_free_adamw_update(param, grad, state, step=group["k"], lr=group["scheduled_lr"],
                                   beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                                   weight_decay=group["weight_decay"],
                                   average_weight=group["average_weight"])

    @torch.no_grad()
    def eval(self) -> None:
        """Put the average :math:`x` into the parameters (for evaluation and checkpoints)."""
        for group in self.param_groups:
            if group["train_mode"]:
                for param in group["params"]:
                    state = self.state.get(param)
                    if state:
                        param.copy_(state["x"])
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Put the gradient point :math:`y` back into the parameters, exactly as it was."""
        for group in self.param_groups:
            if not group["train_mode"]:
                beta1 = float(group["betas"][0])
                for param in group["params"]:
                    state = self.state.get(param)
                    if state:
                        param.copy_(gradient_point(state["x"], state["z"], beta1))
                group["train_mode"] = True
