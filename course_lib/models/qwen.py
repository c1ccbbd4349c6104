"""A small Qwen-style decoder-only language model.

The architecture follows Qwen2 (itself a Llama-style transformer):

* pre-normalization with RMSNorm, ``y = x / sqrt(mean(x**2) + eps) * w``;
* rotary position embeddings (RoPE) on queries and keys, no learned positions;
* grouped-query attention (GQA): ``n_heads`` query heads share ``n_kv_heads`` key/value heads;
* a bias on the q, k and v projections only (the output projection and the MLP have none);
* a SwiGLU MLP, ``down(silu(gate(x)) * up(x))``;
* the output head reuses the token-embedding matrix (tied embeddings);
* causal attention through ``torch.nn.functional.scaled_dot_product_attention``.

Weights start as in GPT-2: normal with std 0.02, biases zero, norm gains one; optionally the two
projections that write into the residual stream (attention output, MLP down) use
``0.02 / sqrt(2 * n_layers)`` so that the residual's variance does not grow with depth
(Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", section 2.3).

Used by the capstone. ``QwenConfig.preset`` holds the sizes it trains.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PRESETS",
    "QwenConfig",
    "QwenLM",
    "RMSNorm",
    "apply_rope",
    "count_parameters",
    "flops_per_token",
    "lm_loss",
    "rope_cos_sin",
]


@dataclass(frozen=True)
class QwenConfig:
    """Sizes of a :class:`QwenLM`.

    ``d_ff`` is the SwiGLU hidden width; ``8/3 * d_model`` gives the MLP the same parameter count
    as a GELU MLP of width ``4 * d_model`` (three matrices instead of two).
    """

    vocab_size: int = 4096
    n_layers: int = 8
    d_model: int = 512
    n_heads: int = 8
    n_kv_heads: int = 2
    d_ff: int = 1408
    max_seq_len: int = 512
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    scaled_residual_init: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff",
                     "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads != 0 or (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads into an even head size (RoPE rotates "
                f"pairs), got d_model={self.d_model}, n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_kv_heads must divide n_heads, got n_kv_heads={self.n_kv_heads}, "
                f"n_heads={self.n_heads}"
            )
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides: object) -> QwenConfig:
        """A named size from :data:`PRESETS`; keyword arguments override single fields."""
        if name not in PRESETS:
            raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, QwenConfig] = {
    # ~0.11M parameters with a byte vocabulary: a training step takes milliseconds on a CPU.
    "smoke": QwenConfig(vocab_size=257, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                        d_ff=176, max_seq_len=64),
    # ~1.3M parameters: lessons on a laptop CPU.
    "cpu": QwenConfig(vocab_size=4096, n_layers=4, d_model=128, n_heads=4, n_kv_heads=2,
                      d_ff=352, max_seq_len=128),
    # ~24.7M parameters, context 512: the capstone's GPU runs, sized so that its four variants
    # train in about 8 minutes on one H100 (flops_per_token gives the arithmetic).
    "gpu": QwenConfig(vocab_size=4096, n_layers=8, d_model=512, n_heads=8, n_kv_heads=2,
                      d_ff=1408, max_seq_len=512),
    # The paper's shape: 12 layers, width 768, 12 heads, context 1024. The paper gives neither
    # the MLP width nor the number of key/value heads: 8/3 * 768 = 2048 and plain multi-head
    # attention are this preset's choices.
    "paper": QwenConfig(vocab_size=4096, n_layers=12, d_model=768, n_heads=12, n_kv_heads=12,
                        d_ff=2048, max_seq_len=1024),
}


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``x / sqrt(mean(x**2) + eps) * weight``.

    Computed in float32 (or float64) and cast back, so bfloat16 activations keep their scale.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x if x.dtype == torch.float64 else x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def rope_cos_sin(seq_len: int, head_dim: int, theta: float = 10_000.0, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotary angles, each of shape ``(seq_len, head_dim)``.

    Pair ``i`` of a head (coordinates ``i`` and ``i + head_dim/2``, the "rotate half" layout of
    GPT-NeoX, Llama and Qwen) turns by the angle ``pos * theta**(-2i/head_dim)``.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=work) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=work), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + d/2) coordinate pair of ``x`` (..., T, d) by its angle.

    ``x * cos + rotate_half(x) * sin`` with ``rotate_half([x1, x2]) = [-x2, x1]``: a rotation,
    so norms are kept, and ``<R_m q, R_n k>`` depends on ``m - n`` only (Su et al. 2021, RoFormer).
    """
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary embeddings and a q/k/v bias."""

    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        kv_dim = config.n_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=True)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=True)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=True)
        self.o_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Query head h reads key/value head h // group (as in Qwen2 and Llama): repeat each kv
        # head `group` times. A plain expand keeps every SDPA backend available on torch >= 2.5.
        group = self.n_heads // self.n_kv_heads
        if group > 1:
            k = k[:, :, None].expand(batch, self.n_kv_heads, group, seq, self.head_dim)
            v = v[:, :, None].expand(batch, self.n_kv_heads, group, seq, self.head_dim)
            k = k.reshape(batch, self.n_heads, seq, self.head_dim)
            v = v.reshape(batch, self.n_heads, seq, self.head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, -1))


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` without biases (Shazeer 2020, "GLU Variants")."""

    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One transformer layer: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class QwenLM(nn.Module):
    """Token ids ``(batch, seq)`` -> next-token logits ``(batch, seq, vocab_size)``."""

    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: one matrix, two uses
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialization; see the module docstring. A model on the ``meta`` device is left alone.

        Meta tensors hold shapes and no values (what :func:`count_parameters` builds), and
        "initializing" them runs torch's slow reference implementations for nothing.
        """
        if self.embed.weight.is_meta:
            return
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if self.config.scaled_residual_init:
            for block in self.layers:
                nn.init.normal_(block.attn.o_proj.weight, mean=0.0, std=residual_std)
                nn.init.normal_(block.mlp.down_proj.weight, mean=0.0, std=residual_std)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"input_ids must have shape (batch, seq) with 1 <= seq <= max_seq_len="
                f"{self.config.max_seq_len}, got {tuple(input_ids.shape)}"
            )
        x = self.embed(input_ids)
        cos, sin = rope_cos_sin(input_ids.shape[1], self.config.head_dim, self.config.rope_theta,
                                device=x.device, dtype=x.dtype)
        for block in self.layers:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) of logits (B, T, V) against targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def count_parameters(model: nn.Module | QwenConfig, *, count_tied_twice: bool = False) -> int:
    """Number of parameters of a module, or of a :class:`QwenLM` built from a config.

    A tied matrix is one tensor and is counted once; ``count_tied_twice=True`` counts it once per
    use, which is what a model with an untied output head would have. A config is built on the
    ``meta`` device, so even the paper's size costs no memory.
    """
    if isinstance(model, QwenConfig):
        with torch.device("meta"):
            model = QwenLM(model)
    params = model.named_parameters(remove_duplicate=not count_tied_twice)
    return sum(p.numel() for _, p in params)


def flops_per_token(config: QwenConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token, ``6 N + 12 L d T`` (PaLM, Chowdhery et al. 2022, appendix B).

    ``6 N``: each parameter takes part in one multiply-add (2 FLOPs) in the forward pass and two in
    the backward pass (Kaplan et al. 2020, section 2.1). ``N`` counts the tied matrix once: the
    input lookup costs nothing and the output head is one matmul. ``12 L d T``: the ``Q K^T``
    and ``A V`` products, ``2 * 2 * d * T`` FLOPs per token and layer forward, times 3 for the
    backward. Like PaLM this counts the whole ``T x T`` score matrix; a causal kernel skips
    about half of it, so measured MFU with this count is comparable with PaLM's and nanoGPT's.
    Divide tokens/s * flops_per_token by the accelerator's peak FLOP/s to get MFU.
    """
    seq = config.max_seq_len if seq_len is None else seq_len
    if not isinstance(seq, int) or seq < 1:
        raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}")
    n = count_parameters(config)
    return 6.0 * n + 12.0 * config.n_layers * config.d_model * seq
