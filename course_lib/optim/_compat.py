"""Speaking torch's dialect: its feature flags, and state dicts saved by :mod:`torch.optim`.

Mixin of :class:`~course_lib.optim.CourseOptimizer`, so that each optimizer's file is its math.

* ``capturable``, ``differentiable`` and ``fused`` are accepted at torch's defaults; other values
  raise ``ValueError`` naming the flag and what to use instead (course_lib implements neither
  CUDA-graph capture nor differentiating through a step nor fused kernels).
* :meth:`TorchCompat.load_state_dict` also loads a state saved by the matching ``torch.optim``
  optimizer, so a run started with ``torch.optim.Adam`` continues with ``course_lib.optim.Adam``
  on the same trajectory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["TorchCompat"]


class TorchCompat:
    """torch's flags and state dicts for a :class:`torch.optim.Optimizer` subclass."""

    def check_torch_flags(self, group: dict[str, Any]) -> None:
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state as :meth:`torch.optim.Optimizer.load_state_dict` does, and also accept torch's.

        On top of torch's loading (which matches parameters by position and moves floating-point
        state to each parameter's device and dtype):

        * state that was saved as integer codes (8-bit moments) keeps its integer dtype;
        * ``step`` becomes a Python ``int``: torch keeps it as a tensor. A state without ``step``
          (torch's SGD does not count steps) counts as one step taken if it holds any buffer, as
          no step taken if it is empty;
        * :meth:`adopt_state` converts what else a subclass stores differently from torch;
        * a group that lacks one of this optimizer's hyperparameters (a state saved by an older
          torch, say) takes its default.
        """
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]  # type: ignore[attr-defined]
        super().load_state_dict(state_dict)  # type: ignore[misc]
        for group in self.param_groups:  # type: ignore[attr-defined]
            for key, value in self.defaults.items():  # type: ignore[attr-defined]
                group.setdefault(key, value)
        for saved_id, param in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if not saved or param not in self.state:  # type: ignore[attr-defined]
                continue
            state = self.state[param]  # type: ignore[attr-defined]
            for key, value in saved.items():
                if key != "step" and isinstance(value, Tensor) and not value.is_floating_point():
                    state[key] = state[key].to(value.dtype)
            step = state.get("step")
            state["step"] = int(step) if step is not None else int(any(k != "step" for k in state))
            self.adopt_state(state, param, saved)

    def adopt_state(self, state: dict[str, Any], param: Tensor, saved: dict[str, Any]) -> None:
        """Convert one loaded state of ``param`` to this optimizer's form, in place (default: nothing).

        ``saved`` is that state as it was saved, before torch's loading cast every floating-point
        tensor to the parameter's dtype: an optimizer whose buffers keep a dtype of their own (8-bit
        Adam's float32 scales) takes them from there. Also for numbers torch keeps as tensors.
        """
