"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of momentum."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, State, zeros

__all__ = ["Lion", "lion_update", "lion_update_foreach"]


def lion_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    r"""One Lion step on ``param``, in place.

    With learning rate :math:`\eta`, decoupled weight decay :math:`\lambda` and one momentum
    buffer :math:`m` (starting at 0):

    .. math::

        \theta &\leftarrow (1 - \eta\lambda)\, \theta \\
        c_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        \theta &\leftarrow \theta - \eta \operatorname{sign}(c_t) \\
        m_t &\leftarrow \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Every coordinate moves by exactly :math:`\pm\eta` (0 where :math:`c_t = 0`), so the update
    has a larger norm than Adam's and Lion wants a 3-10x smaller learning rate (and a
    correspondingly larger :math:`\lambda`). The step interpolates with :math:`\beta_1`, the
    momentum then tracks the gradient with the slower :math:`\beta_2`, in that order.
    """
    exp_avg = state["exp_avg"]
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    direction = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
    param.add_(direction, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def lion_update_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[State],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    """:func:`lion_update` on lists of tensors (one device, one dtype) with ``torch._foreach_*`` ops."""
    exp_avgs = [s["exp_avg"] for s in states]
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    directions = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(directions, grads, alpha=1 - beta1)
    torch._foreach_sign_(directions)
    torch._foreach_add_(params, directions, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


class Lion(CourseOptimizer):
    r"""Lion, EvoLved Sign Momentum (see :func:`lion_update`).

    The defaults are the paper's (and those of the ``lion-pytorch`` package).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1): the interpolation that is signed,
            and the decay of the momentum.
        weight_decay: decoupled weight decay :math:`\lambda \ge 0`.
        maximize: ascend the objective instead of descending it.
        foreach: ``False`` the per-tensor loop, ``True`` the ``torch._foreach_*`` kernels,
            ``None`` the faster path for the device.
    """

    tileable = True

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {"exp_avg": zeros(param)}

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                    weight_decay=group["weight_decay"])

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        lion_update(param, grad, state, **self._hyperparameters(group))

    def update_foreach(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: dict[str, Any]
    ) -> None:
        lion_update_foreach(params, grads, states, **self._hyperparameters(group))
