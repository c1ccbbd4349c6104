"""The fast paths (tiled loop, foreach kernels) are opt-in per class: a subclass that changes the math never inherits them."""

from __future__ import annotations

import pytest
import torch

import course_lib.optim as co
from course_lib.optim._fast import fast_paths

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class NormalizedAdam(co.Adam):
    """A student's variant, as lesson 03 teaches: override ``update`` only. Adam on g / ||g|| (per tensor)."""

    def update(self, param, grad, state, group):
        super().update(param, grad / grad.norm().clamp_min(1e-12), state, group)


class TiledStudentSGD(co.SGD):
    """A variant that declares its own (elementwise) update tileable: the tiled path is its to take."""

    tileable = True

    def update(self, param, grad, state, group):
        super().update(param, grad.clamp(-1, 1), state, group)


def reference_normalized_adam(param: torch.Tensor, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
    """The same variant written out with torch.optim.Adam on whole tensors."""
    p = param.detach().clone().requires_grad_()
    opt = torch.optim.Adam([p], lr=lr, foreach=False)
    for g in grads:
        p.grad = g / g.norm()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach", [None, True, False], ids=["default", "foreach", "loop"])
def test_a_subclass_that_overrides_update_runs_its_own_math_on_every_path(device, foreach):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(1024, 1024, generator=gen).to(device)  # 2**20 elements: two tiles of the tiled loop
    grads = [torch.randn(1024, 1024, generator=gen).to(device) for _ in range(3)]
    p = start.clone().requires_grad_()
    opt = NormalizedAdam([p], lr=1e-2, foreach=foreach)
    assert opt.implementation(opt.param_groups[0], p.device) == "loop"
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = reference_normalized_adam(start, grads, 1e-2)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_fast_paths_belong_to_the_class_that_wrote_the_math():
    assert fast_paths(co.Adam) == {"foreach", "tiled"} == fast_paths(co.AdamW)  # AdamW: Adam's math, unchanged
    assert fast_paths(co.SGD) == {"foreach", "tiled"}
    assert fast_paths(co.RMSprop) == {"tiled"} and fast_paths(co.NAdam) == frozenset()
    assert fast_paths(NormalizedAdam) == frozenset()
    assert fast_paths(TiledStudentSGD) == {"tiled"}  # declared by the class that changed the math; no foreach


def test_a_variant_that_declares_itself_tileable_is_tiled_and_exact():
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(3000, generator=gen)
    results = []
    for foreach in (False, None):
        p = start.clone().requires_grad_()
        opt = TiledStudentSGD([p], lr=0.1, momentum=0.9, foreach=foreach)
        opt.tile_size = 256
        assert opt.implementation(opt.param_groups[0], p.device) == ("loop" if foreach is False else "tiled")
        for t in range(4):
            p.grad = 3 * torch.sin(torch.arange(3000.0) + t)
            opt.step()
        results.append(p.detach())
    assert torch.equal(*results)
