"""Generated data for the small stand-ins of published recipes: a sorting task, points on a ring."""

from __future__ import annotations

import math

import torch

__all__ = ["ring_centres", "ring_data", "sort_task"]


def sort_task(n: int, length: int = 8, vocab: int = 10, seed: int = 0) -> torch.utils.data.TensorDataset:
    """``n`` random sequences of ``length`` tokens from ``range(vocab)``; the target is the sorted sequence.

    Sorting needs every position to look at the whole sequence (to count how many tokens are
    smaller), so it exercises attention; it is learnable by a tiny transformer in a few hundred steps.
    """
    if n < 1 or length < 2 or vocab < 2:
        raise ValueError(f"need n >= 1, length >= 2, vocab >= 2; got {n}, {length}, {vocab}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    return torch.utils.data.TensorDataset(x, x.sort(dim=1).values)


def ring_centres(modes: int, radius: float) -> torch.Tensor:
    angles = 2 * math.pi * torch.arange(modes, dtype=torch.float32) / modes
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def ring_data(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points from a mixture of ``modes`` Gaussians (standard deviation ``std``) on a circle."""
    centres = ring_centres(modes, radius)
    which = torch.randint(0, modes, (n,), generator=generator)
    return centres[which] + std * torch.randn(n, 2, generator=generator)
