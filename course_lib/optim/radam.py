"""RAdam (Liu et al., 2020): Adam whose adaptive step is switched on once its variance is tractable.

The operations and their order follow ``torch/optim/radam.py`` (its single-tensor path), so that
trajectories agree with torch.optim to round-off.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ._base import CourseOptimizer, Params, State, zeros
from .adam import apply_weight_decay

__all__ = ["RAdam", "radam_update"]


def radam_update(
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
    decoupled_weight_decay: bool,
) -> None:
    r"""One RAdam step on ``param``, in place.

    The moments are Adam's (:math:`m_t`, :math:`v_t`, after L2 or decoupled weight decay). The
    length of the approximated simple moving average, :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t / (1 - \beta_2^t)`, decides the step:

    .. math::

        \hat m_t &= m_t / (1 - \beta_1^t) \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
                          {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        \theta_t &\leftarrow \theta_{t-1} - \eta\, \hat m_t\, r_t\,
            \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}
            \quad \text{if } \rho_t > 5, \text{ else }
            \theta_t \leftarrow \theta_{t-1} - \eta\, \hat m_t

    Early on (:math:`\rho_t \le 5`; the first 5 steps with :math:`\beta_2 = 0.999`) it takes
    plain momentum steps, as a built-in warm-up. The threshold 5 is PyTorch's and the authors'
    code's (the paper's algorithm says 4).
    """
    grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        denom = exp_avg_sq.sqrt().add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr * rect * math.sqrt(bias_correction2) / bias_correction1)
    else:
        param.add_(exp_avg, alpha=-lr / bias_correction1)


class RAdam(CourseOptimizer):
    r"""RAdam; a drop-in for :class:`torch.optim.RAdam` (see :func:`radam_update`).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        weight_decay: :math:`\lambda \ge 0` (L2, or decoupled as in AdamW).
        decoupled_weight_decay: shrink the weights directly instead of adding an L2 gradient.
        foreach: ``False`` the per-tensor loop; ``None`` or ``True`` the tiled loop on the CPU.
        maximize: ascend the objective instead of descending it.
        capturable, differentiable: torch's arguments, accepted at their default ``False``;
            ``True`` raises ``ValueError``.
    """

    tileable = True

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                        maximize=maximize, capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {
            "exp_avg": zeros(param),
            "exp_avg_sq": zeros(param),
        }

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        radam_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                     beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                     weight_decay=group["weight_decay"],
                     decoupled_weight_decay=group["decoupled_weight_decay"])
