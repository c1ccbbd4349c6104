"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay.

The operations and their order follow ``torch/optim/sgd.py`` (its single-tensor path), so that
trajectories agree with torch.optim to round-off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, Params, State, check_range, zeros

__all__ = ["SGD", "sgd_update", "sgd_update_foreach"]


def sgd_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    step: int,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    r"""One SGD step on ``param``, in place.

    With learning rate :math:`\eta`, momentum :math:`\mu`, dampening :math:`\tau` and weight
    decay :math:`\lambda`, at step :math:`t`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        b_t &\leftarrow g_t \ \text{if } t = 1, \text{ else } \mu b_{t-1} + (1 - \tau) g_t \\
        d_t &\leftarrow g_t + \mu b_t \ \text{(Nesterov)}, \text{ else } b_t \\
        \theta_t &\leftarrow \theta_{t-1} - \eta d_t

    Without momentum (:math:`\mu = 0`), :math:`d_t = g_t`. As in PyTorch, the buffer starts at
    the first gradient rather than at zero, and ``lr`` multiplies the whole step (some papers
    write :math:`b_t = \mu b_{t-1} + \eta g_t` instead; the two agree while :math:`\eta` is
    constant).
    """
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    if momentum != 0:
        buf = state["momentum_buffer"]
        if step == 1:
            buf.copy_(grad)
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(buf, alpha=momentum) if nesterov else buf
    param.add_(grad, alpha=-lr)


def sgd_update_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[State],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """:func:`sgd_update` on lists of tensors (one device, one dtype) with ``torch._foreach_*`` ops."""
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        bufs = [s["momentum_buffer"] for s in states]
        first = [i for i, s in enumerate(states) if s["step"] == 1]
        later = [i for i, s in enumerate(states) if s["step"] > 1]
        if first:
            torch._foreach_copy_([bufs[i] for i in first], [grads[i] for i in first])
        if later:
            later_bufs = [bufs[i] for i in later]
            torch._foreach_mul_(later_bufs, momentum)
            torch._foreach_add_(later_bufs, [grads[i] for i in later], alpha=1 - dampening)
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    torch._foreach_add_(params, grads, alpha=-lr)


class SGD(CourseOptimizer):
    r"""Stochastic gradient descent; a drop-in for :class:`torch.optim.SGD` (see :func:`sgd_update`).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`.
        momentum: momentum factor :math:`\mu \in [0, 1)`; a scheduler may change it between
            steps (e.g. OneCycleLR).
        dampening: dampening :math:`\tau \in [0, 1]` of the gradient added to the buffer.
        weight_decay: L2 penalty :math:`\lambda \ge 0`, added to the gradient.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        maximize: ascend the objective instead of descending it.
        foreach: ``False`` the per-tensor loop, ``True`` the ``torch._foreach_*`` kernels,
            ``None`` the faster of the two fast paths for the device.
        differentiable, fused: torch's arguments, accepted at their defaults (``False``,
            ``None``); other values raise ``ValueError``.

    Validation is stricter than torch's, which checks only ``momentum >= 0``: ``momentum >= 1``
    (a buffer that never forgets, or grows) and ``dampening`` outside :math:`[0, 1]` (a
    negative or sign-flipping weight on the gradient) raise ``ValueError`` here.

    Momentum switched on after a parameter's first step follows the base class's rule: the
    buffer starts at zero then, so its first value is :math:`(1 - \tau) g_t` (torch starts it at
    :math:`g_t`; the two agree without dampening).
    """

    tileable = True
    optional_state = {"momentum_buffer": "momentum"}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("dampening", group["dampening"], 0.0, 1.0, high_inclusive=True)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True requires momentum in (0, 1) and dampening == 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {"momentum_buffer": zeros(param)} if group["momentum"] != 0 else {}

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=float(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
                    weight_decay=group["weight_decay"], nesterov=group["nesterov"])

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        sgd_update(param, grad, state, step=state["step"], **self._hyperparameters(group))

    def update_foreach(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: dict[str, Any]
    ) -> None:
        sgd_update_foreach(params, grads, states, **self._hyperparameters(group))
