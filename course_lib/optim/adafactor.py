r"""Adafactor (Shazeer & Stern, 2018): adaptive steps with a factored second moment.

For a matrix of shape :math:`n \times m`, Adam stores :math:`nm` second-moment numbers;
Adafactor stores the :math:`n` row means and the :math:`m` column means of :math:`g^2` and
rebuilds the full matrix as their rank-one product. Tensors with more than two dimensions are
factored over their last two; vectors and scalars keep a full second moment.

By default :class:`Adafactor` is :class:`torch.optim.Adafactor`. ``variant="paper"`` switches to
the algorithm as published (arXiv 1804.04235) and as Hugging Face's ``transformers.Adafactor``
implements it; with ``beta1`` it also keeps the paper's optional momentum.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, State, check_range, zeros

__all__ = ["Adafactor", "adafactor_update"]

#: :math:`\epsilon_1` of the paper's variant when ``eps[0]`` is ``None``.
PAPER_EPS1 = 1e-30


def _rms(x: Tensor) -> float:
    """Root mean square of all elements, as a Python float."""
    return x.norm().item() / math.sqrt(x.numel())


def _mean_square(grad: Tensor, dim: int) -> Tensor:
    """``(grad * grad).mean(dim, keepdim=True)`` without a gradient-sized temporary."""
    return torch.linalg.vector_norm(grad, dim=dim, keepdim=True).square_().div_(grad.size(dim))


def adafactor_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    step: int,
    lr: float,
    beta2_decay: float,
    eps1: float,
    eps2: float,
    d: float,
    weight_decay: float,
    beta1: float | None,
    relative_step: bool,
    scale_parameter: bool,
    paper_eps: bool,
) -> None:
    r"""One Adafactor step on ``param``, in place.

    At step :math:`t`, with :math:`G = g_t` and (for a matrix) row and column factors :math:`R, C`:

    .. math::

        \rho_t &= \min(\eta, 1/\sqrt t) \text{ (relative step; else } \eta\text{)},\qquad
        \alpha_t = \max(\epsilon_2, \text{RMS}(\theta_{t-1}))\, \rho_t
            \text{ (parameter scaling; else } \rho_t\text{)} \\
        \theta &\leftarrow (1 - \eta\lambda)\, \theta, \qquad
            \hat\beta_{2,t} = 1 - t^{\tau} \quad (\tau = \texttt{beta2\_decay} = -0.8) \\
        R_t &\leftarrow \hat\beta_{2,t} R_{t-1} + (1 - \hat\beta_{2,t})\,
            \text{mean}_\text{row}(G^2 [+\epsilon_1]), \qquad
        C_t \leftarrow \hat\beta_{2,t} C_{t-1} + (1 - \hat\beta_{2,t})\,
            \text{mean}_\text{col}(G^2 [+\epsilon_1]) \\
        \hat V_t &= R_t C_t / \text{mean}(R_t)
            \quad\text{(a vector keeps } \hat V_t \leftarrow \hat\beta_{2,t}\hat V_{t-1}
            + (1 - \hat\beta_{2,t}) (G^2 [+\epsilon_1])\text{)} \\
        U_t &= G / \sqrt{\hat V_t}, \qquad
        \hat U_t = U_t / \max(1, \text{RMS}(U_t) / d) \\
        \theta_t &\leftarrow \theta_{t-1} - \alpha_t \hat U_t
            \quad\text{or, with momentum: } m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1)\,
            \alpha_t \hat U_t,\ \ \theta_t \leftarrow \theta_{t-1} - m_t

    Where :math:`\epsilon_1` goes is the one difference between the variants: the paper adds it
    to :math:`G^2` (the brackets, ``paper_eps=True``); torch instead clamps
    :math:`\text{mean}(R_t) \ge \epsilon_1` and :math:`\hat V_t \ge \epsilon_1^2`. So in torch's
    variant a matrix whose mean :math:`G^2` is below :math:`\epsilon_1` (float32's 1.2e-7 by
    default) gets :math:`U_t` scaled up by :math:`\sqrt{\epsilon_1 / \text{mean}(R_t)}`, until
    the clipping to RMS :math:`d` stops it.
    Weight decay is torch's (decoupled, scaled by :math:`\eta`) in both; the paper has none.
    """
    rho = min(lr, 1 / math.sqrt(step)) if relative_step else lr
    alpha = max(eps2, _rms(param)) * rho if scale_parameter else rho
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    one_minus_beta2 = step**beta2_decay
    added = eps1 if paper_eps else 0.0
    if "row_var" in state:
        row_var, col_var = state["row_var"], state["col_var"]
        row_var.lerp_(_mean_square(grad, -1).add_(added), one_minus_beta2)
        col_var.lerp_(_mean_square(grad, -2).add_(added), one_minus_beta2)
        row_mean = row_var.mean(dim=-2, keepdim=True)
        var_estimate = (row_var @ col_var).div_(row_mean if paper_eps else row_mean.clamp_(min=eps1))
    else:
        state["variance"].lerp_(grad * grad + added, one_minus_beta2)
        var_estimate = state["variance"].clone()
    if not paper_eps:
        var_estimate.clamp_(min=eps1 * eps1)
    update = var_estimate.rsqrt_().mul_(grad)
    update.div_(max(1.0, _rms(update) / d))
    if beta1 is None:
        param.add_(update, alpha=-alpha)
    else:
        state["exp_avg"].lerp_(update.mul_(alpha), 1 - beta1)
        param.sub_(state["exp_avg"])


class Adafactor(CourseOptimizer):
    r"""Adafactor; a drop-in for :class:`torch.optim.Adafactor` (see :func:`adafactor_update`).

    Args:
        params: parameters or param groups.
        lr: :math:`\eta \ge 0`: the cap of the relative step :math:`\rho_t = \min(\eta, 1/\sqrt t)`
            (the paper's constant 0.01), the absolute step if ``relative_step=False``, and the
            scale of the weight decay.
        beta2_decay: :math:`\tau \le 0`; the second moment's average uses
            :math:`\hat\beta_{2,t} = 1 - t^\tau`.
        eps: :math:`(\epsilon_1, \epsilon_2)`, each :math:`\ge 0`. :math:`\epsilon_1` keeps the
            second moment away from zero; ``None`` means the dtype's machine epsilon (torch)
            or 1e-30 (paper). :math:`\epsilon_2` is the smallest parameter scale.
        d: clipping threshold :math:`d \ge 1` for the RMS of the update.
        weight_decay: :math:`\lambda \ge 0`, decoupled: :math:`\theta \leftarrow (1 - \eta\lambda)\theta`.
        foreach: accepted for compatibility; the per-tensor loop always runs (as torch's
            default for Adafactor, which saves memory).
        maximize: ascend the objective instead of descending it.
        variant: ``"torch"`` (default) or ``"paper"``: where :math:`\epsilon_1` enters.
        beta1: momentum :math:`\beta_1 \in [0, 1)` of the scaled update, or ``None`` for none
            (the paper's memory-saving default).
        relative_step: :math:`\rho_t = \min(\eta, 1/\sqrt t)`; ``False`` uses :math:`\eta`.
        scale_parameter: multiply the step by :math:`\max(\epsilon_2, \text{RMS}(\theta))`.

    Hugging Face's ``Adafactor(lr=None, relative_step=True, scale_parameter=True,
    warmup_init=False, clip_threshold=d, beta1=b)`` is ``Adafactor(lr=1e-2, variant="paper",
    beta1=b, d=d)`` here, with ``eps=(1e-30, 1e-3)`` and ``beta2_decay=-0.8`` as both defaults.
    This holds with ``weight_decay=0`` only: Hugging Face shrinks the weights by
    :math:`1 - \alpha_t\lambda`, with the step size :math:`\alpha_t` (relative step times
    parameter scale), where this class, like torch, uses :math:`1 - \eta\lambda`.

    State: ``row_var`` and ``col_var`` (a factored tensor) or ``variance``, plus ``exp_avg`` with
    ``beta1``.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        variant: str = "torch",
        beta1: float | None = None,
        relative_step: bool = True,
        scale_parameter: bool = True,
    ) -> None:
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, variant=variant, beta1=beta1,
                        relative_step=relative_step, scale_parameter=scale_parameter)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("beta2_decay", group["beta2_decay"], -math.inf, 0.0, high_inclusive=True)
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"eps must be a pair (eps1, eps2) with eps1 None or in [0.0, inf) and "
                             f"eps2 in [0.0, inf), got {eps!r}")
        if eps[0] is not None:
            check_range("eps[0]", eps[0])
        check_range("eps[1]", eps[1])
        check_range("d", group["d"], 1.0)
        if group["variant"] not in ("torch", "paper"):
            raise ValueError(f"variant must be 'torch' or 'paper', got {group['variant']!r}")
        if group["beta1"] is not None:
            check_range("beta1", group["beta1"], 0.0, 1.0)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        if param.is_complex():
            raise RuntimeError("Adafactor does not support complex parameters")
        if param.dim() > 1:
            state = {"row_var": param.new_zeros(*param.shape[:-1], 1),
                     "col_var": param.new_zeros(*param.shape[:-2], 1, param.shape[-1])}
        else:
            state = {"variance": zeros(param)}
        if group["beta1"] is not None:
            state["exp_avg"] = zeros(param)
        return state

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        paper = group["variant"] == "paper"
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = PAPER_EPS1 if paper else torch.finfo(param.dtype).eps
        adafactor_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                         beta2_decay=group["beta2_decay"], eps1=eps1, eps2=eps2, d=group["d"],
                         weight_decay=group["weight_decay"], beta1=group["beta1"],
                         relative_step=group["relative_step"],
                         scale_parameter=group["scale_parameter"], paper_eps=paper)
