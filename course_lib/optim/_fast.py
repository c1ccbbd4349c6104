"""How an optimizer's update runs over a group's tensors: a loop, a tiled loop, or multi-tensor kernels.

``foreach=False`` runs ``update`` on one whole tensor after another. ``foreach=True`` runs
``update_foreach`` on all tensors of a group at once, where the optimizer has one. ``foreach=None``
(the default) picks what measures faster on the device: the foreach kernels on an accelerator (one
launch per operation instead of one per operation and tensor); on the CPU the tiled loop, which
runs the same ``update`` on slices of ``tile_size`` elements so that the intermediate results of one
slice stay in the cache instead of making a round trip to main memory. The tiled loop calls the very
same update function, so its results are bitwise equal to the plain loop.
``benchmarks/bench_optim_step.py`` measures the paths against torch's.

The fast paths are **opt-in per class**, and only for the math they were written for:

* the foreach path needs an ``update_foreach`` defined by the class that defines ``update`` (or by
  a subclass of it);
* the tiled path needs ``tileable = True`` set by the class that defines ``update`` (or by a
  subclass of it): the update is elementwise, so slices of a tensor give the same result as the
  whole. Updates that need a whole tensor at once (a norm per tensor, factored moments,
  orthogonalisation) or keep a number in the state leave it off.

So a subclass that overrides ``update`` alone (a student's variant of Adam, say) runs its own
``update`` on whole tensors on every device, never its parent's kernels and never on slices.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["FastPaths", "fast_paths"]


@cache
def fast_paths(cls: type) -> frozenset[str]:
    """The fast paths ``cls`` may use: a subset of ``{"foreach", "tiled"}``.

    A path counts only if it is declared by the class that defines ``update`` or by a class
    between it and ``cls`` in the method resolution order.
    """
    mro = cls.__mro__
    owner = next((k for k in mro if "update" in vars(k)), None)
    if owner is None:
        return frozenset()
    own = mro[: mro.index(owner) + 1]
    paths = set()
    if any("update_foreach" in vars(k) for k in own):
        paths.add("foreach")
    if getattr(cls, "tileable", False) and any("tileable" in vars(k) for k in own):
        paths.add("tiled")
    return frozenset(paths)


class FastPaths:
    """Mixin of :class:`~course_lib.optim.CourseOptimizer`: runs ``update`` over a group's tensors."""

    #: The update is elementwise: running it on slices equals running it on the whole tensor.
    tileable: ClassVar[bool] = False
    #: Number of elements per slice in the tiled CPU loop (2 MiB of float32 per tensor).
    tile_size: ClassVar[int] = 2**19

    def step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Any]]) -> None:
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
                self.update(param, grad, state, group)  # type: ignore[attr-defined]

    def implementation(self, group: dict[str, Any], device: torch.device) -> str:
        """Which loop runs the update: ``"loop"``, ``"tiled"`` or ``"foreach"`` (see the module doc)."""
        foreach = group.get("foreach")
        if foreach is False:
            return "loop"
        paths = fast_paths(type(self))
        if "foreach" in paths and (foreach or device.type != "cpu"):
            return "foreach"
        if "tiled" in paths and device.type == "cpu":
            return "tiled"
        return "loop"

    def _update_tiled(self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Run ``update`` on consecutive slices of ``tile_size`` elements of one tensor."""
        tensors = [param, grad] + [v for v in state.values() if isinstance(v, Tensor)]
        n = param.numel()
        same_layout = all(t.is_contiguous() and t.numel() == n for t in tensors)
        if n <= self.tile_size or not same_layout:
            self.update(param, grad, state, group)  # type: ignore[attr-defined]
            return
        flat_param, flat_grad = param.view(-1), grad.view(-1)
        flat_state = {k: v.view(-1) for k, v in state.items() if isinstance(v, Tensor)}
        for start in range(0, n, self.tile_size):
            tile = slice(start, start + self.tile_size)
            tile_state = {**state, **{k: v[tile] for k, v in flat_state.items()}}
            self.update(flat_param[tile], flat_grad[tile], tile_state, group)  # type: ignore[attr-defined]


def _by_device_and_dtype(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
) -> Iterable[tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]]:
    """Split the lists into runs that share a device and dtype, as foreach kernels require."""
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list, list, list]] = {}
    for param, grad, state in zip(params, grads, states):
        p, g, s = buckets.setdefault((param.device, param.dtype), ([], [], []))
        p.append(param)
        g.append(grad)
        s.append(state)
    return buckets.values()
