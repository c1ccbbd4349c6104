"""Adagrad (Duchi, Hazan & Singer, 2011): a per-coordinate step size from the sum of squared gradients.

The operations and their order follow ``torch/optim/adagrad.py`` (its single-tensor path), so that
trajectories agree with torch.optim to round-off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, Params, State, check_range

__all__ = ["Adagrad", "adagrad_update"]


def adagrad_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    step: int,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
) -> None:
    r"""One Adagrad step on ``param``, in place.

    At step :math:`t`, with learning rate :math:`\eta`, decay :math:`\delta` and weight decay
    :math:`\lambda`, the accumulator :math:`s` starts at ``initial_accumulator_value``:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        \tilde\eta_t &\leftarrow \eta / (1 + (t - 1)\delta) \\
        s_t &\leftarrow s_{t-1} + g_t^2 \\
        \theta_t &\leftarrow \theta_{t-1} - \tilde\eta_t \, \frac{g_t}{\sqrt{s_t} + \epsilon}

    Each coordinate's step shrinks as its squared gradients pile up: rarely-updated coordinates
    keep large steps, and every step size decays towards zero over a long run.
    """
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    decayed_lr = lr / (1 + (step - 1) * lr_decay)
    state_sum = state["sum"]
    state_sum.addcmul_(grad, grad, value=1)
    std = state_sum.sqrt().add_(eps)
    param.addcdiv_(grad, std, value=-decayed_lr)


class Adagrad(CourseOptimizer):
    r"""Adagrad; a drop-in for :class:`torch.optim.Adagrad` (see :func:`adagrad_update`).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`.
        lr_decay: :math:`\delta \ge 0`; the step size is :math:`\eta / (1 + (t-1)\delta)`.
        weight_decay: L2 penalty :math:`\lambda \ge 0`, added to the gradient.
        initial_accumulator_value: starting value (:math:`\ge 0`) of the sum of squares.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        foreach: ``False`` the per-tensor loop; ``None`` or ``True`` the tiled loop on the CPU.
        maximize: ascend the objective instead of descending it.
        differentiable, fused: torch's arguments, accepted at their defaults (``False``,
            ``None``); other values raise ``ValueError``.

    Unlike :class:`torch.optim.Adagrad`, the state is created at a parameter's first step
    (not in the constructor), and sparse gradients are not supported.
    """

    tileable = True

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("lr_decay", group["lr_decay"])
        check_range("initial_accumulator_value", group["initial_accumulator_value"])

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        value = group["initial_accumulator_value"]
        return {"sum": torch.full_like(param, value, memory_format=torch.preserve_format)}

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        adagrad_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                       lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                       eps=group["eps"])
