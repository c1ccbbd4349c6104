"""Where a training step's time goes: whole steps through the trainer, then its parts one by one.

:func:`step_breakdown` builds a run's model, optimizer and data exactly as :func:`run_variant`
does and measures two things:

1. **whole steps**, through :class:`course_lib.train.Trainer` with no host sync until the last
   step: tokens per second and MFU as training sees them, the time to draw the data included;
2. **the parts of a step**, the same step written out with the device synchronized after each
   part: drawing the batch and copying it to the device, forward and backward, measuring and
   clipping the gradient norm, the optimizer step. The synchronizations cost a little, parts
   that overlap in a whole step (the next batch is drawn while the device computes) are
   counted one after the other here, and the trainer's own bookkeeping is left out, so the
   parts need not add up to a whole step.

:func:`matmul_tflops` measures the best rate of one large matrix product on the device, the
ceiling that a data sheet's peak stands for. ``make gpu-check`` (``benchmarks/gpu_check.py``)
calls both.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import shards
from ..models.qwen import QwenLM, count_parameters, flops_per_token
from ..train import TrainConfig, Trainer
from ..train.trainer import _autocast, clip_grad_norm_with_, grad_norm, move_to
from ..utils import seed_everything
from .config import CapstoneConfig
from .data import Prefetched, StepBatches, prepare_data
from .distributed import device_for
from .mfu import mfu, peak_bf16_tflops
from .run import build_optimizer

__all__ = ["matmul_tflops", "step_breakdown"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device | str, n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                  repeats: int = 20) -> float:
    """The best TFLOP/s of an ``n x n`` by ``n x n`` product in ``dtype`` on ``device``, over ``repeats`` tries.

    Each product is ``2 n^3`` floating-point operations.
    """
    device = torch.device(device)
    if not isinstance(n, int) or n < 1 or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"n and repeats must be integers >= 1, got n={n!r}, repeats={repeats!r}")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up (cuBLAS picks its kernel)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e12


def _random_tokens(vocab_size: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uniformly random token ids: data for a throughput probe, where the text does not matter."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=n, dtype=np.uint16)


def step_breakdown(cfg: CapstoneConfig, variant: str = "adamw", *, steps: int = 20, warmup: int = 3,
                   random_tokens: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Time whole training steps and their parts for the model, optimizer and batches of ``cfg``.

    ``random_tokens``: train on random ids of this vocabulary size instead of ``cfg``'s token
    shards (the paper's shape with GPT-2's 50257 ids needs no download then). ``warmup``
    steps come first, untimed (they compile the model and fill the caches), in both
    measurements. Returns a dict: the device, the model's size, ``tokens_per_step``,
    ``flops_per_token``, ``whole_step`` (``ms``, ``tokens_per_s``, ``mfu``), ``parts_ms``
    (``data``, ``forward_backward``, ``clip``, ``optimizer``: the mean over ``steps``),
    ``parts_total_ms``, ``compile_and_warmup_s``, ``peak_memory_gb`` (CUDA) and ``precision``.
    """
    for name, value in (("steps", steps), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    device = device_for(cfg)
    on_cuda = device.type == "cuda"
    precision = cfg.precision or ("bf16" if on_cuda else "fp32")
    use_compile = on_cuda if cfg.compile is None else cfg.compile
    if random_tokens is None:
        data_dir, meta = prepare_data(cfg)
        tokens, vocab = shards.load_split(data_dir, "train"), meta["vocab_size"]
    else:
        vocab = random_tokens
        model_cfg = cfg.model_config(vocab_size=vocab)
        seq = cfg.seq_len or model_cfg.max_seq_len
        tokens = _random_tokens(vocab, max(1 << 20, 4 * cfg.batch_size * (seq + 1)), seed)
    model_cfg = cfg.model_config(vocab_size=vocab)
    seq_len = cfg.seq_len or model_cfg.max_seq_len

    def build() -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, list[Any], Any]:
        seed_everything(seed)
        model = QwenLM(model_cfg).to(device)
        forward = torch.compile(model, mode=cfg.compile_mode) if use_compile else model
        optimizer, schedulers = build_optimizer(model, variant, cfg, fused=on_cuda)
        data: Any = StepBatches(tokens, cfg, seq_len, seed)
        prefetch = (2 if on_cuda else 0) if cfg.prefetch is None else cfg.prefetch
        if prefetch:
            data = Prefetched(data, depth=prefetch, pin_memory=on_cuda)
        return model, forward, optimizer, schedulers, data

    def loss_fn(forward: nn.Module) -> Any:
        return lambda _model, batch: forward(batch[0], batch[1])

    # 1. whole steps, through the trainer: warm up, then time `steps` steps with one sync at the end
    model, forward, optimizer, schedulers, data = build()
    trainer = Trainer(model, optimizer, loss_fn(forward), data,
                      TrainConfig(max_steps=warmup, accumulation=data.accumulation, precision=precision,
                                  clip_norm=cfg.clip_norm or None, sync_every=warmup + steps),
                      scheduler=schedulers)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    trainer.fit()
    compile_seconds = time.perf_counter() - started
    trainer.config.max_steps = warmup + steps
    started = time.perf_counter()
    trainer.fit()  # the last step reads the losses back: the time covers the device's work
    whole = (time.perf_counter() - started) / steps
    tokens_per_step = cfg.batch_size * seq_len
    flops_tok = flops_per_token(model_cfg, seq_len)
    device_name = torch.cuda.get_device_name(device) if on_cuda else None

    # 2. the parts of a step, the device synchronized after each
    parts: dict[str, list[float]] = {"data": [], "forward_backward": [], "clip": [], "optimizer": []}
    params = [p for p in model.parameters() if p.requires_grad]
    batches = data.batches(0, trainer.batch_in_epoch)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        micro = [move_to(next(batches), device) for _ in range(data.accumulation)]
        _sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for batch in micro:
            with _autocast(device, precision):
                loss = forward(batch[0], batch[1]) / len(micro)
            loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        norm = grad_norm(params)
        if cfg.clip_norm:
            clip_grad_norm_with_(params, cfg.clip_norm, norm)
        _sync(device)
        t3 = time.perf_counter()
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        _sync(device)
        t4 = time.perf_counter()
        if i >= warmup:
            for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(seconds)
    batches.close()
    parts_ms = {key: 1e3 * statistics.mean(values) for key, values in parts.items()}
    tokens_per_s = tokens_per_step / whole
    return {
        "device": device.type,
        "device_name": device_name,
        "peak_bf16_tflops": peak_bf16_tflops(device_name),
        "variant": variant,
        "precision": precision,
        "compiled": use_compile,
        "compile_mode": cfg.compile_mode if use_compile else None,
        "model": {"n_layers": model_cfg.n_layers, "d_model": model_cfg.d_model, "n_heads": model_cfg.n_heads,
                  "n_kv_heads": model_cfg.n_kv_heads, "d_ff": model_cfg.d_ff, "vocab_size": vocab,
                  "seq_len": seq_len, "params": count_parameters(model_cfg)},
        "batch_size": cfg.batch_size,
        "micro_batch_size": cfg.micro_batch_size or cfg.batch_size,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_tok,
        "steps_timed": steps,
        "compile_and_warmup_s": compile_seconds,
        "whole_step": {"ms": 1e3 * whole, "tokens_per_s": tokens_per_s,
                       "mfu": mfu(tokens_per_s, flops_tok, device_name)},
        "parts_ms": parts_ms,
        "parts_total_ms": sum(parts_ms.values()),
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None,
    }
