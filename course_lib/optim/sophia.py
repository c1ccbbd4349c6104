r"""Sophia (Liu et al., 2023): clipped sign momentum, preconditioned by a diagonal Hessian estimate.

Sophia divides the momentum by an estimate :math:`h` of the Hessian's diagonal, refreshed every
few steps, and clips each coordinate of the ratio to :math:`[-1, 1]`: where the curvature is
large it takes Newton-like steps, where it is small, negative or unknown the step falls back to
:math:`\pm\eta`, a sign-momentum step. Two estimators of the diagonal, both unbiased in
expectation:

* Gauss-Newton-Bartlett (:func:`gauss_newton_bartlett`, SophiaG): for a loss that is a
  cross-entropy over :math:`B` predictions, draw labels from the model's own softmax and take
  the gradient :math:`\hat g` of the mean loss on them; :math:`B\, \hat g \odot \hat g` estimates
  the diagonal of the Gauss-Newton matrix.
* Hutchinson (:func:`hutchinson`, the paper's SophiaH): for a Rademacher vector :math:`z`,
  :math:`z \odot Hz` estimates the diagonal of the Hessian :math:`H`; :math:`Hz` is one
  Hessian-vector product (a second backward pass).

A training loop with SophiaG, as in the reference implementation (``Liuhong99/Sophia``)::

    loss.backward(); opt.step(bs=B); opt.zero_grad()           # every step
    if t % k == k - 1:                                          # every k steps
        sampled_label_loss(model(x)).backward()
        opt.update_hessian(); opt.zero_grad()

``update_hessian()`` averages :math:`\hat g \odot \hat g` and ``step(bs=B)`` multiplies by
:math:`B`; or pass estimates that already carry their scale, ``opt.update_hessian(
gauss_newton_bartlett(model(x), params))`` or ``hutchinson(loss, params)``, and step with
``bs=1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import CourseOptimizer, State, check_range, zeros

__all__ = ["SophiaG", "sophiag_update", "sampled_label_loss", "gauss_newton_bartlett", "hutchinson"]


def sophiag_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: float,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float,
    eps: float,
) -> None:
    r"""One SophiaG step on ``param``, in place; ``state["hessian"]`` is :math:`h_t`.

    .. math::

        \theta &\leftarrow (1 - \eta\lambda)\, \theta \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        \theta_t &\leftarrow \theta_{t-1} - \eta\,
            \text{clip}\!\left(\frac{m_t}{\max(\rho \cdot bs \cdot h_t,\ \epsilon)},\ 1\right),
            \qquad \text{clip}(x, 1) = \max(-1, \min(x, 1))

    :math:`h_t` (see :meth:`SophiaG.update_hessian`) changes only when the Hessian is refreshed.
    A coordinate whose ratio is clipped moves by exactly :math:`\pm\eta`; the others take the
    Newton-like step :math:`\eta m_t / (\rho\, bs\, h_t)`.
    """
    param.mul_(1 - lr * weight_decay)
    exp_avg = state["exp_avg"]
    exp_avg.lerp_(grad, 1 - beta1)
    denom = (state["hessian"] * (rho * bs)).clamp_(min=eps)
    param.add_((exp_avg / denom).clamp_(-1.0, 1.0), alpha=-lr)


class SophiaG(CourseOptimizer):
    r"""SophiaG (see :func:`sophiag_update`), with the reference implementation's arguments.

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`: the largest change of a coordinate per step.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1): decay rates of the momentum and of
            the Hessian estimate's average.
        rho: :math:`\rho \ge 0`; scales the Hessian in the denominator, so a smaller
            :math:`\rho` makes the ratio :math:`m_t / (\rho\, bs\, h_t)` larger and clips *more*
            coordinates (more steps of exactly :math:`\pm\eta`); a larger :math:`\rho` clips fewer
            (the paper's :math:`\gamma`).
        weight_decay: :math:`\lambda \ge 0`, decoupled as in AdamW.
        maximize: ascend the objective instead of descending it.
        eps: :math:`\epsilon > 0`, the smallest denominator.

    ``step(closure=None, bs=5120)`` takes the batch size :math:`bs` (the number of predictions,
    e.g. tokens, in the batch the Hessian was estimated on). State: ``exp_avg`` and
    ``hessian``; the Hessian starts at zero, so until its first refresh every step is
    :math:`\pm\eta`.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 1e-1,
        *,
        maximize: bool = False,
        eps: float = 1e-15,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, maximize=maximize, eps=eps)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("rho", group["rho"])
        check_range("eps", group["eps"], torch.finfo(torch.float64).tiny)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {"exp_avg": zeros(param),
                "hessian": zeros(param)}

    def step(self, closure: Callable[[], Tensor] | None = None, bs: float = 5120) -> Tensor | None:
        """Take one step; ``bs`` multiplies the Hessian estimate (see :func:`sophiag_update`)."""
        check_range("bs", bs, 1.0)
        return super().step(closure, bs=bs)

    def step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   states: list[State], bs: float = 5120) -> None:
        for param, grad, state in zip(params, grads, states):
            self.update(param, grad, state, group, bs=bs)

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any],
               bs: float = 5120) -> None:
        sophiag_update(param, grad, state, lr=float(group["lr"]), beta1=float(group["betas"][0]),
                       rho=group["rho"], bs=bs, weight_decay=group["weight_decay"], eps=group["eps"])

    @torch.no_grad()
    def update_hessian(self, estimates: Sequence[Tensor | None] | None = None) -> None:
        r"""Refresh the Hessian estimate: :math:`h \leftarrow \beta_2 h + (1 - \beta_2)\, \hat h`.

        Without ``estimates``, :math:`\hat h = \hat g \odot \hat g` from each parameter's
        ``grad``: call it after a backward pass of :func:`sampled_label_loss`, and step with
        ``bs`` equal to that batch's number of predictions. Otherwise ``estimates`` holds one
        diagonal estimate (or ``None``) per parameter, in the order of ``param_groups``.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        if estimates is None:
            estimates = [None if p.grad is None else p.grad * p.grad for p in params]
        elif len(estimates) != len(params):
            raise ValueError(f"estimates must hold one tensor (or None) per parameter, "
                             f"{len(params)} in all, got {len(estimates)}")
        in_order = iter(estimates)
        for group in self.param_groups:
            for param in group["params"]:
                estimate = next(in_order)
                if estimate is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state.update(self.init_state(param, group))
                state["hessian"].lerp_(estimate.to(param.dtype), 1 - group["betas"][1])


def sampled_label_loss(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Mean cross-entropy of ``logits`` (shape ``(..., classes)``) on labels drawn from their softmax.

    Its gradient is the :math:`\hat g` of the Gauss-Newton-Bartlett estimator; the labels are
    sampled without gradient, so only the loss depends on the parameters.
    """
    flat = logits.reshape(-1, logits.size(-1))
    with torch.no_grad():
        labels = torch.multinomial(flat.float().softmax(dim=-1), 1, generator=generator).squeeze(-1)
    return F.cross_entropy(flat, labels)


def gauss_newton_bartlett(
    logits: Tensor, params: Sequence[Tensor], generator: torch.Generator | None = None
) -> list[Tensor]:
    r"""The Gauss-Newton-Bartlett estimate :math:`B\, \hat g \odot \hat g` for each of ``params``.

    :math:`B` is the number of predictions in ``logits``, :math:`\hat g` the gradient of
    :func:`sampled_label_loss`. For a softmax cross-entropy the Gauss-Newton matrix of the mean
    loss is :math:`\frac1B \sum_i J_i^\top (\operatorname{diag} p_i - p_i p_i^\top) J_i`, and
    since a sampled one-hot label :math:`e_y` has mean :math:`p_i` and covariance
    :math:`\operatorname{diag} p_i - p_i p_i^\top`, the expectation of
    :math:`B \hat g \hat g^\top` is exactly that matrix; this returns its diagonal's estimate.
    """
    batch = logits.numel() // logits.size(-1)
    grads = torch.autograd.grad(sampled_label_loss(logits, generator), list(params))
    return [batch * g * g for g in grads]


def hutchinson(
    loss: Tensor,
    params: Sequence[Tensor],
    samples: int = 1,
    *,
    generator: torch.Generator | None = None,
    probes: Sequence[Sequence[Tensor]] | None = None,
) -> list[Tensor]:
    r"""Hutchinson's estimate of the Hessian's diagonal: the mean of :math:`z \odot Hz` over ``samples``.

    Each :math:`z` has independent entries :math:`\pm 1` (Rademacher), so
    :math:`E[z_i (Hz)_i] = \sum_j H_{ij} E[z_i z_j] = H_{ii}`. :math:`Hz` is the gradient of
    :math:`\nabla f \cdot z`, a Hessian-vector product that costs one more backward pass.
    ``probes`` replaces the random vectors: one list per sample, with one tensor per parameter
    (``samples`` is then the number of lists).
    """
    params = list(params)
    if probes is None:
        check_range("samples", samples, 1)
    count = samples if probes is None else len(probes)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    total = [torch.zeros_like(p) for p in params]
    for i in range(count):
        z = list(probes[i]) if probes is not None else [
            torch.randint(0, 2, p.shape, generator=generator, device=p.device).to(p.dtype) * 2 - 1 for p in params]
        hz = torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=i < count - 1, allow_unused=True)
        for acc, v, h in zip(total, z, hz):
            if h is not None:  # None: this parameter's gradient does not depend on the parameters
                acc.addcmul_(v, h)
    return [t / count for t in total]
