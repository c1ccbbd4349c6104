"""What an optimizer costs in memory: the bytes of its state, per parameter.

Defined in lesson 08b (every optimizer on one task), where the number stands next to each
optimizer's loss and step time. The state is what the optimizer keeps between steps (momentum
buffers, second moments, quantized codes and their scales, slow weights, ...); parameters and
gradients are not counted, since every optimizer needs those.

``state_bytes`` counts every tensor it finds in ``optimizer.state``, however nested (dicts, lists,
tuples), each tensor once, and adds the state of a wrapped optimizer (an ``optimizer`` attribute
that is itself an optimizer, as :class:`course_lib.optim.Lookahead` has). Numbers kept as Python
objects (course_lib's step counters) take no tensor memory and are not counted; torch's own
optimizers keep their step counter as a one-element tensor, which is counted. The state of most
optimizers is created on the first step, so measure after one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["state_tensors", "state_bytes", "param_count", "state_bytes_per_param"]


def _optimizers(optimizer: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """``optimizer`` and the optimizers it wraps (``optimizer.optimizer``, recursively)."""
    chain = [optimizer]
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer) and inner not in chain:
        chain.append(inner)
        inner = getattr(inner, "optimizer", None)
    return chain


def _walk(value: Any, found: dict[int, Tensor]) -> None:
    if isinstance(value, Tensor):
        found.setdefault(id(value), value)
    elif isinstance(value, dict):
        for item in value.values():
            _walk(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _walk(item, found)


def state_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Every tensor of the optimizer's state (and of the optimizers it wraps), each once."""
    found: dict[int, Tensor] = {}
    for opt in _optimizers(optimizer):
        for state in opt.state.values():
            _walk(state, found)
    return list(found.values())


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of the optimizer's state tensors (``numel * element_size`` of each)."""
    return sum(t.numel() * t.element_size() for t in state_tensors(optimizer))


def param_count(optimizer: torch.optim.Optimizer) -> int:
    """Number of scalar parameters the optimizer updates (each parameter tensor counted once)."""
    seen: dict[int, Tensor] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            seen.setdefault(id(param), param)
    return sum(p.numel() for p in seen.values())


def state_bytes_per_param(optimizer: torch.optim.Optimizer) -> float:
    """:func:`state_bytes` divided by :func:`param_count`: 8.0 for Adam on float32 parameters."""
    count = param_count(optimizer)
    if count == 0:
        raise ValueError("the optimizer has no parameters")
    return state_bytes(optimizer) / count
