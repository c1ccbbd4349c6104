"""A small Qwen-style decoder-only language model.

The architecture follows Qwen2 (itself a Llama-style transformer):

* pre-normalization with RMSNorm, ``y = x / sqrt(mean(x**2) + eps) * w``;
* rotary position embeddings (RoPE) on queries and keys, no learned positions;
* grouped-query attention (GQA): ``n_heads`` query heads share ``n_kv_heads`` key/value heads;
* a bias on the q, k and v projections only (the output projection and the MLP have none);
* a SwiGLU MLP, ``down(silu(gate(x)) * up(x))``;
* the output head reuses the token-embedding matrix (tied embeddings);
* causal attention through ``torch.nn.functional.scaled_dot_product_attention``;
* with targets, ``model(input_ids, targets)`` returns the mean next-token loss, computed by
  :func:`linear_cross_entropy` from the final hidden states in chunks of tokens, so that the
  logits of the whole batch never exist at once (and never in float32).

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
from typing import Any

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
    "gqa_kernel_applies",
    "linear_cross_entropy",
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


# scaled_dot_product_attention(..., enable_gqa=True) exists from torch 2.5 on.
SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def gqa_kernel_applies(q: torch.Tensor) -> bool:
    """Whether SDPA's own grouped-query path is the fast one for ``q``: a CUDA GPU with FlashAttention, in fp16 or bf16.

    FlashAttention (compute capability 8.0 and newer, half precision) reads each key/value head
    once for its whole group of query heads. Everywhere else (a CPU, float32, older GPUs) SDPA
    would serve ``enable_gqa=True`` with its unfused "math" kernel, slower than repeating the
    key/value heads and using a fused kernel (PyTorch pull request 181528 measures this).
    """
    return (SDPA_HAS_GQA and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_properties(q.device).major >= 8)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary embeddings and a q/k/v bias.

    ``gqa_kernel``: ``None`` (default) lets :func:`gqa_kernel_applies` choose between SDPA's
    grouped-query kernel and repeated key/value heads; ``True`` or ``False`` forces one (the
    tests compare the two).
    """

    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.gqa_kernel: bool | None = None
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
        # Query head h reads key/value head h // group (as in Qwen2 and Llama).
        group = self.n_heads // self.n_kv_heads
        use_kernel = gqa_kernel_applies(q) if self.gqa_kernel is None else self.gqa_kernel
        if group > 1 and use_kernel:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            if group > 1:  # repeat each kv head `group` times (a view until the reshape copies it)
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

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(batch, seq, vocab_size)``; with ``targets`` ``(batch, seq)``, the mean next-token loss instead.

        The loss goes through :func:`linear_cross_entropy`: the same value as
        ``lm_loss(model(input_ids), targets)`` to float32 rounding, without the batch's logits.
        """
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
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)
        if targets.shape != input_ids.shape:
            raise ValueError(f"targets must have the shape of input_ids, {tuple(input_ids.shape)}, "
                             f"got {tuple(targets.shape)}")
        return linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten())


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _chunk_rows(vocab_size: int, budget: int = 1 << 25) -> int:
    """Tokens per chunk: at most ``budget`` logits (32M, 128 MB in float32), a multiple of 64 tokens if possible."""
    rows = budget // vocab_size
    return rows // 64 * 64 if rows >= 64 else max(1, rows)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T``; the gradients are computed in the forward pass, chunk by chunk.

    The idea of the fused linear cross-entropy of Liger Kernel (Hsu et al. 2024, "Liger Kernel:
    Efficient Triton Kernels for LLM Training"), in plain PyTorch: the gradient of the mean loss with
    respect to a chunk's logits is ``(softmax(logits) - onehot(targets)) / n``, known as soon
    as the chunk's logits are, so each chunk's logits are used for the loss and both gradients
    and dropped. Backward only scales the stored gradients by the incoming one.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        acc = torch.promote_types(weight.dtype, torch.float32)  # float32, or float64 for a double model
        loss = hidden.new_zeros((), dtype=acc)
        grad_hidden = []
        grad_weight = torch.zeros_like(weight, dtype=acc)
        for lo in range(0, n, chunk):
            h, t = hidden[lo:lo + chunk], targets[lo:lo + chunk]
            logits = _at_least_float32(h @ weight.T)  # under autocast a bf16 matmul, then float32
            lse = torch.logsumexp(logits, dim=-1)
            loss = loss + (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(mean loss)/d(logits) = (softmax - onehot) / n
            g = torch.exp(logits - lse[:, None])
            g = g.scatter_add(1, t[:, None], torch.full_like(g[:, :1], -1.0)) / n
            g = g.to(weight.dtype)  # autocast casts the matmuls' inputs to bf16 itself
            grad_hidden.append((g @ weight).to(hidden.dtype))
            grad_weight += g.T @ h
        ctx.save_for_backward(torch.cat(grad_hidden), grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss / n

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, (grad_weight * grad_loss).to(ctx.weight_dtype), None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` (n, V) against ``targets`` (n,), chunk by chunk.

    Equal to ``F.cross_entropy((hidden @ weight.T).float(), targets)`` to float32 rounding, but
    at most ``chunk`` rows of logits exist at a time (default: about 32M logits), each cast to
    float32 only for its own softmax. With gradients enabled, the gradients of ``hidden`` and
    ``weight`` are computed chunk by chunk in the forward pass (:class:`_LinearCrossEntropy`),
    so none of the logits is kept for the backward pass either: for the paper's shape (16
    sequences of 1024 tokens, GPT-2's 50257 ids) that saves 3.3 GB of float32 logits per
    micro-batch. Without gradients (evaluation) only the loss is computed.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (n, d) and weight (V, d) must share d, got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must have shape ({hidden.shape[0]},), got {tuple(targets.shape)}")
    chunk = _chunk_rows(weight.shape[0]) if chunk is None else chunk
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)
    total = hidden.new_zeros((), dtype=torch.promote_types(weight.dtype, torch.float32))
    for lo in range(0, hidden.shape[0], chunk):
        logits = _at_least_float32(hidden[lo:lo + chunk] @ weight.T)
        total = total + F.cross_entropy(logits, targets[lo:lo + chunk], reduction="sum")
    return total / hidden.shape[0]


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
