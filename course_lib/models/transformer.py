"""Tiny transformers that train in seconds on a CPU: a sequence model and a vision transformer."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyTransformer", "TinyViT"]


class TinyTransformer(nn.Module):
    """A pre-norm transformer encoder that maps a token sequence to one prediction per position.

    Token embedding plus a learned position embedding, ``n_layers`` blocks of
    ``nn.TransformerEncoderLayer`` (``norm_first=True``, GELU), a final LayerNorm and a linear head.
    ``blocks``, ``norm`` and ``head`` are the parts that layer-wise learning rates address.
    """

    def __init__(
        self,
        vocab: int = 10,
        length: int = 8,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(length, d_model)
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model, n_heads, 4 * d_model, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(n_layers)
            ]
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class TinyViT(nn.Module):
    """A vision transformer for small square images: patches, pre-norm blocks, mean pooling.

    The image (``channels`` x ``image_size`` x ``image_size``) is cut into non-overlapping
    ``patch`` x ``patch`` squares, read row by row (:meth:`patches`). Each patch's pixels go
    through one linear layer (the patch embedding of ViT), plus a learned position embedding;
    then ``n_layers`` blocks of ``nn.TransformerEncoderLayer`` (``norm_first=True``, GELU), a
    final LayerNorm, the mean over the patches and a linear head. ViT reads its prediction from
    an extra class token instead; the mean is the simpler choice at this size. ``blocks``,
    ``norm`` and ``head`` are the parts that layer-wise learning rates address.
    """

    def __init__(
        self,
        image_size: int = 8,
        patch: int = 2,
        channels: int = 1,
        n_classes: int = 10,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 1,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(f"patch must be a divisor of image_size={image_size} in [1, {image_size}], got {patch}")
        torch.manual_seed(seed)
        self.image_size, self.patch, self.channels = image_size, patch, channels
        self.n_patches = (image_size // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, d_model)
        self.pos = nn.Embedding(self.n_patches, d_model)
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model, n_heads, 4 * d_model, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(n_layers)
            ]
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """``(batch, n_patches, channels * patch * patch)``: the patches row by row, each flattened channel-first."""
        p = self.patch
        x = images.unfold(2, p, p).unfold(3, p, p)  # (batch, channels, rows, cols, p, p)
        x = x.permute(0, 2, 3, 1, 4, 5)  # (batch, rows, cols, channels, p, p)
        return x.reshape(images.shape[0], self.n_patches, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.patches(images)) + self.pos.weight
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
