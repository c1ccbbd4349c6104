"""NAdam (Dozat, 2016): Adam with Nesterov momentum and a warming-up momentum schedule.

The operations and their order follow ``torch/optim/nadam.py`` (its single-tensor path), so that
trajectories agree with torch.optim to round-off.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._base import CourseOptimizer, Params, State, check_range, zeros
from .adam import apply_weight_decay

__all__ = ["NAdam", "nadam_update"]


def nadam_update(
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
    momentum_decay: float,
    decoupled_weight_decay: bool,
) -> None:
    r"""One NAdam step on ``param``, in place; also updates the number ``state["mu_product"]``.

    The momentum coefficient warms up with step :math:`t` (momentum decay :math:`\psi`):
    :math:`\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})`. Then

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1}
            \text{ (or } \theta_{t-1} \leftarrow (1 - \eta\lambda)\theta_{t-1}
            \text{ if decoupled)} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &\leftarrow \theta_{t-1} - \eta \left(
            \frac{(1 - \mu_t)\, g_t}{1 - \prod_{i \le t} \mu_i}
            + \frac{\mu_{t+1}\, m_t}{1 - \prod_{i \le t+1} \mu_i} \right)
            \Big/ \left(\sqrt{v_t / (1 - \beta_2^t)} + \epsilon\right)

    The second term looks one step ahead with :math:`\mu_{t+1}`: Nesterov's momentum.
    """
    grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    state["mu_product"] *= mu
    mu_product = state["mu_product"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps)
    param.addcdiv_(grad, denom, value=-lr * (1 - mu) / (1 - mu_product))
    param.addcdiv_(exp_avg, denom, value=-lr * mu_next / (1 - mu_product * mu_next))


class NAdam(CourseOptimizer):
    r"""NAdam; a drop-in for :class:`torch.optim.NAdam` (see :func:`nadam_update`).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        weight_decay: :math:`\lambda \ge 0` (L2, or decoupled as in AdamW).
        momentum_decay: :math:`\psi \ge 0` of the momentum warm-up.
        decoupled_weight_decay: shrink the weights directly instead of adding an L2 gradient.
        foreach: accepted for compatibility; NAdam always runs the per-tensor loop (its state
            holds a running product, a number that a tiled loop would update once per tile).
        maximize: ascend the objective instead of descending it.
        capturable, differentiable: torch's arguments, accepted at their default ``False``;
            ``True`` raises ``ValueError``.

    The state's ``mu_product`` is a Python float (torch keeps a 0-dim tensor; loading torch's
    state converts it).
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        foreach=foreach, maximize=maximize, capturable=capturable,
                        differentiable=differentiable)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("momentum_decay", group["momentum_decay"])

    def adopt_state(self, state: State, param: Tensor, saved: State) -> None:
        if isinstance(state.get("mu_product"), Tensor):
            state["mu_product"] = state["mu_product"].item()

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {
            "mu_product": 1.0,
            "exp_avg": zeros(param),
            "exp_avg_sq": zeros(param),
        }

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        nadam_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                     beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                     weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"],
                     decoupled_weight_decay=group["decoupled_weight_decay"])
