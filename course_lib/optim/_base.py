"""The shared machinery of course_lib's optimizers: everything except the math.

Every optimizer in :mod:`course_lib.optim` is a :class:`torch.optim.Optimizer` subclass built on
:class:`CourseOptimizer`. The base class does the bookkeeping that is the same for all of them:

* checks hyperparameters when a param group is added (:func:`check_range` raises ``ValueError``
  naming the argument and its allowed range), including groups added later with
  ``add_param_group`` and per-group overrides;
* evaluates the closure (with gradients enabled) and returns its loss;
* loops over param groups, skips parameters whose ``grad`` is ``None``, rejects sparse gradients
  (``RuntimeError``);
* negates the gradient when ``maximize=True`` (so the math only ever descends);
* creates each parameter's state lazily on its first step, and counts that parameter's steps in
  ``state["step"]`` (a Python ``int``; state values are tensors or plain numbers, so
  ``torch.load(..., weights_only=True)`` reads a saved ``state_dict``);
* picks the implementation of the update: the plain per-tensor loop, a tiled loop on the CPU, or
  a multi-tensor ``torch._foreach_*`` kernel (see "Fast paths" below);
* accepts torch's ``capturable``, ``differentiable`` and ``fused`` arguments at their defaults and
  raises ``ValueError`` for the features behind them (CUDA-graph capture, differentiating through
  the step, fused kernels), which course_lib does not implement;
* loads a ``state_dict`` saved by the matching :mod:`torch.optim` optimizer (see
  :meth:`CourseOptimizer.load_state_dict`).

How a subclass plugs in
-----------------------
A subclass writes its update rule as a module-level function on one tensor, in place::

    def adam_update(param, grad, state, *, step, lr, beta1, ...) -> None

and fills in these hooks:

``validate(group)``
    Check the group's hyperparameters with :func:`check_range` (call ``super().validate``,
    which checks ``lr``).
``init_state(param, group) -> dict``
    The initial state of one parameter (tensors or numbers); ``"step"`` is added by the base.
``update(param, grad, state, group)``
    Read the hyperparameters from ``group`` and call the update function. ``grad`` is already
    negated for ``maximize``; ``state["step"]`` is already the number of this step (1, 2, ...).
``update_foreach(params, grads, states, group)`` (optional)
    The same update for lists of tensors that share one device and dtype, written with
    ``torch._foreach_*`` ops.
``tileable`` (class attribute)
    ``True`` when the update is elementwise, so that running it on slices of a tensor gives
    exactly the same result as running it on the whole tensor (Adam, SGD, RMSprop, ...).
    Updates that need a whole tensor at once (a norm per tensor as in LAMB or LARS, factored
    second moments as in Adafactor, orthogonalisation as in Muon) or change a number in the
    state (NAdam's running product) set it to ``False``.

Optimizers that need more than one tensor at a time override
``step_group(group, params, grads, states, **kwargs)``, which receives every parameter of a group
that has a gradient (with its gradient and its state) and may do whole-group passes, e.g. a global
norm first and then the per-tensor updates. Keyword arguments given to ``step()`` (for example a
batch size, as Sophia's step takes) are passed on to ``step_group``. Methods that are not steps
(schedule-free's ``train()``/``eval()``, Sophia's Hessian refresh) are ordinary methods of the
subclass.

Fast paths
----------
``foreach=False`` runs ``update`` on one whole tensor after another. ``foreach=True`` runs
``update_foreach`` on all tensors of a group at once where the optimizer has one (and otherwise
does what ``None`` does). ``foreach=None``
(the default) picks what measures faster on the device: on an accelerator the foreach kernels
(one launch per operation instead of one per operation and tensor); on the CPU the tiled loop,
which runs the same ``update`` on slices of ``tile_size`` elements so that the intermediate
results of one slice stay in the cache instead of making a round trip to main memory. The tiled
loop calls the very same update function, so its results are bitwise equal to the plain loop; it
also never allocates a temporary as large as a whole tensor. ``benchmarks/bench_optim_step.py``
measures the three paths against torch's. One caveat: on a machine with more busy processes than
cores, every multi-threaded path slows down, and the tiled loop (more, smaller operations) the most;
``torch.set_num_threads(1)`` helps all of them there.

The layout (validation in the constructor, lazy state, the math in a functional kernel with a
single-tensor and a multi-tensor version) follows ``torch/optim/adam.py``; splitting the bookkeeping
from a small per-tensor update function follows fastai's ``Optimizer`` and its stepper functions.
"""

from __future__ import annotations

import math
import numbers
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CourseOptimizer", "Params", "State", "check_range", "check_betas"]

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


class CourseOptimizer(torch.optim.Optimizer, metaclass=ABCMeta):
    """Base class of course_lib's optimizers; see the module docstring for how to subclass it."""

    #: The update is elementwise: running it on slices equals running it on the whole tensor.
    tileable: bool = False
    #: Number of elements per slice in the tiled CPU loop (2 MiB of float32 per tensor).
    tile_size: int = 2**19

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as torch does (filling in the defaults), then check its hyperparameters."""
        super().add_param_group(param_group)
        self.validate(self.param_groups[-1])

    def validate(self, group: dict[str, Any]) -> None:
        """Check one group's hyperparameters; subclasses extend this."""
        check_range("lr", group["lr"])
        self._check_torch_only_features(group)

    def _check_torch_only_features(self, group: dict[str, Any]) -> None:
        """Reject the non-default values of torch's ``capturable``, ``differentiable`` and ``fused``."""
        name = type(self).__name__
        torch_twin = f"torch.optim.{name}" if hasattr(torch.optim, name) else "a torch.optim optimizer"
        if group.get("capturable", False):
            raise ValueError(f"capturable must be False: {name} does not support CUDA-graph capture; "
                             f"use {torch_twin}(capturable=True)")
        if group.get("differentiable", False):
            raise ValueError(f"differentiable must be False: {name} steps under torch.no_grad(); "
                             f"use {torch_twin}(differentiable=True) to differentiate through a step")
        if group.get("fused", None):
            raise ValueError(f"fused must be None or False: {name} has no fused kernel; use foreach=True "
                             f"(one multi-tensor kernel per operation) or {torch_twin}(fused=True)")

    def init_state(self, param: Tensor, group: dict[str, Any]) -> State:
        """The initial state of ``param``; optimizers without state keep this default."""
        return {}

    @abstractmethod
    def update(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        """Apply this optimizer's update to one tensor ``param`` in place."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state as :meth:`torch.optim.Optimizer.load_state_dict` does, and also accept torch's.

        On top of torch's loading (which matches parameters by position and moves floating-point
        state to each parameter's device and dtype):

        * state that was saved as integer codes (8-bit moments) keeps its integer dtype;
        * ``step`` becomes a Python ``int``: torch keeps it as a tensor; a state without ``step``
          (torch's SGD does not count steps) gets :meth:`missing_step`;
        * :meth:`adopt_state` converts what else a subclass stores differently from torch;
        * a group that lacks one of this optimizer's hyperparameters (a state saved by an older
          torch, say) takes its default.

        So a run started with ``torch.optim.Adam`` continues with ``course_lib.optim.Adam`` on the
        same trajectory.
        """
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for saved_id, param in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if not saved or param not in self.state:
                continue
            state = self.state[param]
            for key, value in saved.items():
                if key != "step" and isinstance(value, Tensor) and not value.is_floating_point():
                    state[key] = state[key].to(value.dtype)
            step = state.get("step")
            state["step"] = self.missing_step(state) if step is None else int(step)
            self.adopt_state(state)

    def missing_step(self, state: State) -> int:
        """The step count to assume for a loaded state that has none.

        0 by default: the count restarts, which is right for an update that does not read it. An
        optimizer whose first step is special (SGD starts its momentum buffer there) overrides this.
        """
        return 0

    def adopt_state(self, state: State) -> None:
        """Convert one loaded state from torch's form to this optimizer's, in place (default: nothing)."""

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
            state["step"] += 1
            params.append(param)
            grads.append(-param.grad if group.get("maximize", False) else param.grad)
            states.append(state)
        return params, grads, states

    def step_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[State]
    ) -> None:
        """Update every parameter of one group with the implementation :meth:`implementation` picks."""
        path = self.implementation(group, params[0].device)
        if path == "foreach":
            for p, g, s in _by_device_and_dtype(params, grads, states):
                self.update_foreach(p, g, s, group)  # type: ignore[attr-defined]
        elif path == "tiled":
            for param, grad, state in zip(params, grads, states):
                self._update_tiled(param, grad, state, group)
        else:
            for param, grad, state in zip(params, grads, states):
                self.update(param, grad, state, group)

    def implementation(self, group: dict[str, Any], device: torch.device) -> str:
        """Which loop runs the update: ``"loop"``, ``"tiled"`` or ``"foreach"`` (see the module doc)."""
        foreach = group.get("foreach")
        if foreach is False:
            return "loop"
        if hasattr(self, "update_foreach") and (foreach or device.type != "cpu"):
            return "foreach"
        if self.tileable and device.type == "cpu":
            return "tiled"
        return "loop"

    def _update_tiled(self, param: Tensor, grad: Tensor, state: State, group: dict[str, Any]) -> None:
        """Run ``update`` on consecutive slices of ``tile_size`` elements of one tensor."""
        tensors = [param, grad] + [v for v in state.values() if isinstance(v, Tensor)]
        n = param.numel()
        same_layout = all(t.is_contiguous() and t.numel() == n for t in tensors)
        if n <= self.tile_size or not same_layout:
            self.update(param, grad, state, group)
            return
        flat_param, flat_grad = param.view(-1), grad.view(-1)
        flat_state = {k: v.view(-1) for k, v in state.items() if isinstance(v, Tensor)}
        for start in range(0, n, self.tile_size):
            tile = slice(start, start + self.tile_size)
            tile_state = {**state, **{k: v[tile] for k, v in flat_state.items()}}
            self.update(flat_param[tile], flat_grad[tile], tile_state, group)


def _by_device_and_dtype(
    params: list[Tensor], grads: list[Tensor], states: list[State]
) -> Iterable[tuple[list[Tensor], list[Tensor], list[State]]]:
    """Split the lists into runs that share a device and dtype, as foreach kernels require."""
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list, list, list]] = {}
    for param, grad, state in zip(params, grads, states):
        p, g, s = buckets.setdefault((param.device, param.dtype), ([], [], []))
        p.append(param)
        g.append(grad)
        s.append(state)
    return buckets.values()
