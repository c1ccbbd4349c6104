"""Landscapes against closed forms: gradients against autograd, minima and saddles against the Hessian."""

import itertools

import numpy as np
import pytest
import torch

from course_lib.viz import landscapes
from course_lib.viz.landscapes import LANDSCAPES, trajectory

ALL = list(LANDSCAPES.values())


@pytest.mark.parametrize("ls", ALL, ids=lambda ls: ls.name)
def test_closed_form_gradient_matches_autograd(ls):
    gen = torch.Generator().manual_seed(0)
    lo = torch.tensor([ls.xlim[0], ls.ylim[0]], dtype=torch.float64)
    hi = torch.tensor([ls.xlim[1], ls.ylim[1]], dtype=torch.float64)
    pts = lo + (hi - lo) * torch.rand(20, 2, generator=gen, dtype=torch.float64)
    for p in pts:
        q = p.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(ls.f(q), q)
        torch.testing.assert_close(ls.grad(p), auto, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ls", ALL, ids=lambda ls: ls.name)
def test_minima_are_minima(ls):
    for m in ls.minima + ls.local_minima:
        p = torch.tensor(m, dtype=torch.float64)
        assert ls.grad(p).abs().max() < 1e-9
        eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(ls.f, p))
        assert (eig > 0).all(), f"{ls.name} {m}: Hessian eigenvalues {eig}"
    for m in ls.minima:
        assert float(ls.f(torch.tensor(m, dtype=torch.float64))) == pytest.approx(ls.min_value, abs=1e-12)


@pytest.mark.parametrize("ls", ALL, ids=lambda ls: ls.name)
def test_saddles_have_curvature_of_both_signs(ls):
    for s in ls.saddles:
        p = torch.tensor(s, dtype=torch.float64)
        assert ls.grad(p).abs().max() < 1e-9
        eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(ls.f, p))
        assert eig.min() < 0 < eig.max()


@pytest.mark.parametrize("ls", ALL, ids=lambda ls: ls.name)
def test_min_value_is_the_minimum_on_a_grid(ls):
    xs = torch.linspace(*ls.xlim, 301, dtype=torch.float64)
    ys = torch.linspace(*ls.ylim, 301, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = ls.f(torch.stack([gx, gy], -1))
    assert z.min() >= ls.min_value - 1e-12


def test_local_minimum_is_worse_than_global():
    dw = landscapes.tilted_double_well
    f_local = float(dw.f(torch.tensor(dw.local_minima[0], dtype=torch.float64)))
    assert f_local > dw.min_value + 0.5


def test_known_values():
    # Closed forms: Rosenbrock at the origin is 1, Beale at the origin 1.5^2 + 2.25^2 + 2.625^2.
    o = torch.zeros(2, dtype=torch.float64)
    assert float(landscapes.rosenbrock(o)) == 1.0
    assert float(landscapes.beale(o)) == pytest.approx(1.5**2 + 2.25**2 + 2.625**2)
    assert float(landscapes.himmelblau(torch.tensor([3.0, 2.0]))) == 0.0


def test_functions_evaluate_on_grids():
    grid = torch.zeros(4, 5, 2, dtype=torch.float64)
    for ls in ALL:
        assert ls.f(grid).shape == (4, 5)
        assert ls.grad(grid).shape == (4, 5, 2)
    with pytest.raises(ValueError, match="last dimension is 2"):
        landscapes.rosenbrock(torch.zeros(3))


def test_trajectory_matches_hand_written_gradient_descent():
    lr, steps = 0.05, 25
    path = trajectory(landscapes.ravine, lambda p: torch.optim.SGD(p, lr=lr), steps=steps)
    p = torch.tensor(landscapes.ravine.start, dtype=torch.float64)
    expected = [p.clone()]
    for _ in range(steps):
        p = p - lr * landscapes.ravine.grad(p)
        expected.append(p.clone())
    np.testing.assert_allclose(path, torch.stack(expected).numpy(), rtol=0, atol=1e-15)


def test_gradient_descent_on_the_ravine_follows_the_closed_form():
    # On f = (a x^2 + b y^2)/2, GD multiplies each coordinate by (1 - lr * curvature) per step.
    a, b = landscapes.ravine.extra["curvatures"]
    lr, k = 0.09, 30
    path = trajectory(landscapes.ravine, lambda p: torch.optim.SGD(p, lr=lr), steps=k)
    x0, y0 = landscapes.ravine.start
    np.testing.assert_allclose(path[-1], [x0 * (1 - lr * a) ** k, y0 * (1 - lr * b) ** k], rtol=1e-12)


def test_divergence_shortens_the_path_instead_of_raising():
    path = trajectory(landscapes.ravine, lambda p: torch.optim.SGD(p, lr=10.0), steps=2000)
    assert len(path) < 2001 and np.isfinite(path).all()


def test_gradient_descent_stays_on_the_saddle_line_and_noise_escapes():
    gd = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    stuck = trajectory(landscapes.saddle, gd, start=(1.5, 0.0), steps=300)
    assert np.abs(stuck[-1]).max() < 1e-10  # converged to the saddle (0, 0)
    escaped = trajectory(landscapes.saddle, gd, start=(1.5, 1e-3), steps=300)
    assert landscapes.saddle.distance_to_minimum(escaped[-1]) < 1e-6


def test_start_decides_which_minimum_of_the_double_well():
    dw = landscapes.tilted_double_well
    gd = lambda p: torch.optim.SGD(p, lr=0.05)  # noqa: E731
    left = trajectory(dw, gd, start=(-1.8, 1.2), steps=300)[-1]
    right = trajectory(dw, gd, start=(1.8, 1.2), steps=300)[-1]
    assert dw.distance_to_minimum(left) < 1e-6
    assert np.hypot(*(right - np.array(dw.local_minima[0]))) < 1e-6


def test_himmelblau_minima_are_four_distinct_points():
    ms = landscapes.himmelblau.minima
    assert len(ms) == 4
    for a, b in itertools.combinations(ms, 2):
        assert np.hypot(a[0] - b[0], a[1] - b[1]) > 1.0


def test_trajectory_validates_arguments():
    with pytest.raises(ValueError, match="steps"):
        trajectory(landscapes.ravine, lambda p: torch.optim.SGD(p, lr=0.1), steps=-1)
    with pytest.raises(ValueError, match="start"):
        trajectory(lambda p: (p**2).sum(), lambda p: torch.optim.SGD(p, lr=0.1), steps=1)


def test_plots_draw_without_error():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = trajectory(landscapes.rosenbrock, lambda p: torch.optim.Adam(p, lr=0.05), steps=10)
    ax = landscapes.plot_trajectories(landscapes.rosenbrock, {"adam": path})
    labels = [line.get_label() for line in ax.get_lines()]
    assert "adam" in labels and "global minimum" in labels
    plt.close("all")
