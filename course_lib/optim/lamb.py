"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes").

Adam's step, rescaled per tensor by a trust ratio so that each layer moves by a fixed fraction
of its own norm, whatever the scale of its gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, State, check_range, zeros

__all__ = ["LAMB", "lamb_update"]


def lamb_update(
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
    bias_correction: bool,
    clamp_value: float | None,
    adapt: bool,
) -> None:
    r"""One LAMB step on the tensor ``param`` (one layer's weight or bias), in place.

    At step :math:`t`, with learning rate :math:`\eta` and weight decay :math:`\lambda`:

    .. math::

        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        u_t &\leftarrow \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
              + \lambda \theta_{t-1} \\
        r_t &\leftarrow \frac{\phi(\lVert\theta_{t-1}\rVert)}{\lVert u_t \rVert}
              \quad (1 \text{ if either norm is } 0) \\
        \theta_t &\leftarrow \theta_{t-1} - \eta\, r_t\, u_t

    :math:`u_t` is AdamW's step (the decay inside it); the trust ratio :math:`r_t` rescales it
    so that the tensor moves by :math:`\eta\,\phi(\lVert\theta\rVert)`, a fixed fraction of its
    norm. A tensor of zeros (a bias initialised to 0) has no scale to trust, so then
    :math:`r_t = 1`. :math:`\phi` clamps the weight norm to at most ``clamp_value`` (no clamp if
    ``None``). Without bias correction, :math:`m_t, v_t` are used as they are. With
    ``adapt=False`` (for biases and norm gains) :math:`r_t = 1` and this is exactly AdamW.
    """
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat, v_hat = exp_avg, exp_avg_sq
    if bias_correction:
        m_hat, v_hat = exp_avg / (1 - beta1**step), exp_avg_sq / (1 - beta2**step)
    update = m_hat / v_hat.sqrt().add_(eps)
    if weight_decay != 0:
        update.add_(param, alpha=weight_decay)
    if adapt:
        weight_norm = torch.linalg.vector_norm(param)
        if clamp_value is not None:
            weight_norm = weight_norm.clamp(max=clamp_value)
        update_norm = torch.linalg.vector_norm(update)
        ratio = torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm, 1.0)
        update.mul_(ratio)
    param.add_(update, alpha=-lr)


class LAMB(CourseOptimizer):
    r"""LAMB, layer-wise adaptive moments (see :func:`lamb_update`).

    A layer is a parameter tensor: the trust ratio uses the norms of one tensor at a time.
    The usual recipe leaves biases and normalization gains out of both weight decay and
    adaptation; give them a group of their own with ``weight_decay=0`` and ``adapt=False``,
    e.g. from :func:`course_lib.param_groups.weight_decay_groups`::

        decayed, others = weight_decay_groups(model, 0.01)
        LAMB([decayed, {**others, "adapt": False}], lr=1e-3)

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`, the fraction of its norm a tensor moves per step.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon \ge 0`, added to the denominator (the paper's reference code uses
            1e-6).
        weight_decay: :math:`\lambda \ge 0`, added to Adam's step before the trust ratio.
        bias_correction: divide the averages by :math:`1 - \beta^t` as Adam does.
        clamp_value: clamp the weight norm to at most this value (``None``: no clamp).
        adapt: use the trust ratio (a per-group flag; ``False`` makes the group plain AdamW).
        maximize: ascend the objective instead of descending it.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        clamp_value: float | None = None,
        *,
        adapt: bool = True,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, clamp_value=clamp_value, adapt=adapt,
                        maximize=maximize)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        if group["clamp_value"] is not None:
            check_range("clamp_value", group["clamp_value"])

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {
            "exp_avg": zeros(param),
            "exp_avg_sq": zeros(param),
        }

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lamb_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                    beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                    weight_decay=group["weight_decay"], bias_correction=group["bias_correction"],
                    clamp_value=group["clamp_value"], adapt=group["adapt"])
