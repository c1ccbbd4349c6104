"""Two-dimensional test functions with known answers, optimizer trajectories on them, and their plots.

Each :class:`Landscape` is a loss surface :math:`f: \\mathbb{R}^2 \\to \\mathbb{R}` that shows one feature
of real loss surfaces (a ravine, a curved valley, a saddle, a plateau, several minima) and whose
stationary points are known in closed form, so that every picture a lesson draws can be checked.

Used first in lesson 01 (gradient descent and the loss landscape) and by every optimizer lesson after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "Landscape",
    "ravine",
    "rosenbrock",
    "beale",
    "saddle",
    "plateau",
    "himmelblau",
    "tilted_double_well",
    "LANDSCAPES",
    "trajectory",
    "plot_landscape",
    "plot_trajectories",
]

Point = tuple[float, float]


@dataclass(frozen=True)
class Landscape:
    """A loss surface with its closed-form gradient and its known stationary points.

    ``f`` and ``grad`` take a tensor whose last dimension is 2 (a point, or a grid of points) and are
    written with torch operations, so autograd works through ``f`` as well.
    """

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    minima: tuple[Point, ...]
    """Global minimizers."""
    min_value: float
    """The value of ``f`` at every global minimizer."""
    start: Point
    """A starting point that shows the feature the landscape is for."""
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    local_minima: tuple[Point, ...] = ()
    """Minimizers that are not global."""
    saddles: tuple[Point, ...] = ()
    log_levels: bool = False
    """Draw contours on a log scale (for surfaces whose values span many decades)."""
    feature: str = ""
    """The feature of real loss surfaces this function stands for."""
    extra: dict = field(default_factory=dict)

    def __call__(self, xy: torch.Tensor) -> torch.Tensor:
        return self.f(xy)

    def distance_to_minimum(self, xy: Sequence[float] | torch.Tensor) -> float:
        """Euclidean distance from ``xy`` to the nearest global minimizer."""
        p = torch.as_tensor(xy, dtype=torch.float64).reshape(2)
        return min(float(torch.linalg.vector_norm(p - torch.tensor(m, dtype=torch.float64))) for m in self.minima)


def _xy(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if p.shape[-1] != 2:
        raise ValueError(f"a landscape takes points whose last dimension is 2, got shape {tuple(p.shape)}")
    return p[..., 0], p[..., 1]


# --- a ravine: an ill-conditioned quadratic -------------------------------------------------------
RAVINE_CURVATURES = (1.0, 20.0)


def _ravine_f(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    a, b = RAVINE_CURVATURES
    return 0.5 * (a * x**2 + b * y**2)


def _ravine_grad(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    a, b = RAVINE_CURVATURES
    return torch.stack([a * x, b * y], dim=-1)


ravine = Landscape(
    name="ravine",
    f=_ravine_f,
    grad=_ravine_grad,
    minima=((0.0, 0.0),),
    min_value=0.0,
    start=(-4.5, 1.0),
    xlim=(-5.0, 5.0),
    ylim=(-2.0, 2.0),
    feature="ravine: curvature 20 across the valley and 1 along it (condition number 20)",
    extra={"curvatures": RAVINE_CURVATURES},
)


# --- Rosenbrock's banana valley ---------------------------------------------------------------------
def _rosenbrock_f(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rosenbrock_grad(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)], dim=-1)


rosenbrock = Landscape(
    name="rosenbrock",
    f=_rosenbrock_f,
    grad=_rosenbrock_grad,
    minima=((1.0, 1.0),),
    min_value=0.0,
    start=(-1.5, 2.0),
    xlim=(-2.0, 2.0),
    ylim=(-1.0, 3.0),
    log_levels=True,
    feature="curved ravine: a narrow, bent valley with a nearly flat floor",
)


# --- Beale: flat plains and steep walls ------------------------------------------------------------
_BEALE_C = (1.5, 2.25, 2.625)


def _beale_f(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return sum((c - x + x * y ** (i + 1)) ** 2 for i, c in enumerate(_BEALE_C))


def _beale_grad(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(y)
    for i, c in enumerate(_BEALE_C):
        k = i + 1
        r = c - x + x * y**k
        gx = gx + 2 * r * (y**k - 1)
        gy = gy + 2 * r * k * x * y ** (k - 1)
    return torch.stack([gx, gy], dim=-1)


beale = Landscape(
    name="beale",
    f=_beale_f,
    grad=_beale_grad,
    minima=((3.0, 0.5),),
    min_value=0.0,
    start=(-1.0, 1.5),
    xlim=(-4.5, 4.5),
    ylim=(-4.5, 4.5),
    saddles=((0.0, 1.0),),
    log_levels=True,
    feature="plateaus and cliffs: values span five decades; a saddle at (0, 1)",
)


# --- a saddle with two minima beside it ------------------------------------------------------------
def _saddle_f(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return x**2 + 0.25 * y**4 - 0.5 * y**2


def _saddle_grad(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return torch.stack([2 * x, y**3 - y], dim=-1)


saddle = Landscape(
    name="saddle",
    f=_saddle_f,
    grad=_saddle_grad,
    minima=((0.0, -1.0), (0.0, 1.0)),
    min_value=-0.25,
    start=(1.5, 1e-3),
    xlim=(-2.0, 2.0),
    ylim=(-1.8, 1.8),
    saddles=((0.0, 0.0),),
    feature="saddle point at the origin: a minimum along x, a maximum along y",
)


# --- a plateau: a Gaussian well in a flat plain ----------------------------------------------------
def _plateau_f(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return 1 - torch.exp(-(x**2 + y**2) / 2)


def _plateau_grad(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    e = torch.exp(-(x**2 + y**2) / 2)
    return torch.stack([x * e, y * e], dim=-1)


plateau = Landscape(
    name="plateau",
    f=_plateau_f,
    grad=_plateau_grad,
    minima=((0.0, 0.0),),
    min_value=0.0,
    start=(3.5, 2.0),
    xlim=(-4.0, 4.0),
    ylim=(-4.0, 4.0),
    feature="plateau: far from the well the gradient is almost zero",
)


# --- Himmelblau: four global minima ----------------------------------------------------------------
def _himmelblau_f(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _himmelblau_grad(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    a = x**2 + y - 11
    b = x + y**2 - 7
    return torch.stack([4 * x * a + 2 * b, 2 * a + 4 * y * b], dim=-1)


def _himmelblau_minima() -> tuple[Point, ...]:
    # (3, 2) is exact; the other three are roots of the polynomial system, polished here by Newton's
    # method from the published approximations so that they are exact to float64.
    approx = [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
    out = []
    for x0 in approx:
        p = torch.tensor(x0, dtype=torch.float64)
        for _ in range(20):
            jac = torch.autograd.functional.jacobian(_himmelblau_grad, p)
            p = p - torch.linalg.solve(jac, _himmelblau_grad(p))
        out.append((float(p[0]), float(p[1])))
    return tuple(out)


himmelblau = Landscape(
    name="himmelblau",
    f=_himmelblau_f,
    grad=_himmelblau_grad,
    minima=_himmelblau_minima(),
    min_value=0.0,
    start=(-0.3, -0.9),
    xlim=(-5.0, 5.0),
    ylim=(-5.0, 5.0),
    log_levels=True,
    feature="several minima: four global minima of equal value; where you end depends on where you start",
)


# --- a tilted double well: a local minimum, a saddle and a global minimum ------------------------
TILT = 0.5


def _double_well_f(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return (x**2 - 1) ** 2 + TILT * x + y**2


def _double_well_grad(p: torch.Tensor) -> torch.Tensor:
    x, y = _xy(p)
    return torch.stack([4 * x**3 - 4 * x + TILT, 2 * y], dim=-1)


def _double_well_points() -> tuple[float, float, float]:
    # Stationary points have y = 0 and 4x^3 - 4x + TILT = 0: three real roots, in increasing order the
    # global minimum, the saddle and the local minimum.
    roots = np.sort(np.roots([4.0, 0.0, -4.0, TILT]).real)
    return float(roots[0]), float(roots[1]), float(roots[2])


_dw_global, _dw_saddle, _dw_local = _double_well_points()
tilted_double_well = Landscape(
    name="tilted_double_well",
    f=_double_well_f,
    grad=_double_well_grad,
    minima=((_dw_global, 0.0),),
    min_value=float((_dw_global**2 - 1) ** 2 + TILT * _dw_global),
    start=(1.8, 1.2),
    xlim=(-2.0, 2.0),
    ylim=(-1.5, 1.5),
    local_minima=((_dw_local, 0.0),),
    saddles=((_dw_saddle, 0.0),),
    feature="a local minimum that is not global, separated from the global one by a saddle",
    extra={"tilt": TILT},
)

LANDSCAPES: dict[str, Landscape] = {
    ls.name: ls for ls in (ravine, rosenbrock, beale, saddle, plateau, himmelblau, tilted_double_well)
}


def trajectory(
    landscape: Callable[[torch.Tensor], torch.Tensor],
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    start: Sequence[float] | None = None,
    steps: int = 100,
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    """Run an optimizer on a 2-D function and return the visited points, shape ``(steps + 1, 2)``.

    ``make_optimizer`` receives the parameter list and returns any ``torch.optim.Optimizer``, e.g.
    ``lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9)``. The run stops early (and the
    path is shortened) if the point leaves the float range, so divergence shows as a short path
    rather than an error.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if start is None:
        if not isinstance(landscape, Landscape):
            raise ValueError("start is required when the function is not a Landscape")
        start = landscape.start
    p = torch.tensor(start, dtype=dtype).reshape(2).requires_grad_(True)
    opt = make_optimizer([p])
    path = [p.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        loss = landscape(p)
        loss.backward()
        opt.step()
        point = p.detach().clone()
        if not torch.isfinite(point).all():
            break
        path.append(point)
    return torch.stack(path).numpy()


def _grid(landscape: Landscape, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = torch.linspace(*landscape.xlim, n, dtype=torch.float64)
    ys = torch.linspace(*landscape.ylim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = landscape(torch.stack([gx, gy], dim=-1))
    return gx.numpy(), gy.numpy(), z.numpy()


def plot_landscape(landscape: Landscape, ax=None, n: int = 200, levels: int = 30, mark_points: bool = True):
    """Draw the contours of a landscape, with its minima (stars) and saddles (crosses). Returns ``ax``."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    gx, gy, z = _grid(landscape, n)
    if landscape.log_levels:
        shifted = z - landscape.min_value + 1e-3
        lv = np.logspace(math.log10(shifted.min()), math.log10(shifted.max()), levels)
        ax.contour(gx, gy, shifted, levels=lv, norm=LogNorm(), cmap="viridis", linewidths=0.7)
    else:
        ax.contour(gx, gy, z, levels=levels, cmap="viridis", linewidths=0.7)
    if mark_points:
        for i, m in enumerate(landscape.minima):
            ax.plot(*m, marker="*", color="k", ms=12, ls="none", label="global minimum" if i == 0 else None)
        for i, m in enumerate(landscape.local_minima):
            ax.plot(*m, marker="*", color="0.5", ms=10, ls="none", label="local minimum" if i == 0 else None)
        for i, s in enumerate(landscape.saddles):
            ax.plot(*s, marker="X", color="crimson", ms=8, ls="none", label="saddle" if i == 0 else None)
    ax.set_xlim(*landscape.xlim)
    ax.set_ylim(*landscape.ylim)
    ax.set_xlabel(r"$\theta_1$")
    ax.set_ylabel(r"$\theta_2$")
    ax.set_title(landscape.name)
    return ax


def plot_trajectories(
    landscape: Landscape,
    paths: dict[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    ax=None,
    **kwargs,
):
    """Contours of ``landscape`` with one line per named path (from :func:`trajectory`). Returns ``ax``."""
    ax = plot_landscape(landscape, ax=ax, **kwargs)
    items = paths.items() if isinstance(paths, dict) else paths
    for name, path in items:
        ax.plot(path[:, 0], path[:, 1], marker=".", ms=3, lw=1.2, label=name)
        ax.plot(path[0, 0], path[0, 1], marker="o", color="k", ms=4)
    ax.legend(fontsize=8, loc="best")
    return ax
