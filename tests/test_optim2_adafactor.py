"""Adafactor: torch.optim.Adafactor as the oracle by default, the paper's equations for variant="paper".

Every trajectory runs in float64 over a matrix, a vector, a 0-dim scalar, a 3-d block and a
transposed (non-contiguous) matrix, in two param groups, under a scheduler that changes lr every
step, with some gradients missing on some steps.
"""

from __future__ import annotations

import io
import math
from itertools import product
from typing import Any, Callable

import pytest
import torch

from course_lib.optim.adafactor import Adafactor

STEPS = 20


@pytest.fixture(autouse=True)
def float64_one_thread():
    """float64 (torch's Adafactor keeps its step counter in the default dtype); one thread, since
    these tensors are tiny and a second thread only waits for a busy core."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def make_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(4, 6, generator=gen),
        torch.randn(5, generator=gen),
        torch.randn((), generator=gen),
        torch.randn(2, 3, 4, generator=gen),
        torch.randn(5, 3, generator=gen).t(),
    ]
    return [p.requires_grad_() for p in params]


def set_grads(params: list[torch.Tensor], t: int) -> None:
    """Seeded noise plus a pull to zero, with row scales that differ so the factoring matters."""
    gen = torch.Generator().manual_seed(100 + t)
    for i, p in enumerate(params):
        noise = torch.randn(p.shape, generator=gen)
        scale = torch.logspace(-2, 1, p.shape[0]).view(-1, *[1] * (p.dim() - 1)) if p.dim() else 1.0
        skip = (i == 2 and t % 3 == 0) or (i == 1 and t < 2)
        p.grad = None if skip else noise * scale + 0.5 * p.detach()


def groups(params: list[torch.Tensor], config: dict[str, Any]) -> list[dict[str, Any]]:
    second: dict[str, Any] = {"params": params[3:], "lr": config.get("lr", 1e-2) * 0.5}
    if config.get("weight_decay"):
        second["weight_decay"] = config["weight_decay"] * 2
    return [{"params": params[:3]}, second]


def run(make_opt: Callable[..., torch.optim.Optimizer], config: dict[str, Any], steps: int = STEPS):
    params = make_params()
    opt = make_opt(groups(params, config), **config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t))
    for t in range(steps):
        set_grads(params, t)
        opt.step()
        sched.step()
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
    ours_params, ours = run(Adafactor, config)
    ref_params, ref = run(lambda p, **c: torch.optim.Adafactor(p, foreach=False, **c), config)
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        mine, theirs = ours.state[p], ref.state[q]
        assert set(mine) == set(theirs)
        assert mine["step"] == theirs["step"].item()
        for key in set(theirs) - {"step"}:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-10, atol=1e-14)


def test_tensor_lr_matches_float_lr():
    ours_params, _ = run(lambda p, **c: Adafactor(p, **{**c, "lr": torch.tensor(c["lr"])}), dict(lr=1e-2))
    ref_params, _ = run(lambda p, **c: torch.optim.Adafactor(p, foreach=False, **c), dict(lr=1e-2))
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_factored_state_is_row_and_column_vectors():
    params = make_params()
    opt = Adafactor(params)
    set_grads(params, 5)
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

def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


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


# --- integration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [dict(weight_decay=0.1), dict(variant="paper", beta1=0.9)], ids=["torch", "paper"])
def test_state_dict_survives_save_and_weights_only_load(config):
    straight, _ = run(Adafactor, config, steps=16)
    params, opt = run(Adafactor, config, steps=8)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = [p.detach().clone().requires_grad_() for p in params]
    new = Adafactor(groups(fresh, config), **config)
    new.load_state_dict(saved)
    sched = torch.optim.lr_scheduler.LambdaLR(new, lambda t: 1 / (1 + 0.1 * t), last_epoch=7)
    for t in range(8, 16):
        set_grads(fresh, t)
        new.step()
        sched.step()
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)


@pytest.mark.parametrize("variant", ["torch", "paper"])
def test_fits_a_least_squares_problem(variant):
    gen = torch.Generator().manual_seed(0)
    x, w_true = torch.randn(64, 8, generator=gen), torch.randn(8, 3, generator=gen)
    w = torch.zeros(8, 3, requires_grad=True)
    opt = Adafactor([w], lr=0.3, variant=variant, beta1=0.9 if variant == "paper" else None)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = ((x @ w - x @ w_true) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(beta2_decay=0.1), "beta2_decay"),
        (dict(eps=(-1.0, 1e-3)), r"eps\[0\]"),
        (dict(eps=(None, -1.0)), r"eps\[1\]"),
        (dict(eps=1e-3), "eps must be a pair"),
        (dict(d=0.5), "d must be in"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(variant="hf"), "variant"),
        (dict(beta1=1.0), "beta1"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adafactor([torch.zeros(2, requires_grad=True)], **kwargs)
    opt = Adafactor([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], **kwargs})


def test_complex_parameters_are_rejected():
    p = torch.zeros(2, 2, dtype=torch.complex128, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="complex"):
        Adafactor([p]).step()
