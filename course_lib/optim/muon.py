"""Muon (Keller Jordan et al., 2024): momentum, orthogonalized by a Newton-Schulz iteration.

Muon is for the weight matrices of hidden layers. The other parameters (embeddings, the
output head, biases, normalization gains) are left to AdamW: :class:`MuonWithAdamW` runs both
in one optimizer, on the groups that :func:`muon_param_groups` makes.

The semantics and defaults are those of :class:`torch.optim.Muon` (torch >= 2.9), which
follows Keller Jordan's reference code (github.com/KellerJordan/Muon); this module also runs
on older versions of torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._base import CourseOptimizer, State, check_range, zeros
from .adam import adam_update

__all__ = [
    "NS_COEFFICIENTS",
    "Muon",
    "MuonWithAdamW",
    "adjusted_lr",
    "muon_param_groups",
    "muon_update",
    "newton_schulz",
]

#: The quintic's coefficients (a, b, c) from Keller Jordan's Muon, also torch's default.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def newton_schulz(
    matrix: Tensor,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    steps: int = 5,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    r"""Replace the singular values of a matrix by values near 1, keeping its singular vectors.

    For :math:`G = U \Sigma V^\top` the result is approximately :math:`U V^\top`, the
    orthogonal matrix nearest to :math:`G`. With :math:`X_0 = G / \max(\lVert G\rVert_F,
    \epsilon)` (so every singular value is at most 1), each of the ``steps`` iterations is

    .. math::

        A = X X^\top, \qquad X \leftarrow a X + (b A + c A^2)\, X,

    which maps each singular value :math:`s` to :math:`a s + b s^3 + c s^5` and leaves the
    singular vectors alone. The default coefficients make the polynomial steep at 0, so
    small singular values grow fast; the price is that the values do not settle at 1 but
    oscillate in roughly [0.7, 1.2], which does not hurt training. The work is done in
    ``dtype`` (bfloat16, as in torch and the reference code) on the wide orientation of the
    matrix (:math:`A` is the smaller Gram matrix), and the result is cast back.
    """
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(matrix.dtype)


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    r"""The learning rate for an ``(m, n)`` matrix, as in :class:`torch.optim.Muon`.

    ``None`` or ``"original"`` (Keller Jordan): :math:`\eta \sqrt{\max(1, m/n)}`.
    ``"match_rms_adamw"`` (Moonshot AI, "Muon is Scalable for LLM Training", 2025):
    :math:`0.2\, \eta \sqrt{\max(m, n)}`, which gives the update the RMS of a typical AdamW
    update, so that AdamW's learning rate and weight decay can be reused.
    """
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def muon_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    ns_dtype: torch.dtype,
) -> None:
    r"""One Muon step on the matrix ``param``, in place.

    With learning rate :math:`\eta`, decoupled weight decay :math:`\lambda` and momentum
    :math:`\mu`:

    .. math::

        B_t &\leftarrow \mu B_{t-1} + (1 - \mu) g_t \\
        D_t &\leftarrow (1 - \mu) g_t + \mu B_t \ \text{(Nesterov), else } B_t \\
        O_t &\leftarrow \mathrm{NS}(D_t) \approx U V^\top \text{ where } D_t = U \Sigma V^\top \\
        \theta_t &\leftarrow (1 - \eta\lambda)\,\theta_{t-1} - \eta' O_t

    :math:`\mathrm{NS}` is :func:`newton_schulz` and :math:`\eta'` is
    :func:`adjusted_lr`. Orthogonalization throws away the scale of :math:`D_t`, so
    :math:`B_t = \mu B_{t-1} + g_t` (as torch's documentation writes it) gives the same step:
    both buffers start at 0 and differ by the factor :math:`1/(1-\mu)`. Every direction of
    the update gets about the same size, however small its singular value was in the
    momentum.
    """
    buf = state["momentum_buffer"]
    buf.lerp_(grad, 1 - momentum)
    direction = grad.lerp(buf, momentum) if nesterov else buf
    orthogonal = newton_schulz(direction, ns_coefficients, ns_steps, eps, ns_dtype)
    param.mul_(1 - lr * weight_decay)
    param.add_(orthogonal, alpha=-adjusted_lr(lr, adjust_lr_fn, param.shape))


class Muon(CourseOptimizer):
    r"""Muon, for 2-D parameters; a drop-in for :class:`torch.optim.Muon` (see :func:`muon_update`).

    Args:
        params: parameters or param groups; every parameter must be a matrix.
        lr: learning rate :math:`\eta \ge 0` (scaled per matrix, see :func:`adjusted_lr`).
        weight_decay: decoupled weight decay :math:`\lambda \ge 0`.
        momentum: :math:`\mu \in [0, 1)`.
        nesterov: orthogonalize the look-ahead :math:`(1-\mu) g_t + \mu B_t`.
        ns_coefficients: :math:`(a, b, c)` of the Newton-Schulz polynomial.
        eps: :math:`\epsilon \ge 0`, the smallest norm divided by in :func:`newton_schulz`.
        ns_steps: number of Newton-Schulz iterations, in [0, 100).
        adjust_lr_fn: ``None``/``"original"`` or ``"match_rms_adamw"`` (see :func:`adjusted_lr`).
        ns_dtype: the floating dtype the iteration runs in (torch always uses bfloat16; a
            lesson may use float64 to see the exact polynomial at work).
        maximize: ascend the objective instead of descending it.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: torch.dtype = torch.bfloat16,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype, maximize=maximize)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        coefficients = group["ns_coefficients"]
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
            raise ValueError(f"ns_coefficients must be three numbers (a, b, c), got {coefficients!r}")
        for name, value in zip("abc", coefficients):
            check_range(f"ns_coefficients[{name}]", value, -math.inf, math.inf)
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 100:
            raise ValueError(f"ns_steps must be an integer in [0, 100), got {steps!r}")
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {group['adjust_lr_fn']!r}")
        if not isinstance(group["ns_dtype"], torch.dtype) or not group["ns_dtype"].is_floating_point:
            raise ValueError(f"ns_dtype must be a floating torch.dtype, got {group['ns_dtype']!r}")
        for param in group["params"]:
            if param.ndim != 2:
                raise ValueError(f"params of Muon must be matrices (2-D), got one of shape "
                                 f"{tuple(param.shape)}; give the others to AdamW (see MuonWithAdamW)")

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        return {"momentum_buffer": zeros(param)}

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        muon_update(param, grad, state, lr=float(group["lr"]), weight_decay=group["weight_decay"],
                    momentum=group["momentum"], nesterov=group["nesterov"],
                    ns_coefficients=tuple(group["ns_coefficients"]), ns_steps=group["ns_steps"],
                    eps=group["eps"], adjust_lr_fn=group["adjust_lr_fn"],
                    ns_dtype=group["ns_dtype"])


class MuonWithAdamW(Muon):
    r"""Muon for the groups with ``use_muon=True``, AdamW for the groups with ``use_muon=False``.

    One optimizer for a whole model, as Keller Jordan's ``MuonWithAuxAdam``: one ``step``,
    one ``state_dict``, and LR schedulers see every group. Every group must say which
    optimizer it uses; :func:`muon_param_groups` makes the two groups::

        opt = MuonWithAdamW(muon_param_groups(model), lr=0.02)

    A Muon group takes its missing hyperparameters from the arguments of :class:`Muon`; an
    AdamW group takes ``lr``, ``betas``, ``eps`` and ``weight_decay`` from the ``adamw_*``
    arguments (the defaults of the reference code's AdamW part) and steps with
    :func:`course_lib.optim.adam.adam_update` (decoupled decay).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        adamw_lr: float | Tensor = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        adamw_weight_decay: float = 0.0,
        ns_dtype: torch.dtype = torch.bfloat16,
        maximize: bool = False,
    ) -> None:
        check_range("adamw_lr", adamw_lr)
        if not isinstance(adamw_betas, (tuple, list)) or len(adamw_betas) != 2:
            raise ValueError(f"adamw_betas must be a pair (beta1, beta2) with each in [0.0, 1.0), got {adamw_betas!r}")
        check_range("adamw_betas[0]", adamw_betas[0], 0.0, 1.0)
        check_range("adamw_betas[1]", adamw_betas[1], 0.0, 1.0)
        check_range("adamw_eps", adamw_eps)
        check_range("adamw_weight_decay", adamw_weight_decay)
        self.adamw_defaults = dict(lr=adamw_lr, betas=adamw_betas, eps=adamw_eps,
                                   weight_decay=adamw_weight_decay)
        super().__init__(params, lr, weight_decay, momentum, nesterov, ns_coefficients, eps,
                         ns_steps, adjust_lr_fn, ns_dtype=ns_dtype, maximize=maximize)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``use_muon`` is required, an AdamW group gets the ``adamw_*`` defaults."""
        if param_group.get("use_muon") not in (True, False):
            raise ValueError("use_muon must be set to True or False in every param group of "
                             "MuonWithAdamW (muon_param_groups(model) makes such groups)")
        if not param_group["use_muon"]:
            param_group = {**self.adamw_defaults, **param_group}
        super().add_param_group(param_group)

    def validate(self, group: dict[str, Any]) -> None:
        if group["use_muon"]:
            super().validate(group)
        else:  # an AdamW group: the shared checks only (lr, betas, eps, weight_decay)
            CourseOptimizer.validate(self, group)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        if group["use_muon"]:
            return super().init_state(param, group)
        return {"exp_avg": zeros(param), "exp_avg_sq": zeros(param)}

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        if group["use_muon"]:
            super().update(param, grad, state, group)
            return
        beta1, beta2 = group["betas"]
        adam_update(param, grad, state, step=state["step"], lr=float(group["lr"]),
                    beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                    weight_decay=group["weight_decay"], amsgrad=False,
                    decoupled_weight_decay=True)


def muon_param_groups(model: nn.Module, exclude: Iterable[nn.Module] = ()) -> list[dict[str, Any]]:
    """Two groups for :class:`MuonWithAdamW`: hidden weight matrices, and everything else.

    Muon gets the weight matrix of every ``nn.Linear`` layer that is not inside a module of
    ``exclude``; AdamW gets the rest: embeddings, biases, normalization gains, convolution
    kernels, and the excluded modules. Pass the output head in ``exclude`` unless its weight is
    tied to the embedding (a tied matrix belongs to its first owner in
    ``model.named_parameters()``, the embedding). Frozen parameters are left out.
    """
    excluded = {id(p) for module in exclude for p in module.parameters()}
    hidden, others = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        is_hidden = isinstance(owner, nn.Linear) and param.ndim == 2 and id(param) not in excluded
        (hidden if is_hidden else others).append(param)
    return [{"params": hidden, "use_muon": True}, {"params": others, "use_muon": False}]
