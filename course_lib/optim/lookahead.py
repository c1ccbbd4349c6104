"""Lookahead (Zhang, Lucas, Hinton & Ba, 2019, "Lookahead Optimizer: k steps forward, 1 step back")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._base import check_range

__all__ = ["Lookahead", "lookahead_update"]


def lookahead_update(param: Tensor, slow: Tensor, alpha: float) -> None:
    r"""Pull the slow weights towards the fast ones and restart the fast weights there, in place.

    After every :math:`k` steps of the inner optimizer (the fast weights :math:`\theta`):

    .. math::

        \phi &\leftarrow \phi + \alpha\, (\theta - \phi) \\
        \theta &\leftarrow \phi

    The slow weights :math:`\phi` start at the initial weights. With :math:`\alpha = 1` this is
    the inner optimizer alone; with :math:`\alpha = 0` the weights never leave the start.
    """
    slow.lerp_(param, alpha)
    param.copy_(slow)


class Lookahead(torch.optim.Optimizer):
    r"""Wrap any optimizer: every ``k`` of its steps, move the slow weights (see :func:`lookahead_update`).

    The wrapper shares ``param_groups`` with the inner optimizer (the same list of the same
    dicts), so an LR scheduler built on the wrapper changes the inner optimizer's learning
    rates, and so does ``add_param_group``. ``state_dict()`` holds the inner optimizer's
    state dict, the slow weights, ``k``, ``alpha`` and the number of inner steps taken.
    The slow copy of a parameter is taken just before its first step, so it starts at the
    weights the inner optimizer starts from.

    Args:
        optimizer: the inner optimizer (any :class:`torch.optim.Optimizer`).
        k: number of inner steps between two slow updates, an integer >= 1.
        alpha: slow step size :math:`\alpha \in [0, 1]`.

    Example::

        opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-3), k=5, alpha=0.5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.k, self.alpha = _check_k(k), _check_alpha(alpha)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        super().__init__(params, optimizer.defaults)  # torch's bookkeeping (hooks, self.state)
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups
        self.fast_steps = 0

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps only defaults, state and param_groups; a copy needs the rest too.
        return {**super().__getstate__(), "optimizer": self.optimizer, "k": self.k,
                "alpha": self.alpha, "fast_steps": self.fast_steps}

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer (whose groups are this optimizer's)."""
        if "optimizer" not in vars(self):  # torch's __init__ registering the parameters
            super().add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step of the inner optimizer; every ``k``-th also updates the slow weights."""
        with torch.no_grad():
            for param in self._params():
                if param not in self.state:
                    self.state[param] = {"slow": param.detach().clone()}
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            with torch.no_grad():
                for param, state in self.state.items():
                    lookahead_update(param, state["slow"], self.alpha)
        return loss

    def state_dict(self) -> dict[str, Any]:
        index = {id(p): i for i, p in enumerate(self._params())}
        return {
            "optimizer": self.optimizer.state_dict(),
            "slow": {index[id(p)]: state["slow"] for p, state in self.state.items()},
            "k": self.k,
            "alpha": self.alpha,
            "fast_steps": self.fast_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.param_groups = self.optimizer.param_groups  # torch's load makes a new list
        params = self._params()
        self.state = defaultdict(dict)
        for i, slow in state_dict["slow"].items():
            param = params[int(i)]
            self.state[param] = {"slow": slow.to(device=param.device, dtype=param.dtype, copy=True)}
        self.k, self.alpha = _check_k(state_dict["k"]), _check_alpha(state_dict["alpha"])
        self.fast_steps = int(state_dict["fast_steps"])


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer in [1, inf), got {k!r}")
    return k


def _check_alpha(alpha: float) -> float:
    check_range("alpha", alpha, 0.0, 1.0, high_inclusive=True)
    return float(alpha)
