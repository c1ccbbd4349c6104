r"""8-bit Adam and AdamW (Dettmers et al., 2022): Adam whose two moments are stored in one byte each.

Adam keeps two float32 numbers per parameter, 8 bytes; these keep two ``uint8`` codes and one
float32 scale per block of 256 values, about 2.03 bytes (see :mod:`.quantization`). Each step
dequantizes the moments, takes an ordinary Adam step in float32, and quantizes them again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import CourseOptimizer, State, check_range
from .adam import adam_update
from .quantization import dequantize_blockwise, quantize_blockwise, signed_map, unsigned_map

__all__ = ["Adam8bit", "AdamW8bit", "adam8bit_update"]


def adam8bit_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    step: int,
    blocksize: int,
    **adam: Any,
) -> None:
    r"""One Adam step on ``param`` whose moments live in 8 bits; ``adam`` holds Adam's hyperparameters.

    With :math:`Q` block-wise quantization (signed map for :math:`m`, unsigned for :math:`v`)
    and :math:`Q^{-1}` its inverse:

    .. math::

        m, v &\leftarrow Q^{-1}(m_{8}),\ Q^{-1}(v_{8}) \\
        \theta, m, v &\leftarrow \text{Adam step}(\theta, g_t, m, v)
            \quad\text{(see } \texttt{adam\_update}\text{)} \\
        m_{8}, v_{8} &\leftarrow Q(m),\ Q(v)

    Only the stored moments are rounded; the step itself is computed in float32 from the
    dequantized moments and the exact gradient, so the rounding error of one step does not
    compound within that step (in float64 for a float64 parameter).
    """
    device, dtype = param.device, torch.promote_types(param.dtype, torch.float32)
    moments = {
        "exp_avg": dequantize_blockwise(state["exp_avg"], state["exp_avg_absmax"], signed_map(device), blocksize),
        "exp_avg_sq": dequantize_blockwise(state["exp_avg_sq"], state["exp_avg_sq_absmax"],
                                           unsigned_map(device), blocksize),
    }
    moments = {name: value.to(dtype) for name, value in moments.items()}
    adam_update(param, grad.to(dtype), moments, step=step, amsgrad=False, **adam)
    for name, code in (("exp_avg", signed_map(device)), ("exp_avg_sq", unsigned_map(device))):
        q, absmax = quantize_blockwise(moments[name], code, blocksize)
        state[name].copy_(q)
        state[name + "_absmax"].copy_(absmax)


class Adam8bit(CourseOptimizer):
    r"""Adam with block-wise 8-bit moments (see :func:`adam8bit_update`).

    Takes :class:`torch.optim.Adam`'s arguments (without ``amsgrad``) and two of its own.
    Tensors with fewer than ``min_8bit_size`` elements (biases, norms) keep full-precision
    moments and take exactly :class:`~course_lib.optim.Adam`'s step: quantizing them would save
    little memory.

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta \ge 0`.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        weight_decay: :math:`\lambda \ge 0`; an L2 penalty added to the gradient, unless
            ``decoupled_weight_decay=True`` (then this is AdamW8bit).
        maximize: ascend the objective instead of descending it.
        decoupled_weight_decay: shrink the weights directly instead of adding an L2 gradient.
        min_8bit_size: smallest number of elements whose moments are quantized (default 4096,
            as in bitsandbytes).
        blocksize: elements per quantization block, each with its own float32 absmax.

    State per quantized parameter: ``exp_avg`` and ``exp_avg_sq`` (``uint8`` codes, the
    parameter's shape) and ``exp_avg_absmax``, ``exp_avg_sq_absmax`` (float32, one per block).
    Small parameters have float ``exp_avg`` and ``exp_avg_sq`` (float32 at least).

    bitsandbytes' ``Adam8bit`` shrinks the weights (decoupled decay) even when called Adam;
    this one follows :class:`torch.optim.Adam`.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        min_8bit_size: int = 4096,
        blocksize: int = 256,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay, min_8bit_size=min_8bit_size,
                        blocksize=blocksize)
        super().__init__(params, defaults)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("min_8bit_size", group["min_8bit_size"])
        check_range("blocksize", group["blocksize"], 1)
        for name in ("min_8bit_size", "blocksize"):
            if not isinstance(group[name], int):
                raise ValueError(f"{name} must be an integer, got {group[name]!r}")

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        if param.numel() < group["min_8bit_size"]:
            dtype = torch.promote_types(param.dtype, torch.float32)
            return {"exp_avg": torch.zeros_like(param, dtype=dtype),
                    "exp_avg_sq": torch.zeros_like(param, dtype=dtype)}
        state = {}
        for name, code in (("exp_avg", signed_map(param.device)), ("exp_avg_sq", unsigned_map(param.device))):
            state[name], state[name + "_absmax"] = quantize_blockwise(
                torch.zeros_like(param, dtype=torch.float32), code, group["blocksize"])
        return state

    def adopt_state(self, state: State, param: Tensor, saved: State) -> None:
        # torch's loading casts floating-point state to the parameter's dtype; these keep their own
        for key, value in saved.items():
            if key.endswith("_absmax"):
                state[key] = value.to(param.device, torch.float32)
            elif key in ("exp_avg", "exp_avg_sq") and value.is_floating_point():
                state[key] = value.to(param.device, torch.promote_types(param.dtype, torch.float32))

    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        adam = dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"])
        if "exp_avg_absmax" in state:
            adam8bit_update(param, grad, state, step=state["step"], blocksize=group["blocksize"], **adam)
        else:
            adam_update(param, grad.to(state["exp_avg"].dtype), state, step=state["step"], amsgrad=False,
                        **adam)


class AdamW8bit(Adam8bit):
    r"""8-bit AdamW: ``Adam8bit(..., decoupled_weight_decay=True)`` with torch's AdamW default
    ``weight_decay=1e-2``."""

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        maximize: bool = False,
        min_8bit_size: int = 4096,
        blocksize: int = 256,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize=maximize, decoupled_weight_decay=True,
                         min_8bit_size=min_8bit_size, blocksize=blocksize)
