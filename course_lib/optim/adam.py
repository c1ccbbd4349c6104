"""Adam (Kingma & Ba, 2015), its AMSGrad variant, and AdamW's decoupled weight decay.

The operations and their order follow ``torch/optim/adam.py`` (its single-tensor path), so that
trajectories agree with torch.optim to round-off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, Params, State, zeros

__all__ = ["Adam", "AdamW", "adam_update", "adam_update_foreach", "apply_weight_decay"]


def apply_weight_decay(param: Tensor, grad: Tensor, *, lr: float, weight_decay: float, decoupled: bool) -> Tensor:
    r"""Weight decay before an adaptive step: return the gradient that the moments should see.

    L2 regularization (``decoupled=False``) adds :math:`\lambda\theta` to the gradient, so the
    penalty is averaged and rescaled like any gradient; decoupled decay (AdamW) shrinks the
    weights in place by :math:`1 - \eta\lambda` and leaves the gradient alone (Loshchilov &
    Hutter, 2019). Adam, NAdam and RAdam offer both.
    """
    if weight_decay == 0:
        return grad
    if decoupled:
        param.mul_(1 - lr * weight_decay)
        return grad
    return grad.add(param, alpha=weight_decay)


def adam_update(
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
    amsgrad: bool,
    decoupled_weight_decay: bool,
) -> None:
    r"""One Adam (or AdamW) step on ``param``, in place.

    At step :math:`t`, with learning rate :math:`\eta` and weight decay :math:`\lambda`:

    .. math::

        \text{Adam (L2):}\quad & g_t \leftarrow g_t + \lambda \theta_{t-1} \\
        \text{AdamW (decoupled):}\quad & \theta_{t-1} \leftarrow (1 - \eta\lambda)\, \theta_{t-1} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        v^{\max}_t &\leftarrow \max(v^{\max}_{t-1}, v_t) \quad \text{(AMSGrad only)} \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\eta}{1 - \beta_1^t} \,
            \frac{m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
            \quad \text{(AMSGrad: } v^{\max}_t \text{ in place of } v_t)

    The factors :math:`1 - \beta^t` undo the bias of averages that start at zero. With L2 decay
    the penalty's gradient is divided by :math:`\sqrt{\hat v_t}` like any gradient, so weights
    with large gradients are decayed less; decoupled decay shrinks every weight by the same
    factor (Loshchilov & Hutter, 2019). :math:`v^{\max}_t`, AMSGrad's running maximum of the raw
    second moment (Reddi et al., 2018), is kept in ``state["max_exp_avg_sq"]``; as in torch, the
    bias correction divides the maximum, not each :math:`v_t` before it is compared.
    """
    grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if amsgrad:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        exp_avg_sq = state["max_exp_avg_sq"]
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction2)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def adam_update_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[State],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    decoupled_weight_decay: bool,
) -> None:
    """:func:`adam_update` on lists of tensors (one device, one dtype) with ``torch._foreach_*`` ops.

    The same operations in the same order, so on the CPU the result equals :func:`adam_update`
    bit for bit. Learned from the multi-tensor path of ``torch/optim/adam.py``.
    """
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    if amsgrad:
        max_exp_avg_sqs = [s["max_exp_avg_sq"] for s in states]
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        exp_avg_sqs = max_exp_avg_sqs
    steps = [s["step"] for s in states]
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [math.sqrt(1 - beta2**t) for t in steps])
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, [-lr / (1 - beta1**t) for t in steps])


class Adam(CourseOptimizer):
    r"""Adam; a drop-in for :class:`torch.optim.Adam` (see :func:`adam_update`).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0` (a number or a 1-element tensor).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1): decay rates of the averages of the
            gradient and of its square.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        weight_decay: :math:`\lambda \ge 0`; an L2 penalty added to the gradient, unless
            ``decoupled_weight_decay=True`` (then this is AdamW).
        amsgrad: divide by the running maximum of :math:`v_t` (Reddi et al., 2018).
        maximize: ascend the objective instead of descending it.
        foreach: ``False`` the per-tensor loop, ``True`` the ``torch._foreach_*`` kernels,
            ``None`` the faster path for the device.
        capturable, differentiable, fused: torch's arguments, accepted at their defaults
            (``False``, ``False``, ``None``); other values raise ``ValueError``.
        decoupled_weight_decay: shrink the weights directly instead of adding an L2 gradient.
    """

    tileable = True
    optional_state = {"max_exp_avg_sq": "amsgrad"}

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        state = {
            "exp_avg": zeros(param),
            "exp_avg_sq": zeros(param),
        }
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros(param)
        return state

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                    weight_decay=group["weight_decay"], amsgrad=group["amsgrad"],
                    decoupled_weight_decay=group["decoupled_weight_decay"])

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        adam_update(param, grad, state, step=state["step"], **self._hyperparameters(group))

    def update_foreach(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: dict[str, Any]
    ) -> None:
        adam_update_foreach(params, grads, states, **self._hyperparameters(group))


class AdamW(Adam):
    r"""Adam with decoupled weight decay; a drop-in for :class:`torch.optim.AdamW`.

    The same as ``Adam(..., decoupled_weight_decay=True)`` with torch's default
    ``weight_decay=1e-2``: each step first shrinks the weights by :math:`1 - \eta\lambda`,
    then takes an Adam step (see :func:`adam_update`).
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True)
