"""Adafactor: torch.optim.Adafactor as the oracle by default, the paper's equations for variant="paper".

Every trajectory runs in float64 over a matrix, a vector, a 0-dim scalar, a 3-d block and a
transposed (non-contiguous) matrix, in two param groups, under a scheduler that changes lr every
step, with some gradients missing on some steps. The state-dict round trip (both variants), bad
hyperparameters and the other properties are in test_contract.py; the least-squares fit is in
test_convergence.py.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import product
from typing import Any, Callable

import pytest
import torch

from course_lib.optim.adafactor import Adafactor
from optim_helpers import (
    Transposed,
    assert_same_state,
    make_params,
    run,
    scaled_groups,
    seeded_grads,
    set_grads,
    skips,
    state_bytes,
)

# float64: torch's Adafactor keeps its step counter in the default dtype
pytestmark = pytest.mark.usefixtures("float64")

STEPS = 20
SHAPES = ((4, 6), (5,), (), (2, 3, 4), Transposed(5, 3))


def row_scales(i: int, p: torch.Tensor) -> Any:
    """Rows of very different scales, so that the factoring matters."""
    return torch.logspace(-2, 1, p.shape[0]).view(-1, *[1] * (p.dim() - 1)) if p.dim() else 1.0


#: Seeded noise times the row scales plus a pull to zero; the scalar misses every third step, the vector
#: the first two.
GRADS = partial(seeded_grads, scale=row_scales, skip=skips(every_third=2, first_two=1))


def trajectory(make_opt: Callable[..., torch.optim.Optimizer], config: dict[str, Any], steps: int = STEPS):
    params = make_params(SHAPES)
    opt = make_opt(scaled_groups(params, config, split=3, default_lr=1e-2), **config)
    run(opt, params, steps, grads=GRADS)
    return params, opt


def config_id(config: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"


# --- variant="torch" equals torch.optim.Adafactor ----------------------------------------------------

TORCH_CONFIGS = [dict(zip(("weight_decay", "maximize"), v)) for v in product((0.0, 0.1), (False, True))] + [
    dict(lr=0.5, d=2.0, beta2_decay=-0.5, eps=(1e-3, 1e-2)),  # lr above 1/sqrt(t): rho_t follows 1/sqrt(t)
    dict(lr=0.05, eps=(0.0, 0.5), weight_decay=0.01),
]


@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=config_id)
def test_trajectory_and_state_match_torch_adafactor(config):
    ours_params, ours = trajectory(Adafactor, config)
    ref_params, ref = trajectory(lambda p, **c: torch.optim.Adafactor(p, foreach=False, **c), config)
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert_same_state(ours, ref, ours_params, ref_params, rtol=1e-10, atol=1e-14)


def test_tensor_lr_matches_float_lr():
    ours_params, _ = trajectory(lambda p, **c: Adafactor(p, **{**c, "lr": torch.tensor(c["lr"])}), dict(lr=1e-2))
    ref_params, _ = trajectory(lambda p, **c: torch.optim.Adafactor(p, foreach=False, **c), dict(lr=1e-2))
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_factored_state_is_row_and_column_vectors():
    params = make_params(SHAPES)
    opt = Adafactor(params)
    set_grads(params, GRADS(params, 5))
    opt.step()
    shapes = {tuple(p.shape): {k: tuple(v.shape) for k, v in opt.state[p].items() if torch.is_tensor(v)}
              for p in params}
    assert shapes[(4, 6)] == {"row_var": (4, 1), "col_var": (1, 6)}
    assert shapes[(2, 3, 4)] == {"row_var": (2, 3, 1), "col_var": (2, 1, 4)}
    assert shapes[(5,)] == {"variance": (5,)}
    assert shapes[()] == {"variance": ()}


# --- variant="paper" equals the published algorithm, written out plainly ---------------------------

def paper_adafactor(theta: torch.Tensor, grads: list[torch.Tensor], *, rho_max: float = 1e-2,
                    beta1: float | None = None, d: float = 1.0, eps1: float = 1e-30, eps2: float = 1e-3,
                    decay: float = -0.8, relative_step: bool = True, scale_parameter: bool = True):
    """Shazeer & Stern (2018), Algorithms 4 and 5, with optional momentum on the scaled update.

    Row and column *sums* as in the paper (the library keeps means); the factors of a 3-d tensor
    are those of each of its matrices; RMS is over the whole tensor.
    """
    x = theta.clone()
    r = c = v = m = None
    for t, g in enumerate(grads, start=1):
        rho = min(rho_max, 1 / math.sqrt(t)) if relative_step else rho_max
        alpha = max(eps2, x.pow(2).mean().sqrt().item()) * rho if scale_parameter else rho
        beta2 = 1 - t**decay
        sq = g**2 + eps1
        if x.dim() >= 2:
            r = (1 - beta2) * sq.sum(-1) if r is None else beta2 * r + (1 - beta2) * sq.sum(-1)
            c = (1 - beta2) * sq.sum(-2) if c is None else beta2 * c + (1 - beta2) * sq.sum(-2)
            v_hat = r.unsqueeze(-1) * c.unsqueeze(-2) / r.sum(-1)[..., None, None]
        else:
            v = (1 - beta2) * sq if v is None else beta2 * v + (1 - beta2) * sq
            v_hat = v
        u = g / v_hat.sqrt()
        u_hat = u / max(1.0, u.pow(2).mean().sqrt().item() / d)
        if beta1 is None:
            x = x - alpha * u_hat
        else:
            m = (1 - beta1) * alpha * u_hat if m is None else beta1 * m + (1 - beta1) * alpha * u_hat
            x = x - m
    return x


PAPER_CONFIGS = [
    dict(),
    dict(beta1=0.9),
    dict(beta1=0.9, d=2.0, eps=(1e-20, 1e-2)),
    dict(relative_step=False, lr=1e-3),
    dict(scale_parameter=False, beta1=0.5),
]


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=config_id)
@pytest.mark.parametrize("shape", [(4, 6), (7,), (), (2, 3, 4)], ids=str)
def test_paper_variant_follows_the_papers_equations(config, shape):
    gen = torch.Generator().manual_seed(1)
    theta0 = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) * (0.1 + t) for t in range(STEPS)]
    p = theta0.clone().requires_grad_()
    opt = Adafactor([p], variant="paper", **config)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    eps1, eps2 = config.get("eps", (1e-30, 1e-3))
    expected = paper_adafactor(theta0, grads, rho_max=config.get("lr", 1e-2), beta1=config.get("beta1"),
                               d=config.get("d", 1.0), eps1=eps1, eps2=eps2,
                               relative_step=config.get("relative_step", True),
                               scale_parameter=config.get("scale_parameter", True))
    torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-13)
    assert not torch.equal(p.detach(), theta0)


def test_where_eps1_enters_decides_the_step_for_tiny_gradients():
    """Gradients of 1e-9 with eps1 = 1e-12: the paper adds eps1 to G^2, torch clamps mean(R) at eps1.

    Step 1 has beta2_hat = 0, so R and C are the row and column means of G^2 (+ eps1), and the
    step is alpha * G / sqrt(V) with alpha = 1e-2 * RMS(theta) = 1e-2 (no clipping: d is huge).
    Paper: V = G^2 + eps1, a step of 1e-2 * 1e-9 / sqrt(1e-18 + 1e-12), about 1e-5.
    torch: V = G^2 * G^2 / max(G^2, eps1) = 1e-24, a step of 1e-2 * 1e-9 / 1e-12 = 10.
    """
    g = torch.full((3, 4), 1e-9)
    steps = {}
    for variant in ("torch", "paper"):
        p = torch.ones(3, 4, requires_grad=True)
        opt = Adafactor([p], variant=variant, eps=(1e-12, 1e-3), d=1e9)
        p.grad = g.clone()
        opt.step()
        steps[variant] = 1 - p.detach()
    torch.testing.assert_close(steps["paper"], torch.full((3, 4), 1e-2 * 1e-9 / math.sqrt(1e-18 + 1e-12)))
    torch.testing.assert_close(steps["torch"], torch.full((3, 4), 1e-2 * 1e-9 / math.sqrt(1e-18 * 1e-18 / 1e-12)))


# --- memory ---------------------------------------------------------------------------------------

def test_factored_state_of_a_1024_square_matrix_is_two_vectors():
    torch.set_default_dtype(torch.float32)
    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(1024, 1024, generator=gen)
    sizes = {}
    for name, make in [("ours", Adafactor), ("torch", torch.optim.Adafactor), ("adam", torch.optim.Adam)]:
        p = torch.zeros(1024, 1024, requires_grad=True)
        opt = make([p])
        p.grad = grad
        opt.step()
        sizes[name] = state_bytes(opt)
    assert sizes["ours"] == sizes["torch"] == (1024 + 1024) * 4
    assert sizes["adam"] == 2 * 1024 * 1024 * 4
    assert sizes["adam"] / sizes["ours"] == 1024


def test_complex_parameters_are_rejected():
    p = torch.zeros(2, 2, dtype=torch.complex128, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="complex"):
        Adafactor([p]).step()
