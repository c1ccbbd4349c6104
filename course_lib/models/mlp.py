"""Multilayer perceptrons and a small convolutional network, seeded so that a seed fixes the initial weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SmallConvNet", "mlp"]


def mlp(sizes: Sequence[int], seed: int = 0, activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> nn.Sequential:
    """``Linear - activation [- Dropout]`` for each hidden layer of ``sizes``, then a last ``Linear``.

    ``mlp([64, 128, 10])`` is one hidden layer of 128. The initial weights depend only on ``seed``.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {list(sizes)}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class SmallConvNet(nn.Module):
    """A small convolutional network for 1x8x8 images, in the style of a ResNet stem and stages.

    ``blocks[0]``: 3x3 convolution, BatchNorm, ReLU at 8x8; ``blocks[1]`` and ``blocks[2]``: the
    same with stride 2 (4x4, then 2x2) and twice the channels; ``head``: global average pooling and
    a linear layer. ``blocks`` and ``head`` are the parts that layer-wise learning rates address.
    """

    def __init__(self, n_classes: int = 10, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.blocks = nn.ModuleList([block(1, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)
