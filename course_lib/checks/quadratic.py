"""Checks for the exercise on gradient descent on a quadratic; the oracles are ``torch.optim.SGD`` with
autograd's gradient, and eigenvalues and spectral norms computed by ``torch.linalg``.

On :math:`f(\\theta) = \\tfrac12 \\theta^\\top H \\theta - b^\\top \\theta` with :math:`H` symmetric positive
definite, the gradient is :math:`H\\theta - b` and the error :math:`e = \\theta - \\theta^*` evolves as
:math:`e \\leftarrow (I - \\eta H)\\, e`. Along the eigenvector of eigenvalue :math:`\\lambda` it is
multiplied by :math:`1 - \\eta\\lambda` at each step, so gradient descent converges from every start if
and only if :math:`\\eta < 2/\\lambda_{max} = 2/L`, and its worst factor per step is
:math:`\\max_i |1 - \\eta\\lambda_i| = \\lVert I - \\eta H\\rVert_2`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ._core import DTYPE, Trials, describe, passed
from ._policy import policy

__all__ = ["gd_step", "max_stable_lr", "convergence_factor", "random_spd", "POLICY"]

POLICY = [
    policy("gd_step", forbid=("torch.optim.SGD", "course_lib.optim.SGD"),
           reason="the task is to write the step yourself, from the gradient H theta - b"),
    policy("max_stable_lr", "convergence_factor",
           reason="the task is the formula; torch.linalg (eigvalsh) is there to compute eigenvalues"),
]  # fmt: skip


def random_spd(run: Trials, n: int, low: float = 1e-2, high: float = 1e2) -> tuple[torch.Tensor, torch.Tensor]:
    """A random symmetric positive definite ``n x n`` matrix and its eigenvalues (ascending).

    The eigenvalues are log-uniform in ``[low, high]``, the eigenvectors a random rotation, so the diagonal
    entries of the matrix are not its eigenvalues.
    """
    eigenvalues = torch.tensor(sorted(run.log_uniform(low, high) for _ in range(n)), dtype=DTYPE)
    q, r = torch.linalg.qr(run.normal(n, n))
    q = q * torch.sign(torch.diagonal(r))  # a rotation drawn uniformly (Haar measure)
    h = q @ torch.diag(eigenvalues) @ q.T
    return (h + h.T) / 2, eigenvalues


def _sgd_step(theta: torch.Tensor, h: torch.Tensor, b: torch.Tensor, lr: float) -> torch.Tensor:
    """One step of torch.optim.SGD on the quadratic, the gradient taken by autograd."""
    param = theta.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([param], lr=lr)
    (0.5 * param @ h @ param - b @ param).backward()
    optimizer.step()
    return param.detach()


def gd_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(theta, H, b, lr) -> theta``: one gradient-descent step on
    :math:`\\tfrac12\\theta^\\top H\\theta - b^\\top\\theta`, against ``torch.optim.SGD`` and autograd."""
    run = Trials("gd_step", fn, seed, trials)
    for _ in run:
        n = run.integer(2, 6)
        h, _ = random_spd(run, n)
        b, theta, lr = run.normal(n), run.normal(n), run.log_uniform(1e-3, 1e-1)
        inputs = describe(theta=theta, H=h, b=b, lr=lr)
        got = run.call(fn, "gd_step", inputs, theta.clone(), h.clone(), b.clone(), lr)
        grad = h @ theta - b
        run.expect_tensor(
            "theta",
            got,
            _sgd_step(theta, h, b, lr),
            inputs,
            hints={
                "step against the gradient: theta - lr * grad, not theta + lr * grad.": theta + lr * grad,
                "the gradient of -b^T theta is -b: grad = H @ theta - b.": theta - lr * (h @ theta + b),
                "the gradient of b^T theta is b, so grad = H @ theta - b (you left b out).": theta - lr * h @ theta,
                "the 1/2 in front of theta^T H theta cancels the 2 of its derivative: grad = H @ theta - b.": (
                    theta - lr * (0.5 * h @ theta - b)
                ),
                "the step is lr times the gradient.": theta - grad,
            },
        )
    passed("gd_step", f"{run.n} random quadratics match one step of torch.optim.SGD")


def max_stable_lr(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(H) -> float``: the largest learning rate for which gradient descent converges on a
    quadratic with Hessian ``H``, i.e. :math:`2/\\lambda_{max}(H)`, with :math:`\\lambda_{max}` from
    ``torch.linalg.eigvalsh`` (and the eigenvalues the matrix was built from)."""
    run = Trials("max_stable_lr", fn, seed, trials)
    for _ in run:
        n = run.integer(2, 8)
        h, eigenvalues = random_spd(run, n)
        measured = torch.linalg.eigvalsh(h)
        assert torch.allclose(measured, eigenvalues, rtol=1e-8, atol=1e-10), "the test matrix is not what it should be"
        small, large = eigenvalues[0].item(), eigenvalues[-1].item()
        inputs = describe(H=h)
        got = run.call(fn, "max_stable_lr", inputs, h.clone())
        run.expect_close(
            "max_stable_lr(H)",
            got,
            2 / measured[-1].item(),
            inputs + f"\n  (eigenvalues of H: {[round(v, 6) for v in eigenvalues.tolist()]})",
            rtol=1e-8,
            hints={
                "gradient descent is still stable above 1/L: along the stiffest direction it multiplies the "
                "error by 1 - lr * L, which stays inside (-1, 1) up to lr = 2/L.": 1 / large,
                "the largest eigenvalue limits the step, not the smallest: use 2 / max(eigenvalues).": 2 / small,
                "2 / (smallest + largest eigenvalue) is the rate that converges fastest, not the largest "
                "stable one.": 2 / (small + large),
                "the diagonal entries of H are not its eigenvalues (unless H is diagonal): use "
                "torch.linalg.eigvalsh(H).": 2 / torch.diagonal(h).max().item(),
                "the trace is the sum of all eigenvalues; the limit is 2 / the largest eigenvalue.": (
                    2 / torch.trace(h).item()
                ),
                "the Frobenius norm is larger than the largest eigenvalue; use torch.linalg.eigvalsh(H).": (
                    2 / torch.linalg.matrix_norm(h).item()
                ),
            },
        )
    passed("max_stable_lr", f"{run.n} random symmetric positive definite matrices give 2 / their largest eigenvalue")


def convergence_factor(fn: Callable, *, seed: int | None = None, trials: int = 6) -> None:
    """Check ``fn(H, lr) -> float``: the worst factor by which one step of gradient descent multiplies the
    distance to the minimum, :math:`\\max_i |1 - \\eta\\lambda_i|`. The oracle is the spectral norm of
    :math:`I - \\eta H` (``torch.linalg.matrix_norm(..., ord=2)``). Learning rates run from far below to
    above :math:`2/L`, so some factors exceed 1."""
    run = Trials("convergence_factor", fn, seed, trials)
    for trial in run:
        n = run.integer(2, 8)
        h, eigenvalues = random_spd(run, n)
        limit = 2 / eigenvalues[-1].item()
        # small rates (the flattest direction is the slowest), rates near the limit, rates past it
        lr = limit * (run.uniform(0.02, 0.5), run.uniform(0.6, 0.99), run.uniform(1.01, 1.5))[trial % 3]
        reference = torch.linalg.matrix_norm(torch.eye(n, dtype=DTYPE) - lr * h, ord=2).item()
        factors = 1 - lr * eigenvalues
        inputs = describe(H=h, lr=lr) + f"\n  (eigenvalues of H: {[round(v, 6) for v in eigenvalues.tolist()]})"
        got = run.call(fn, "convergence_factor", inputs, h.clone(), lr)
        run.expect_close(
            "convergence_factor(H, lr)",
            got,
            reference,
            inputs,
            rtol=1e-8,
            hints={
                "the flattest direction (smallest eigenvalue) may be the slowest: take the largest "
                "|1 - lr * lambda| over all eigenvalues.": abs(factors[-1].item()),
                "take the largest |1 - lr * lambda| over all eigenvalues, with absolute values: the stiffest "
                "direction (largest eigenvalue) has a negative factor at large rates, and below -1 the error "
                "grows, alternating in sign.": factors.max().item(),
                "the error is multiplied by 1 - lr * lambda along each eigenvector, not by lr * lambda.": (
                    (lr * eigenvalues).abs().max().item()
                ),
                "that is the factor for the loss (it shrinks with the square); the question is about the "
                "distance to the minimum.": (factors**2).max().item(),
            },
        )
        assert math.isclose(reference, factors.abs().max().item(), rel_tol=1e-8), "the two oracles disagree"
    passed("convergence_factor", f"{run.n} random (H, lr) match the spectral norm of I - lr * H")
