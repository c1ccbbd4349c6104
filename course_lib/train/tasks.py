"""Training and scoring for the stand-in tasks of the recipes: sorting sequences, and a GAN on a ring.

A GAN has two losses pulling against each other, each network with its own optimizer and its own
backward pass, so :func:`train_gan` is its own loop rather than a :class:`~course_lib.train.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import ring_centres, ring_data

__all__ = ["gan_quality", "ring_share", "sequence_accuracy", "sequence_loss", "train_gan"]


def sequence_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean cross-entropy over every position of ``(tokens, targets)``: the trainer's ``loss_fn``."""
    tokens, targets = batch
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def sequence_accuracy(model: nn.Module, dataset: torch.utils.data.TensorDataset) -> tuple[float, float]:
    """``(token accuracy, whole-sequence accuracy)`` of ``model`` on ``dataset``, in eval mode."""
    was_training = model.training
    model.eval()
    tokens, targets = dataset.tensors
    device = next(model.parameters()).device
    right = model(tokens.to(device)).argmax(-1).cpu() == targets
    model.train(was_training)
    return right.float().mean().item(), right.all(dim=1).float().mean().item()


def train_gan(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    steps: int,
    batch_size: int = 128,
    latent: int = 2,
    seed: int = 0,
    data_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Alternate one discriminator step and one generator step, ``steps`` times (non-saturating loss).

    A GAN has two losses pulling against each other, so each network has its own optimizer and
    its own backward pass; this is why it does not fit a single-loss training loop. Real data and
    noise come from a generator seeded with ``seed``. ``on_step(t)``, if given, is called after
    step ``t`` (1, 2, ...), e.g. to measure the generator during training. Returns the losses per step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    g = torch.Generator().manual_seed(seed)
    data_kwargs = data_kwargs or {}
    ones = torch.ones(batch_size, 1)
    zeros = torch.zeros(batch_size, 1)
    history: dict[str, list[float]] = {"d_loss": [], "g_loss": []}
    for _ in range(steps):
        real = ring_data(batch_size, generator=g, **data_kwargs)
        fake = generator(torch.randn(batch_size, latent, generator=g))
        opt_d.zero_grad(set_to_none=True)
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real), ones) + F.binary_cross_entropy_with_logits(
            discriminator(fake.detach()), zeros
        )
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
        g_loss.backward()
        opt_g.step()
        history["d_loss"].append(d_loss.item())
        history["g_loss"].append(g_loss.item())
        if on_step is not None:
            on_step(len(history["d_loss"]))
    return history


@torch.no_grad()
def gan_quality(
    generator: nn.Module,
    n: int = 2000,
    latent: int = 2,
    modes: int = 8,
    radius: float = 2.0,
    std: float = 0.05,
    seed: int = 1234,
) -> tuple[int, float]:
    """``(modes covered, fraction of good samples)`` of ``n`` generated points.

    A sample is good if it lies within ``3 * std`` of a mode's centre; a mode is covered if it
    received at least a quarter of its fair share ``n / modes`` of good samples.
    """
    z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))
    points = generator(z)
    distances = torch.cdist(points, ring_centres(modes, radius))
    nearest = distances.min(dim=1)
    good = nearest.values < 3 * std
    counts = torch.bincount(nearest.indices[good], minlength=modes)
    return int((counts >= n / modes / 4).sum()), good.float().mean().item()


@torch.no_grad()
def ring_share(
    generator: nn.Module,
    n: int = 2000,
    latent: int = 2,
    radius: float = 2.0,
    tolerance: float = 0.3,
    seed: int = 1234,
) -> float:
    """The fraction of ``n`` generated points whose distance from the origin is within ``tolerance`` of ``radius``.

    A coarser measure than :func:`gan_quality`: it asks whether the samples lie on the ring at
    all, wherever on it, so it shows progress before the modes separate.
    """
    if n < 1 or tolerance <= 0:
        raise ValueError(f"need n >= 1 and tolerance > 0, got n={n}, tolerance={tolerance}")
    z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))
    return ((generator(z).norm(dim=1) - radius).abs() < tolerance).float().mean().item()
