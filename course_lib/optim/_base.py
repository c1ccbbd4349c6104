"""The bookkeeping every course_lib optimizer shares; each optimizer's own file holds only its math.

:class:`CourseOptimizer` is a :class:`torch.optim.Optimizer` subclass. For every optimizer it:

* checks hyperparameters whenever a param group is added (``add_param_group`` and groups given
  to the constructor, per-group overrides included). The hyperparameters many optimizers share
  are checked here, by name: ``lr``, ``weight_decay`` and a numeric ``eps`` must be ``>= 0``,
  ``momentum`` in ``[0, 1)``, ``betas`` a pair in ``[0, 1)``. :func:`check_range` raises
  ``ValueError`` naming the argument and its allowed range; a subclass checks its own extras in
  :meth:`~CourseOptimizer.validate`;
* evaluates the closure (with gradients enabled) and returns its loss;
* skips parameters whose ``grad`` is ``None``, rejects sparse gradients, and negates the
  gradient for ``maximize=True`` (so the math only ever descends);
* creates each parameter's state on its first step (:meth:`~CourseOptimizer.init_state`) and
  counts that parameter's steps in ``state["step"]`` (a Python ``int``; state values are tensors
  or numbers, so ``torch.load(..., weights_only=True)`` reads a saved ``state_dict``);
* applies **one rule for state that a hyperparameter switches on later**: a buffer listed in
  :attr:`~CourseOptimizer.optional_state` (momentum's buffer, say) whose hyperparameter becomes
  non-zero after a parameter's first step is created then, by ``init_state``, exactly as it would
  have been on a first step (zeros), and the average builds up from there. A buffer that exists
  stays in the state while its hyperparameter is off, and is used again when it comes back.

Two mixins hold what is not bookkeeping either: :mod:`._fast` picks how the update runs (a loop,
a tiled loop or multi-tensor kernels; opt-in per class), and :mod:`._compat` speaks torch's
dialect (its ``capturable``/``differentiable``/``fused`` flags, loading torch's state dicts).

How a subclass plugs in
-----------------------
Write the update rule as a module-level function on one tensor, in place::

    def adam_update(param, grad, state, *, step, lr, beta1, ...) -> None

and fill in:

``__init__``
    torch's argument names, order and defaults; call ``super().__init__(params, defaults)``.
``validate(group)`` (optional)
    Check hyperparameters that are not shared (call ``super().validate(group)`` first).
``init_state(param, group) -> dict``
    The initial state of one parameter; ``"step"`` is added by the base. Use :func:`zeros`.
``update(param, grad, state, group)``
    Read the hyperparameters from ``group`` and call the update function. ``grad`` is already
    negated for ``maximize``; ``state["step"]`` is already the number of this step (1, 2, ...).

Optimizers that need more than one tensor at a time (a global norm, a per-group schedule)
override ``step_group(group, params, grads, states, **kwargs)``, which receives every parameter of
a group that has a gradient; keyword arguments of ``step()`` (Sophia's batch size) reach it.

The layout (validation in the constructor, lazy state, the math in a functional kernel) follows
``torch/optim/adam.py``; splitting the bookkeeping from a small per-tensor update function follows
fastai's ``Optimizer`` and its stepper functions.
"""

from __future__ import annotations

import math
import numbers
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._compat import TorchCompat
from ._fast import FastPaths

__all__ = ["CourseOptimizer", "Params", "State", "check_range", "check_betas", "zeros"]

State = dict[str, Any]
Params = Iterable[Tensor] | Iterable[dict[str, Any]]


def check_range(
    name: str,
    value: float | Tensor,
    low: float = 0.0,
    high: float = math.inf,
    *,
    high_inclusive: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``low <= value < high`` (``<= high`` if inclusive).

    ``value`` may be a number or a one-element tensor (a tensor learning rate). NaN is rejected.

    >>> check_range("lr", -1.0)
    Traceback (most recent call last):
    ...
    ValueError: lr must be in [0.0, inf), got -1.0
    """
    interval = f"[{low}, {high}{']' if high_inclusive else ')'}"
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a 1-element tensor in {interval}, "
                             f"got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number in {interval}, got {value!r}")
    inside = low <= value <= high if high_inclusive else low <= value < high
    if not inside:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_betas(betas: tuple[float, float]) -> None:
    """Check Adam-style ``betas = (beta1, beta2)``: a pair, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) with each in [0.0, 1.0), got {betas!r}")
    check_range("betas[0]", betas[0], 0.0, 1.0)
    check_range("betas[1]", betas[1], 0.0, 1.0)


def zeros(param: Tensor) -> Tensor:
    """A state buffer for ``param``: zeros of its shape, dtype, device and memory layout."""
    return torch.zeros_like(param, memory_format=torch.preserve_format)


class CourseOptimizer(TorchCompat, FastPaths, torch.optim.Optimizer, metaclass=ABCMeta):
    """Base class of course_lib's optimizers; see the module docstring for how to subclass it."""

    #: State buffers that a hyperparameter switches on: ``{"momentum_buffer": "momentum"}`` means
    #: the buffer exists while ``group["momentum"]`` is non-zero (see the module docstring).
    optional_state: ClassVar[dict[str, str]] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as torch does (filling in the defaults), then check its hyperparameters."""
        super().add_param_group(param_group)
        self.validate(self.param_groups[-1])

    def validate(self, group: dict[str, Any]) -> None:
        """Check one group's shared hyperparameters; subclasses check their own after calling this."""
        check_range("lr", group["lr"])
        for name in ("weight_decay", "eps"):
            if isinstance(group.get(name), (numbers.Real, Tensor)):
                check_range(name, group[name])
        if "momentum" in group:
            check_range("momentum", group["momentum"], 0.0, 1.0)
        if "betas" in group:
            check_betas(group["betas"])
        self.check_torch_flags(group)

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        """The initial state of ``param``; optimizers without state keep this default."""
        return {}

    @abstractmethod
    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        """Apply this optimizer's update to one tensor ``param`` in place."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, **kwargs: Any) -> Tensor | None:
        """Take one optimization step; return the closure's loss (``None`` without a closure).

        Args:
            closure: re-evaluates the model and returns the loss; it is called with gradients
                enabled, before the update.
            **kwargs: extra arguments for optimizers whose ``step_group`` takes them.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = self._params_with_grad(group)
            if params:
                self.step_group(group, params, grads, states, **kwargs)
        return loss

    def _params_with_grad(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[State]]:
        """The group's parameters that have a gradient, their (sign-adjusted) gradients and states."""
        switched_on = [key for key, hyper in self.optional_state.items() if group[hyper]]
        params, grads, states = [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; use dense gradients "
                    "(e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam"
                )
            state = self.state[param]
            if not state:
                state["step"] = 0
                state.update(self.init_state(param, group))
            elif any(key not in state for key in switched_on):  # the rule for buffers switched on later
                fresh = self.init_state(param, group)
                state.update({key: fresh[key] for key in switched_on if key not in state})
            state["step"] += 1
            params.append(param)
            grads.append(-param.grad if group.get("maximize", False) else param.grad)
            states.append(state)
        return params, grads, states
