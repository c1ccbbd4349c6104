"""One look for every figure of the course."""

from __future__ import annotations

import matplotlib as mpl

__all__ = ["use_course_style", "COLORS"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def use_course_style() -> None:
    """Set matplotlib's defaults for the course: readable sizes, a light grid, a fixed color cycle."""
    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 120,
            "figure.constrained_layout.use": True,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=COLORS),
            "font.size": 10,
            "legend.frameon": False,
        }
    )
