"""RMSprop (Hinton, 2012): divide the gradient by a running root mean square of recent gradients.

The operations and their order follow ``torch/optim/rmsprop.py`` (its single-tensor path), so that
trajectories agree with torch.optim to round-off.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._base import CourseOptimizer, Params, State, check_range, zeros

__all__ = ["RMSprop", "rmsprop_update"]


def rmsprop_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    step: int,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
) -> None:
    r"""One RMSprop step on ``param``, in place.

    With smoothing constant :math:`\alpha`, learning rate :math:`\eta`, momentum :math:`\mu`
    and weight decay :math:`\lambda`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &\leftarrow \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &\leftarrow \alpha \bar g_{t-1} + (1 - \alpha) g_t
            \text{ (centered: } \tilde v_t = v_t - \bar g_t^2 \text{, else } \tilde v_t = v_t) \\
        b_t &\leftarrow \mu b_{t-1} + g_t / (\sqrt{\tilde v_t} + \epsilon) \\
        \theta_t &\leftarrow \theta_{t-1} - \eta b_t

    Without momentum, :math:`\theta_t = \theta_{t-1} - \eta g_t / (\sqrt{\tilde v_t} + \epsilon)`.
    The averages start at zero and are not bias-corrected (unlike Adam), so the first steps are
    larger than :math:`\eta`. ``step`` is not used; it is there to keep the signature common.
    """
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    square_avg = state["square_avg"]
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if centered:
        grad_avg = state["grad_avg"]
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg.add_(eps)
    if momentum > 0:
        buf = state["momentum_buffer"]
        buf.mul_(momentum).addcdiv_(grad, avg)
        param.add_(buf, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


class RMSprop(CourseOptimizer):
    r"""RMSprop; a drop-in for :class:`torch.optim.RMSprop` (see :func:`rmsprop_update`).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`.
        alpha: smoothing constant :math:`\alpha \in [0, 1)` of the average of squared gradients.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        weight_decay: L2 penalty :math:`\lambda \ge 0`, added to the gradient.
        momentum: momentum factor :math:`\mu \in [0, 1)`.
        centered: divide by an estimate of the gradient's variance instead of its second moment.
        capturable: torch's argument, accepted at its default ``False``; ``True`` raises
            ``ValueError``.
        foreach: ``False`` the per-tensor loop; ``None`` or ``True`` the tiled loop on the CPU.
        maximize: ascend the objective instead of descending it.
        differentiable: torch's argument, accepted at its default ``False``; ``True`` raises
            ``ValueError``.

    The arguments after ``params`` may be given by position, in torch's order.

    Validation is stricter than torch's, which checks only ``alpha >= 0`` and ``momentum >= 0``:
    ``alpha >= 1`` (an average of squared gradients that never takes in a gradient, so the
    step is :math:`g / \epsilon`) and ``momentum >= 1`` raise ``ValueError`` here.

    Momentum or ``centered`` switched on after a parameter's first step (torch raises
    ``KeyError`` then) follows the base class's rule: the momentum buffer, or the average of
    gradients, starts at zero at that step, as it does at a first step.
    """

    tileable = True
    optional_state = {"momentum_buffer": "momentum", "grad_avg": "centered"}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
                        differentiable=differentiable)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("alpha", group["alpha"], 0.0, 1.0)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        state = {"square_avg": zeros(param)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros(param)
        if group["centered"]:
            state["grad_avg"] = zeros(param)
        return state

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        rmsprop_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                       alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                       momentum=group["momentum"], centered=group["centered"])
