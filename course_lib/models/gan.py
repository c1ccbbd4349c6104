"""A generator and a discriminator for two-dimensional data (the GAN recipe of lesson 11)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["gan_pair"]


def gan_pair(latent: int = 2, hidden: int = 64, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A generator (``latent`` -> 2, ReLU) and a discriminator (2 -> 1 logit, LeakyReLU 0.2), seeded."""
    torch.manual_seed(seed)
    generator = nn.Sequential(
        nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
    )
    discriminator = nn.Sequential(
        nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
    )
    return generator, discriminator
