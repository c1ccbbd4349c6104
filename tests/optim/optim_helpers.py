"""Helpers shared by the optimizer tests in tests/optim (pytest puts this folder on sys.path).

Parameters of awkward shapes (0-dim, non-contiguous, 3-d), seeded gradients that some parameters
miss on some steps, two param groups with different hyperparameters, a training loop under a
scheduler that changes lr every step, the weights-only save/load round trip, and comparisons of
optimizer states.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

F64 = torch.float64
STEPS = 20

Grads = list["torch.Tensor | None"]


# --- parameters -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transposed:
    """The transpose of a fresh ``(rows, cols)`` matrix: a non-contiguous ``(cols, rows)`` parameter."""

    rows: int
    cols: int


@dataclass(frozen=True)
class Zeros:
    """A parameter of zeros (a fresh bias): its norm is 0, and it draws nothing from the generator."""

    shape: tuple[int, ...]


#: A matrix, a 0-dim scalar, a non-contiguous matrix, a vector and a 3-d block.
MIXED = ((3, 4), (), Transposed(3, 5), (7,), (2, 3, 2))
#: A matrix, a 0-dim scalar, a non-contiguous matrix and a vector.
SMALL = ((3, 4), (), Transposed(5, 3), (6,))
#: Matrices only (for Muon): a tall one, a wide one, a non-contiguous one and a square one.
MATRICES = ((8, 5), (4, 12), Transposed(6, 3), (6, 6))


def make_params(shapes: Sequence[Any] = MIXED, seed: int = 0, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Leaf tensors of the given shapes, drawn in order from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        if isinstance(shape, Transposed):
            params.append(torch.randn(shape.rows, shape.cols, generator=gen, dtype=dtype).t())
        elif isinstance(shape, Zeros):
            params.append(torch.zeros(shape.shape, dtype=dtype))
        else:
            params.append(torch.randn(shape, generator=gen, dtype=dtype))
    return [p.requires_grad_() for p in params]


def clones(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Fresh leaf copies of ``params`` (same values, strides, dtype and device)."""
    return [p.detach().clone().requires_grad_() for p in params]


# --- gradients ------------------------------------------------------------------------------------

def skips(every_third: int | None = 1, first_two: int | None = None) -> Callable[[int, int], bool]:
    """Which gradients are missing: parameter ``every_third`` on steps 0, 3, 6, ... and parameter
    ``first_two`` on steps 0 and 1 (so its state starts late)."""
    return lambda i, t: (i == every_third and t % 3 == 0) or (i == first_two and t < 2)


def seeded_grads(params: Sequence[torch.Tensor], t: int, *, seed: int = 100,
                 skip: Callable[[int, int], bool] = skips(1),
                 scale: Callable[[int, torch.Tensor], Any] | None = None) -> Grads:
    """Step ``t``'s gradients: seeded noise (times ``scale(i, p)``) plus a pull ``0.5 p`` towards 0,
    ``None`` where ``skip(i, t)``. The noise is drawn for every parameter, missing or not."""
    gen = torch.Generator().manual_seed(seed + t)
    grads: Grads = []
    for i, p in enumerate(params):
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        if scale is not None:
            noise = noise * scale(i, p)
        grads.append(None if skip(i, t) else noise + 0.5 * p.detach())
    return grads


def set_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = g


# --- param groups ---------------------------------------------------------------------------------

def two_groups(params: Sequence[torch.Tensor], split: int, **second: Any) -> list[dict[str, Any]]:
    """``params[:split]`` with the optimizer's defaults, ``params[split:]`` with the options ``second``."""
    return [{"params": list(params[:split])}, {"params": list(params[split:]), **second}]


def scaled_groups(params: Sequence[torch.Tensor], config: dict[str, Any], split: int,
                  default_lr: float | None = None, **second: Any) -> list[dict[str, Any]]:
    """Two groups; the second has half the learning rate and twice the weight decay of ``config``."""
    lr = config.get("lr", default_lr)
    if lr is not None:
        second.setdefault("lr", lr * 0.5)
    if config.get("weight_decay"):
        second.setdefault("weight_decay", config["weight_decay"] * 2)
    return two_groups(params, split, **second)


# --- training loops -------------------------------------------------------------------------------

def decay(t: int) -> float:
    """The LambdaLR factor of step ``t``: lr changes at every step."""
    return 1 / (1 + 0.1 * t)


def run(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor], steps: int = STEPS, *, start: int = 0,
        grads: Callable[[Sequence[torch.Tensor], int], Grads] = seeded_grads,
        lr_lambda: Callable[[int], float] = decay,
        step: Callable[[torch.optim.Optimizer, Sequence[torch.Tensor], int], Any] | None = None,
        ) -> torch.optim.Optimizer:
    """Steps ``start .. start + steps - 1`` under ``LambdaLR(lr_lambda)``: set step t's gradients, then
    ``step(opt, params, t)`` (default ``opt.step()``). A run resumed at ``start > 0`` needs the
    groups' ``initial_lr``, which a loaded state dict brings along."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda, last_epoch=start - 1)
    for t in range(start, start + steps):
        set_grads(params, grads(params, t))
        if step is None:
            opt.step()
        else:
            step(opt, params, t)
        sched.step()
    return opt


# --- state dicts ----------------------------------------------------------------------------------

def weights_only_round_trip(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``torch.save`` into memory, then ``torch.load(..., weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_resumes_exactly(make_opt: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                           make: Callable[[], list[torch.Tensor]], steps: int = STEPS,
                           **run_options: Any) -> tuple[dict[str, Any], torch.optim.Optimizer]:
    """Stop after ``steps // 2`` steps, save, load with ``weights_only=True`` into a fresh optimizer
    (``make_opt`` on copies of the parameters), run the rest: bit for bit the uninterrupted run.
    Returns the loaded state dict and the resumed optimizer."""
    half = steps // 2
    straight = make()
    run(make_opt(straight), straight, steps, **run_options)
    params = make()
    opt = run(make_opt(params), params, half, **run_options)
    saved = weights_only_round_trip(opt.state_dict())
    resumed = clones(params)
    new = make_opt(resumed)
    new.load_state_dict(saved)
    run(new, resumed, steps - half, start=half, **run_options)
    for i, (p, q) in enumerate(zip(resumed, straight)):
        assert torch.equal(p, q), f"parameter {i} differs from the uninterrupted run"
    return saved, new


def assert_same_state(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                      ref_params: Sequence[torch.Tensor], *, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    """``ours.state`` holds what ``theirs.state`` (torch's) holds, key by key (ours always counts
    ``step``): tensors to ``(rtol, atol)``; numbers and 0-dim tensors also to a relative 1e-12."""
    for p, q in zip(params, ref_params):
        s, r = ours.state[p], theirs.state[q]
        assert set(s) == set(r) | {"step"}
        for key, value in r.items():
            if torch.is_tensor(value) and value.dim() > 0:
                torch.testing.assert_close(s[key], value, rtol=rtol, atol=atol)
            else:
                mine, reference = float(s[key]), float(value)
                assert mine == pytest.approx(reference, rel=1e-12), key
                assert abs(mine - reference) <= atol + rtol * abs(reference), key


def assert_equal_nested(a: Any, b: Any) -> None:
    """Equal structure and equal values; tensors bit for bit."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_nested(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_nested(x, y)
    else:
        assert a == b


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the tensors (not the 0-dim counters) in an optimizer's state."""
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


# --- objectives -----------------------------------------------------------------------------------

def quadratic(p: torch.Tensor) -> torch.Tensor:
    """A convex bowl with unequal curvatures along its axes; minimum 0 at the origin."""
    curvature = torch.linspace(0.5, 2.0, p.numel(), dtype=p.dtype, device=p.device)
    return 0.5 * (curvature * p.reshape(-1) ** 2).sum()
