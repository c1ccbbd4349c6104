"""Checks for the exercise on Muon's Newton-Schulz iteration and schedule-free averaging; the oracles are
:func:`course_lib.optim.muon.newton_schulz` run in float64, a singular value decomposition
(``torch.linalg.svd``), the polar factor :math:`G (G^\\top G)^{-1/2}` from ``torch.linalg.eigh``, and
:class:`course_lib.optim.schedule_free.ScheduleFreeAdamW`.

With :math:`G = U \\Sigma V^\\top` and :math:`X_0 = G / \\max(\\lVert G\\rVert_F, \\epsilon)`, each step
:math:`X \\leftarrow aX + (bA + cA^2)X`, :math:`A = XX^\\top`, maps every singular value :math:`s` of
:math:`X` to :math:`p(s) = as + bs^3 + cs^5` and keeps the singular vectors, so after :math:`k` steps
:math:`X_k = U\\, p^{(k)}(\\Sigma / \\lVert G\\rVert_F)\\, V^\\top`, which the second oracle computes directly.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from course_lib.optim.muon import NS_COEFFICIENTS
from course_lib.optim.muon import newton_schulz as course_newton_schulz
from course_lib.optim.schedule_free import ScheduleFreeAdamW

from ._core import DTYPE, Trials, describe, passed
from ._policy import policy

__all__ = ["newton_schulz", "svd_orthogonalize", "schedule_free_weights", "random_matrix", "svd_polynomial", "POLICY"]

POLICY = [
    policy("newton_schulz", forbid=("course_lib.optim.muon.newton_schulz", "course_lib.optim.Muon", "torch.optim.Muon"),
           reason="the task is to write the Newton-Schulz iteration yourself"),
    policy("svd_orthogonalize", forbid=("course_lib.optim.muon.newton_schulz", "course_lib.optim.Muon", "torch.optim.Muon"),
           reason="the task is the exact orthogonalization, from torch.linalg.svd"),
    policy("schedule_free_weights", forbid=("course_lib.optim.schedule_free.*", "schedulefree.*"),
           reason="the task is to write the weights yourself"),
]  # fmt: skip

CUBIC = (1.5, -0.5, 0.0)
_NOT_BACK = "a tall matrix is transposed to wide for the iteration; transpose the result back to G's shape."
_NORMALIZE = (
    "divide G by its Frobenius norm first, so that every singular value is at most 1: the polynomial "
    "blows up singular values above about 1.3."
)
_ZERO = (
    "a zero G must give a zero result, not NaN: divide by max(norm, eps), e.g. "
    "G / G.norm().clamp(min=eps)."
)
_PRECISION = (
    "the result is close but not within round-off: work in G's own dtype (float64 here). Muon runs the "
    "iteration in bfloat16 for speed; this exercise asks for the exact polynomial."
)


def random_matrix(run: Trials, m: int, n: int, low: float, high: float) -> torch.Tensor:
    """An ``m x n`` matrix with random singular vectors and singular values log-uniform in ``[low, high]``."""
    k = min(m, n)
    u, _ = torch.linalg.qr(run.normal(m, k))
    v, _ = torch.linalg.qr(run.normal(n, k))
    s = torch.tensor([run.log_uniform(low, high) for _ in range(k)], dtype=DTYPE)
    return u @ torch.diag(s) @ v.T


def svd_polynomial(
    g: torch.Tensor, steps: int, coefficients: Sequence[float] = NS_COEFFICIENTS, norm: str | int | None = "fro"
) -> torch.Tensor:
    """:math:`U p^{(steps)}(\\Sigma / \\lVert G\\rVert) V^\\top` by an SVD; ``norm`` is ``"fro"``, ``2`` or
    ``None`` (no normalization)."""
    a, b, c = coefficients
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    if norm is not None:
        s = s / torch.linalg.matrix_norm(g, ord=norm)
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return u @ torch.diag(s) @ vh


def _shape(run: Trials, trial: int) -> tuple[int, int]:
    small, large = run.integer(2, 6), run.integer(7, 12)
    if trial % 4 == 0:
        return large, small  # tall
    if trial % 4 == 1:
        return small, large  # wide
    if trial % 4 == 2:
        return small, small
    return run.integer(2, 10), run.integer(2, 10)


def newton_schulz(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(G, steps=5, eps=1e-7) -> X``: Muon's quintic Newton-Schulz iteration in ``G``'s dtype.

    Tall, wide and square float64 matrices with singular values spread over three orders of magnitude
    and a random overall scale, 1 to 8 steps, and a zero matrix in the last trial. The result must match
    ``course_lib.optim.muon.newton_schulz(G, steps=steps, dtype=torch.float64)`` and
    :math:`U p^{(steps)}(\\Sigma/\\lVert G\\rVert_F) V^\\top` from an SVD.
    """
    run = Trials("newton_schulz", fn, seed, trials)
    for trial in run:
        m, n = _shape(run, trial)
        steps = (5, run.integer(6, 8), run.integer(1, 4))[trial] if trial < 3 else run.integer(1, 8)
        zero = trial == run.n - 1 and run.n > 1
        if zero:
            m, n = (m, n) if m != n else (m + 1, n)
            g = torch.zeros(m, n, dtype=DTYPE)
        else:
            g = random_matrix(run, m, n, 1e-3, 1.0) * run.log_uniform(1e-2, 1e2)
        eps = 1e-7
        kind = "zero" if zero else ("tall" if m > n else "wide" if m < n else "square")
        inputs = describe(G=g, steps=steps, eps=eps) + f"\n  (G is {m} x {n}, {kind})"
        got = run.call(fn, "newton_schulz", inputs, g.clone(), steps=steps, eps=eps)
        expected = course_newton_schulz(g, NS_COEFFICIENTS, steps, eps, dtype=DTYPE)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (n, m) and m != n:
            raise run.fail(f"the result has shape {(n, m)}, expected {(m, n)}, on input\n{inputs}\nHint: {_NOT_BACK}")
        if isinstance(got, torch.Tensor) and not zero and got.shape == expected.shape and not torch.isfinite(got).all():
            raise run.fail(f"the result holds inf or NaN, on input\n{inputs}\nHint: {_NORMALIZE}")
        hints: dict[str, torch.Tensor] = {}
        if not zero:
            hints.update({
                "those are the cubic Newton-Schulz coefficients (1.5, -0.5, 0); Muon's quintic uses "
                "(a, b, c) = (3.4445, -4.7750, 2.0315).": svd_polynomial(g, steps, CUBIC),
                "divide by the Frobenius norm (G.norm()), as Muon does, not by the spectral norm.": (
                    svd_polynomial(g, steps, norm=2)
                ),
                "the quintic is a X + (b A + c A @ A) X, with A = X X^T: A squared in the last term.": (
                    svd_polynomial(g, steps, (NS_COEFFICIENTS[0], NS_COEFFICIENTS[1] + NS_COEFFICIENTS[2], 0.0))
                ),
                _NORMALIZE: svd_polynomial(g, steps, norm=None),
                "run exactly `steps` iterations (the argument), not always 5.": svd_polynomial(g, 5),
                "run exactly `steps` iterations (you ran one too many).": svd_polynomial(g, steps + 1),
                "run exactly `steps` iterations (you ran one too few).": svd_polynomial(g, max(steps - 1, 0)),
            })
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype:
            low = [t for t in (torch.bfloat16, torch.float16, torch.float32) if torch.equal(got, got.to(t).to(got.dtype))]
            if low and not zero and bool(got.abs().max() > 0):  # every entry fits a low precision: rounded there
                hints[_PRECISION] = got.detach()
        if zero and isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.isnan(got).any():
            raise run.fail(f"the result holds NaN, expected zeros, on input\n{inputs}\nHint: {_ZERO}")
        run.expect_tensor("X", got, expected, inputs, rtol=1e-7, atol=1e-9, hints=hints)
        if not zero:
            run.expect_tensor(
                "X (compared with U p(S / ||G||_F) V^T from an SVD)", got, svd_polynomial(g, steps), inputs,
                rtol=1e-7, atol=1e-9,
            )  # fmt: skip
    passed("newton_schulz", f"{run.n} random matrices (tall, wide, square, zero) match course_lib and an SVD")


def _polar(g: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor of a full-rank ``g``: G (G^T G)^{-1/2} or (G G^T)^{-1/2} G, by eigh."""
    tall = g.shape[0] >= g.shape[1]
    gram = g.T @ g if tall else g @ g.T
    mu, w = torch.linalg.eigh(gram)
    inverse_root = w @ torch.diag(mu.rsqrt()) @ w.T
    return g @ inverse_root if tall else inverse_root @ g


def svd_orthogonalize(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(G) -> U @ V^T`` (reduced SVD) on tall, wide and square full-rank matrices; the oracle is
    the polar factor :math:`G (G^\\top G)^{-1/2}` (or :math:`(GG^\\top)^{-1/2} G` for a wide matrix) from
    ``torch.linalg.eigh``, which is the same matrix reached another way."""
    run = Trials("svd_orthogonalize", fn, seed, trials)
    for trial in run:
        m, n = _shape(run, trial)
        g = random_matrix(run, m, n, 0.1, 10.0)
        inputs = describe(G=g) + f"\n  (G is {m} x {n})"
        got = run.call(fn, "svd_orthogonalize", inputs, g.clone())
        expected = _polar(g)
        hints = {
            "drop the singular values: the result is U @ Vh, all singular values 1.": g,
            "scaling G by one number keeps its singular values unequal; they must all become 1 (U @ Vh).": g / g.norm(),
            "dividing by the spectral norm makes only the largest singular value 1; use U @ Vh.": (
                g / torch.linalg.matrix_norm(g, ord=2)
            ),
            "Newton-Schulz only approximates U V^T; here compute it exactly with torch.linalg.svd.": (
                course_newton_schulz(g, NS_COEFFICIENTS, 5, 1e-7, dtype=DTYPE)
            ),
        }
        if m == n:
            hints["that is the transpose of U @ Vh (Vh.T @ U.T)."] = expected.T
        elif isinstance(got, torch.Tensor) and tuple(got.shape) == (n, m):
            raise run.fail(f"the result has shape {(n, m)}, expected {(m, n)} (G's shape), on input\n{inputs}\n"
                           "Hint: U (m x k) @ Vh (k x n) has G's shape; Vh.T @ U.T is its transpose.")
        run.expect_tensor("U @ Vh", got, expected, inputs, rtol=1e-7, atol=1e-9, hints=hints)
    passed("svd_orthogonalize", f"{run.n} random matrices (tall, wide, square) match the polar factor from eigh")


def _weights(lr: float, warmup: int, n: int, power: float = 2.0, shift: int = 0) -> list[float]:
    """c_2..c_{n+1} for warmed-up rates lr * min(1, (k + shift) / warmup) and weights lr_k ** power."""
    out, total = [], 0.0
    for k in range(1, n + 1):
        rate = lr * (min(1.0, max(k + shift, 0) / warmup) if warmup > 0 else 1.0)
        total += rate**power
        out.append(rate**power / total if total > 0 else 0.0)
    return out


def schedule_free_weights(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(lr, warmup_steps, n_steps) -> [c_2, ..., c_{n+1}]``: the averaging weights of schedule-free
    AdamW (``r = 0``, ``weight_lr_power = 2``). The oracle reads ``average_weight`` from the param group of
    :class:`~course_lib.optim.schedule_free.ScheduleFreeAdamW` after each of ``n_steps`` steps."""
    run = Trials("schedule_free_weights", fn, seed, trials)
    for trial in run:
        lr = run.log_uniform(1e-4, 1.0)
        warmup = 0 if trial == 1 else run.integer(3, 20)
        n_steps = warmup + run.integer(1, 30)
        param = torch.zeros(3, dtype=DTYPE, requires_grad=True)
        optimizer = ScheduleFreeAdamW([param], lr=lr, warmup_steps=warmup)
        expected = []
        for _ in range(n_steps):
            param.grad = run.normal(3)
            optimizer.step()
            expected.append(optimizer.param_groups[0]["average_weight"])
        inputs = describe(lr=lr, warmup_steps=warmup, n_steps=n_steps)
        got = run.call(fn, "schedule_free_weights", inputs, lr, warmup, n_steps)
        if isinstance(got, torch.Tensor):
            got = got.detach().to(DTYPE).flatten()
        elif isinstance(got, (list, tuple)) and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in got
        ):
            got = torch.tensor([float(c) for c in got], dtype=DTYPE)
        else:
            raise run.fail(f"schedule_free_weights should return a list of numbers, but it returned "
                           f"{type(got).__name__}: {got!r:.200}")
        as_tensor = lambda values: torch.tensor(values, dtype=DTYPE)  # noqa: E731
        run.expect_tensor(
            "[c_2, ..., c_{n+1}]", got, as_tensor(expected), inputs, rtol=1e-9, atol=1e-12,
            hints={
                "c_{t+1} = 1 / t is the plain average; schedule-free weights step t by its squared learning rate, "
                "so the small steps of warmup count little.": as_tensor([1 / k for k in range(1, n_steps + 1)]),
                "the weight of a step is its learning rate squared (weight_lr_power = 2), not the rate itself.": (
                    as_tensor(_weights(lr, warmup, n_steps, power=1.0))
                ),
                "the warmup rate of step t (counting from 1) is lr * t / warmup_steps: the first step "
                "already moves.": as_tensor(_weights(lr, warmup, n_steps, shift=-1)),
                "the warmup rate of step t (counting from 1) is lr * t / warmup_steps, reaching lr at "
                "t = warmup_steps.": as_tensor(_weights(lr, warmup, n_steps, shift=1)),
            },
        )  # fmt: skip
        assert torch.allclose(as_tensor(expected), as_tensor(_weights(lr, warmup, n_steps)), rtol=1e-12)
    passed("schedule_free_weights", f"{run.n} random (lr, warmup) match ScheduleFreeAdamW's average_weight")
