"""LARS (You, Gitman & Ginsburg, 2017, "Large Batch Training of Convolutional Networks").

SGD with momentum whose gradient is rescaled, per tensor, by a local learning rate that makes
each layer's step a fixed fraction of the layer's norm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, State, check_range, zeros
from .sgd import sgd_update

__all__ = ["LARS", "lars_update"]


def lars_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    step: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    nesterov: bool,
    adapt: bool,
) -> None:
    r"""One LARS step on the tensor ``param`` (one layer's weight or bias), in place.

    With global learning rate :math:`\eta`, trust coefficient :math:`c`, weight decay
    :math:`\lambda` and momentum :math:`\mu`
    (the paper writes :math:`\gamma, \eta, \beta` for the first three):

    .. math::

        r_t &\leftarrow c\,
            \frac{\lVert\theta_{t-1}\rVert}{\lVert g_t\rVert + \lambda \lVert\theta_{t-1}\rVert}
            \quad (1 \text{ if } \lVert\theta_{t-1}\rVert = 0 \text{ or } \lVert g_t\rVert = 0) \\
        d_t &\leftarrow r_t\, (g_t + \lambda\,\theta_{t-1}) \\
        b_t &\leftarrow d_t \ \text{if } t = 1, \text{ else } \mu b_{t-1} + d_t \\
        \theta_t &\leftarrow \theta_{t-1} - \eta\, b_t
            \quad (\text{Nesterov: } \theta_{t-1} - \eta (d_t + \mu b_t))

    The local rate :math:`r_t` makes the step of every layer about
    :math:`\eta\, c\lVert\theta\rVert`, so layers whose gradients are small compared with
    their weights are not left behind. The last two lines are :func:`sgd_update` on
    :math:`d_t` (the paper puts the rate inside the buffer, :math:`v_t = \mu v_{t-1} +
    \eta d_t`; the two agree while :math:`\eta` is constant). With ``adapt=False`` (for
    biases and norm gains) :math:`r_t = 1` and this is SGD with momentum and L2 decay.
    """
    direction = grad.add(param, alpha=weight_decay) if weight_decay != 0 else grad
    if adapt:
        weight_norm = torch.linalg.vector_norm(param)
        grad_norm = torch.linalg.vector_norm(grad)
        local_lr = trust_coefficient * weight_norm / (grad_norm + weight_decay * weight_norm)
        direction = direction * torch.where((weight_norm > 0) & (grad_norm > 0), local_lr, 1.0)
    sgd_update(param, direction, state, step=step, lr=lr, momentum=momentum, dampening=0.0,
               weight_decay=0.0, nesterov=nesterov)


class LARS(CourseOptimizer):
    r"""LARS, layer-wise adaptive rate scaling (see :func:`lars_update`).

    A layer is a parameter tensor. The usual recipe leaves biases and normalization
    parameters out of both weight decay and adaptation; give them a group of their own with
    ``weight_decay=0`` and ``adapt=False``, e.g. from
    :func:`course_lib.param_groups.weight_decay_groups`::

        decayed, others = weight_decay_groups(model, 5e-4)
        LARS([decayed, {**others, "adapt": False}], lr=2.0)

    torch has no LARS; the defaults follow the paper (momentum 0.9, :math:`c = 0.001`)
    and common implementations (a global rate of 1).

    Args:
        params: parameters or param groups.
        lr: global learning rate :math:`\eta \ge 0`.
        momentum: momentum :math:`\mu \in [0, 1)`; the buffer starts at the first step's
            direction, as in :class:`torch.optim.SGD`.
        weight_decay: :math:`\lambda \ge 0`, added to the gradient and to the local rate's
            denominator.
        trust_coefficient: :math:`c \ge 0`, the fraction of its norm a layer moves per unit
            of ``lr``.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        adapt: use the local rate (a per-group flag; ``False`` makes the group plain SGD).
        maximize: ascend the objective instead of descending it.

    Momentum switched on after a parameter's first step follows the base class's rule: the
    buffer starts at zero then, so its first value is that step's direction, as on a first step.
    """

    optional_state = {"momentum_buffer": "momentum"}

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        nesterov: bool = False,
        *,
        adapt: bool = True,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, nesterov=nesterov, adapt=adapt,
                        maximize=maximize)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("trust_coefficient", group["trust_coefficient"])
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError(f"nesterov=True requires momentum in (0, 1), got {group['momentum']!r}")

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {"momentum_buffer": zeros(param)} if group["momentum"] != 0 else {}

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        lars_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                    momentum=group["momentum"], weight_decay=group["weight_decay"],
                    trust_coefficient=group["trust_coefficient"], nesterov=group["nesterov"],
                    adapt=group["adapt"])
