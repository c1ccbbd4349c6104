r"""The capstone's experiment runner: layer-adaptive AdamW against AdamW on a Qwen-style LM.

One call, :func:`run_variant`, trains one optimizer variant with one seed and returns what
the capstone's tables need::

    cfg = capstone_config("smoke", out_dir="runs/smoke")
    result = run_variant("layer_adaptive", seed=0, cfg=cfg)
    result["val_loss"], result["tokens_per_s"], result["mfu"]

The variants (:data:`VARIANTS`) differ in the optimizer alone:

* ``"adamw"``: the baseline, :class:`~course_lib.optim.layer_adaptive.LayerAdaptiveAdamW`
  with every multiplier 1 and a constant epsilon. That *is* torch's ``AdamW`` (the tests
  check it bit for bit against ``"torch_adamw"``), and using the same class, the same param
  groups and the same kernel for all variants leaves the two changes under study as the
  only difference between runs;
* ``"layer_adaptive"``: the paper's method, per-block learning-rate multipliers
  (:func:`~course_lib.optim.layer_adaptive.linear_multipliers`, 1.0 to 1.2) and the
  epsilon schedule of its equation 2
  (:class:`~course_lib.optim.layer_adaptive.PaperEpsScheduler`);
* ``"multipliers_only"`` and ``"eps_only"``: the paper's ablations, one change each;
* ``"control"``: the baseline with eps multiplied by ``1 + 1e-6``, a change too small to matter.
  How far its loss lands from the baseline's shows how large a difference chance alone makes
  (training is chaotic: a change in the last digits grows into a different run);
* ``"torch_adamw"``: ``torch.optim.AdamW`` itself, as a reference.

Everything else is shared and seeded: the model's initial weights come from ``seed``, the
batches are a function of ``(seed, step)`` (:class:`course_lib.text.TokenBatches`), so two
variants with the same seed see the same data in the same order. Training goes through
:class:`course_lib.trainer.Trainer`: warmup-cosine learning rate, gradient clipping,
periodic evaluation on a fixed validation slice, a checkpoint every ``checkpoint_every``
steps and exact resume: running the same command again after a kill continues from the
last checkpoint and ends with the same weights as an uninterrupted run. With ``log_evals``
(on for every preset but ``smoke``) each evaluation prints a line with the losses, the
throughput since the previous line and, on a GPU of known peak, the MFU (:class:`EvalLog`),
so a long run shows its speed from its first evaluation on.

:func:`paired_comparison` turns the per-seed loss differences into a verdict: a paired
t-test (:func:`t_quantile` gives Student's t quantiles without SciPy) and a comparison
with the noise that the ``"control"`` variant measures.

On a GPU the runner uses bf16 autocast, ``torch.compile`` and the fused AdamW kernel, and
reports the model FLOPs utilization (MFU) against the GPU's bf16 peak
(:data:`PEAK_BF16_TFLOPS`). Under ``torchrun`` each process trains on its own slice of every
batch through ``DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs); rank 0 writes the
results. ``python -m course_lib.capstone --help`` lists the command-line options.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from course_lib import text
from course_lib.models.qwen import QwenConfig, QwenLM, count_parameters, flops_per_token, lm_loss
from course_lib.optim.layer_adaptive import (
    LayerAdaptiveAdamW,
    PaperEpsScheduler,
    layer_param_groups,
    linear_multipliers,
)
from course_lib.schedules import WarmupCosineLR
from course_lib.trainer import Callback, TrainConfig, Trainer, evaluate
from course_lib.utils import pick_device, seed_everything

__all__ = [
    "PAPER_VARIANTS",
    "PEAK_BF16_TFLOPS",
    "PRESETS",
    "VARIANTS",
    "CapstoneConfig",
    "EpsProbe",
    "EvalLog",
    "StepBatches",
    "Variant",
    "build_optimizer",
    "capstone_config",
    "load_run",
    "main",
    "merge_results",
    "mfu",
    "paired_comparison",
    "peak_bf16_tflops",
    "prepare_data",
    "run_variant",
    "sqrt_v_hat",
    "t_cdf",
    "t_quantile",
]


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """What an optimizer variant changes: per-block LR multipliers, the eps schedule, or neither.

    ``eps_factor`` multiplies the configured eps (the control); ``torch_adamw`` uses
    ``torch.optim.AdamW`` instead of :class:`LayerAdaptiveAdamW`.
    """

    multipliers: bool
    eps_schedule: bool
    eps_factor: float = 1.0
    torch_adamw: bool = False


VARIANTS: dict[str, Variant] = {
    "adamw": Variant(multipliers=False, eps_schedule=False),
    "layer_adaptive": Variant(multipliers=True, eps_schedule=True),
    "multipliers_only": Variant(multipliers=True, eps_schedule=False),
    "eps_only": Variant(multipliers=False, eps_schedule=True),
    "control": Variant(multipliers=False, eps_schedule=False, eps_factor=1 + 1e-6),
    "torch_adamw": Variant(multipliers=False, eps_schedule=False, torch_adamw=True),
}
"""The optimizer variants; the first four are the paper's baseline, method and two ablations."""

PAPER_VARIANTS: tuple[str, ...] = ("adamw", "layer_adaptive", "multipliers_only", "eps_only")


# ----------------------------------------------------------------------------- MFU

PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    # (regular expression on torch.cuda.get_device_name(), dense bf16 tensor-core TFLOP/s)
    # NVIDIA's data sheets list bf16 "with sparsity"; the dense peak is half of that figure.
    # Sources: the NVIDIA H100 Tensor Core GPU data sheet (SXM, PCIe and NVL columns), the
    # NVIDIA H200 Tensor Core GPU data sheet (SXM and NVL), the NVIDIA HGX B200 / DGX B200
    # data sheets (per GPU), the A100, L40S, L4 and A10 data sheets.
    # Checked in order: the first match wins. None: a variant whose peak this table does not
    # know (so MFU is reported as unknown rather than against a wrong peak).
    (r"\bH200\b.*\bNVL\b", 835.5),    # H200 NVL: 1671 sparse
    (r"\bH200\b", 989.4),             # H200 SXM: 1979 sparse
    (r"\bH100\b.*\bPCIe\b", 756.0),   # H100 PCIe: 1513 sparse
    (r"\bH100\b.*\bNVL\b", 835.5),    # H100 NVL (94 GB, PCIe card): 1671 sparse
    (r"\bH100\b", 989.4),             # H100 SXM ("NVIDIA H100 80GB HBM3"): 1979 sparse
    (r"\bB200\b", 2250.0),            # B200 (HGX, 1000 W): 4.5 PFLOP/s sparse; not GB200
    (r"\bA100\b", 312.0),             # A100 SXM and PCIe, 40 and 80 GB: 624 sparse
    (r"\bL40S\b", 362.05),            # L40S: 733 sparse
    (r"\bL4\b", 121.0),               # L4: 242 sparse
    (r"\bA10\b", 125.0),              # A10 (not A10G, not A100): 250 sparse
)
"""Dense bf16 peak of some NVIDIA data-center GPUs, matched on the device name."""


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named ``device_name``; ``None`` if unknown or no name."""
    if not device_name:
        return None
    for pattern, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, device_name: str | None,
        n_devices: int = 1) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over the peak of ``n_devices`` GPUs of that name.

    ``tokens_per_s`` counts the tokens of all devices together; ``flops_per_tok`` is the
    training cost of one token (:func:`course_lib.models.qwen.flops_per_token`). ``None``
    when the peak is unknown (a CPU, or a GPU missing from :data:`PEAK_BF16_TFLOPS`).
    """
    peak = peak_bf16_tflops(device_name)
    if peak is None:
        return None
    return tokens_per_s * flops_per_tok / (peak * 1e12 * n_devices)


# ----------------------------------------------------------------------------- statistics


def _t_abs_cdf(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) tan(theta)) for Student's t with an integer number ``df`` of degrees of freedom.

    The closed forms of Abramowitz and Stegun, 26.7.3 and 26.7.4: a finite series in
    cos(theta), odd and even ``df`` apart.
    """
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, c  # cos + (2/3) cos^3 + (2*4)/(3*5) cos^5 + ... + cos^(df-2)
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * j) / (2 * j + 1)
        return 2 / math.pi * (theta + s * total)
    total, term = 0.0, 1.0  # 1 + (1/2) cos^2 + (1*3)/(2*4) cos^4 + ... + cos^(df-2)
    for j in range(df // 2):
        total += term
        term *= c * c * (2 * j + 1) / (2 * j + 2)
    return s * total


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t distribution with ``df`` degrees of freedom (an integer in [1, 10000])."""
    if not (isinstance(x, (int, float)) and math.isfinite(x)):
        raise ValueError(f"x must be a finite number, got {x!r}")
    if isinstance(df, bool) or not isinstance(df, int) or not 1 <= df <= 10_000:
        raise ValueError(f"df must be an integer in [1, 10000], got {df!r}")
    half = _t_abs_cdf(math.atan(abs(x) / math.sqrt(df)), df) / 2
    return 0.5 + half if x >= 0 else 0.5 - half


def t_quantile(prob: float, df: int) -> float:
    """The ``prob`` quantile of Student's t distribution with ``df`` degrees of freedom (an integer).

    ``t_quantile(0.975, n - 1)`` is the factor of a two-sided 95 % confidence interval for the
    mean of ``n`` values: mean +- t * sd / sqrt(n). 4.303 for 3 values, 12.71 for 2, 1.96 in
    the limit. The CDF has a closed form for integer ``df`` (:func:`_t_abs_cdf`); the quantile
    is found by bisection, to full double precision, so no SciPy is needed.
    """
    if not (isinstance(prob, (int, float)) and 0 < prob < 1):
        raise ValueError(f"prob must be a number in (0, 1), got {prob!r}")
    if isinstance(df, bool) or not isinstance(df, int) or not 1 <= df <= 10_000:
        raise ValueError(f"df must be an integer in [1, 10000], got {df!r}")
    if prob < 0.5:
        return -t_quantile(1 - prob, df)
    target = 2 * prob - 1  # P(|T| <= t)
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _t_abs_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def paired_comparison(diffs: Sequence[float], control_diffs: Sequence[float] | None = None,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Is a variant's loss different from the baseline's? ``diffs``: variant minus baseline, one per seed.

    Two tests, both at ``confidence``; the verdict is ``"higher"`` or ``"lower"`` (the
    variant's loss) only if both find a difference, else ``"none"`` (``"too few seeds"`` with
    one seed):

    1. the paired t-test: ``|mean|`` must exceed ``t * sd / sqrt(n)``, with ``t`` the
       quantile of Student's t with ``n - 1`` degrees of freedom (``half_width``);
    2. the control: ``control_diffs`` are the control variant's differences from the same
       baseline runs, a change that does nothing, so they show how far apart two runs land
       by chance alone. Their root mean square about zero, ``control_rms``, estimates that
       noise with ``len(control_diffs)`` degrees of freedom, independently of the variant's
       own (perhaps luckily small) spread; ``|mean|`` must also exceed
       ``t * control_rms / sqrt(n)`` (``control_half_width``). This is approximate: the
       control's and the variant's differences share the baseline's runs.

    Returns ``n``, ``mean``, ``sd``, ``half_width``, ``control_rms``,
    ``control_half_width`` (``None`` without a control), ``significant`` (test 1),
    ``beyond_control`` (test 2; ``None`` without a control) and ``verdict``.
    """
    d = [float(x) for x in diffs]
    if not d or not all(math.isfinite(x) for x in d):
        raise ValueError(f"diffs must hold at least one finite number, got {list(diffs)!r}")
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    n = len(d)
    upper = 1 - (1 - confidence) / 2
    mean = sum(d) / n
    out: dict[str, Any] = {"n": n, "mean": mean, "sd": float("nan"), "half_width": float("nan"),
                           "control_rms": None, "control_half_width": None,
                           "significant": False, "beyond_control": None}
    if n >= 2:
        out["sd"] = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        out["half_width"] = t_quantile(upper, n - 1) * out["sd"] / math.sqrt(n)
        out["significant"] = abs(mean) > out["half_width"]
    if control_diffs is not None:
        c = [float(x) for x in control_diffs]
        if not c or not all(math.isfinite(x) for x in c):
            raise ValueError(f"control_diffs must hold at least one finite number, got {list(control_diffs)!r}")
        out["control_rms"] = math.sqrt(sum(x * x for x in c) / len(c))
        out["control_half_width"] = t_quantile(upper, len(c)) * out["control_rms"] / math.sqrt(n)
        out["beyond_control"] = abs(mean) > out["control_half_width"]
    if n < 2:
        out["verdict"] = "too few seeds"
    elif out["significant"] and out["beyond_control"] is not False:
        out["verdict"] = "higher" if mean > 0 else "lower"
    else:
        out["verdict"] = "none"
    return out


# ----------------------------------------------------------------------------- configuration


@dataclass
class CapstoneConfig:
    """Everything a run needs; :func:`capstone_config` fills it from a preset.

    Batches: ``batch_size`` sequences of ``seq_len`` tokens per optimizer step, over all
    processes together; each process splits its share into micro-batches of
    ``micro_batch_size`` (``None``: its whole share at once) and accumulates their gradients.
    The batch of step ``s`` is the same whatever the number of processes or micro-batches.

    The optimizer follows the paper where it says something (betas (0.9, 0.95), weight decay
    0.1, eps 1e-8 falling to 1e-9, multipliers in 1.0-1.2, gradient clipping); the learning
    rate is the paper's 3e-4 for the paper preset and larger for the small presets, which
    train for far fewer steps. Warmup and cosine floor are not in the paper: 5 % of the steps
    and 10 % of the peak here.
    """

    preset: str = "smoke"
    out_dir: str = "capstone_runs"
    data_dir: str | None = None  # None: <out_dir>/data
    model: dict[str, Any] = field(default_factory=dict)  # QwenConfig preset name under "preset"
    steps: int = 60
    batch_size: int = 8
    micro_batch_size: int | None = None
    seq_len: int | None = None  # None: the model's max_seq_len
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.1
    clip_norm: float | None = 1.0
    mult_first: float = 1.0
    mult_last: float = 1.2
    eps_min: float = 1e-9
    eps_warmup: int = 200
    eps_decay: int = 200
    eps_alpha: float = 0.1
    source: str = "python"
    tokenizer: str = "bpe"
    vocab_size: int = 257  # of the BPE tokenizer; GPT-2's is fixed at 50257
    max_bytes: int | None = 1_000_000
    bpe_sample_bytes: int = 4_000_000
    eval_every: int = 15
    eval_batches: int = 2
    eval_batch_size: int = 32
    probe_every: int | None = 15
    checkpoint_every: int | None = 30
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str | None = None  # None: CUDA when present (pick_device), else CPU
    precision: str | None = None  # None: bf16 on CUDA, fp32 elsewhere
    compile: bool | None = None  # None: torch.compile on CUDA
    progress: bool = False
    log_evals: bool = True  # print a line (losses, tokens/s, MFU) at every evaluation

    def model_config(self, vocab_size: int | None = None) -> QwenConfig:
        """The :class:`QwenConfig`: the preset named ``model["preset"]`` with the other keys as overrides."""
        overrides = dict(self.model)
        name = overrides.pop("preset", self.preset)
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        return QwenConfig.preset(name, **overrides)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the trained weights; a checkpoint resumes only under the same ones."""
        skip = {"out_dir", "data_dir", "device", "compile", "checkpoint_every", "progress", "seeds",
                "log_evals"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds per run on a laptop CPU: a 0.1M-parameter model on the bytes of 300 kB of Python
    # source, 40 steps, one validation batch per evaluation. Fewer steps would end the runs
    # before the control's rounding-level perturbation has grown into a visible difference.
    # (Compiling would cost more than it saves, on a GPU too.)
    "smoke": dict(model={"preset": "smoke"}, steps=40, batch_size=8, lr=1e-2, vocab_size=257,
                  max_bytes=300_000, eval_every=10, eval_batches=1, eval_batch_size=32,
                  probe_every=10, checkpoint_every=20, seeds=(0, 1, 2), compile=False,
                  log_evals=False),
    # Minutes per run on a CPU: 1.3M parameters, a 4096-token BPE.
    "cpu": dict(model={"preset": "cpu"}, steps=300, batch_size=16, lr=3e-3, vocab_size=4096,
                max_bytes=8_000_000, bpe_sample_bytes=2_000_000, eval_every=50, eval_batches=8,
                eval_batch_size=32, probe_every=50, checkpoint_every=100, seeds=(0, 1, 2),
                compile=False),
    # One GPU, all four variants and three seeds in minutes: 24.7M parameters, context 512,
    # 32768 tokens per step (39M tokens per run), the whole offline corpus (about 90 MB of text).
    "gpu": dict(model={"preset": "gpu"}, steps=1200, batch_size=64, lr=1e-3, vocab_size=4096,
                max_bytes=None, eval_every=200, eval_batches=16, eval_batch_size=64,
                probe_every=200, checkpoint_every=400, seeds=(0, 1, 2)),
    # The paper's scale: 12 layers, width 768, context 1024, 512 sequences per step, 2.7B
    # tokens (5150 steps), FineWeb with GPT-2's tokenizer, lr 3e-4; 8 GPUs in the paper.
    "paper": dict(model={"preset": "paper"}, steps=5150, batch_size=512, micro_batch_size=16,
                  lr=3e-4, source="fineweb", tokenizer="gpt2", max_bytes=12_000_000_000,
                  eval_every=250, eval_batches=40, eval_batch_size=32, probe_every=250,
                  checkpoint_every=250, seeds=(0, 1, 2)),
}
"""Named settings for :func:`capstone_config`."""


def capstone_config(preset: str = "smoke", **overrides: Any) -> CapstoneConfig:
    """A :class:`CapstoneConfig` from a preset of :data:`PRESETS`; keyword arguments override fields.

    ``model`` overrides are merged into the preset's (``model={"n_layers": 4}`` keeps the
    preset's other sizes). ``None`` values are ignored, so notebook parameters that default
    to ``None`` mean "the preset's value".
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    known = {f.name for f in dataclasses.fields(CapstoneConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; the settings are {sorted(known)}")
    values: dict[str, Any] = {"preset": preset, **PRESETS[preset]}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "model":
            values["model"] = {**values.get("model", {}), **value}
        else:
            values[key] = value
    if "seeds" in values:
        values["seeds"] = tuple(int(s) for s in values["seeds"])
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return CapstoneConfig(**values)


# ----------------------------------------------------------------------------- distributed


def _world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _device_for(cfg: CapstoneConfig) -> torch.device:
    """The device of this process: ``cfg.device`` or pick_device(); a bare "cuda" becomes ``cuda:LOCAL_RANK`` under torchrun."""
    device = pick_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


# ----------------------------------------------------------------------------- data


def _data_dir(cfg: CapstoneConfig) -> Path:
    return Path(cfg.data_dir) if cfg.data_dir is not None else Path(cfg.out_dir) / "data"


def prepare_data(cfg: CapstoneConfig) -> tuple[Path, dict]:
    """Build (or reuse) the token shards for ``cfg``: rank 0 builds, the others wait. Returns (folder, meta)."""
    data_dir = _data_dir(cfg)
    rank, _ = _world()
    if rank == 0:
        text.prepare_corpus(data_dir, source=cfg.source, tokenizer=cfg.tokenizer,
                            vocab_size=cfg.vocab_size, max_bytes=cfg.max_bytes,
                            bpe_sample_bytes=cfg.bpe_sample_bytes)
    _barrier()
    return data_dir, json.loads((data_dir / "meta.json").read_text())


class StepBatches:
    """Micro-batches for :class:`~course_lib.trainer.Trainer`: this process's share of each step's batch.

    Optimizer step ``s`` uses the batch ``TokenBatches(batch_size)[s]`` (a function of the
    seed and ``s``). Process ``rank`` of ``world`` takes rows ``rank * share`` to
    ``(rank + 1) * share`` of it and serves them as ``accumulation`` micro-batches, each a
    tuple ``(x, y, last)`` where ``last`` marks the step's final micro-batch (DDP
    synchronizes gradients only there). Micro-batch ``k`` belongs to step
    ``k // accumulation``, so a resumed trainer continues with the right batch.
    """

    def __init__(self, tokens: Any, cfg: CapstoneConfig, seq_len: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        if cfg.batch_size % world != 0:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of "
                             f"processes ({world})")
        self.share = cfg.batch_size // world
        self.micro = cfg.micro_batch_size or self.share
        if self.share % self.micro != 0:
            raise ValueError(f"micro_batch_size ({self.micro}) must divide each process's share "
                             f"of the batch ({cfg.batch_size} / {world} = {self.share})")
        self.accumulation = self.share // self.micro
        self.rank = rank
        self.source = text.TokenBatches(tokens, cfg.batch_size, seq_len, seed=seed)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        if epoch != 0:
            raise ValueError(f"epoch must be 0 (one endless epoch), got {epoch!r}")
        k, cached = start, -1
        while True:
            step, j = divmod(k, self.accumulation)
            if step != cached:  # draw each step's batch once, not once per micro-batch
                x, y = self.source[step]
                cached = step
            lo = self.rank * self.share + j * self.micro
            yield x[lo:lo + self.micro], y[lo:lo + self.micro], j == self.accumulation - 1
            k += 1


# ----------------------------------------------------------------------------- optimizer


def build_optimizer(model: QwenLM, variant: str, cfg: CapstoneConfig,
                    fused: bool = False) -> tuple[torch.optim.Optimizer, list[Any]]:
    """The optimizer and the per-step schedulers of a variant (see :data:`VARIANTS`).

    Every variant gets the same param groups (one multiplier per block, weight decay on the
    ``Linear`` weight matrices only) and a warmup-cosine learning rate. The multipliers are
    1 unless the variant uses them; the eps schedule is added only for the variants that use
    it. ``fused`` selects torch's fused AdamW kernel (GPUs).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    spec = VARIANTS[variant]
    n_layers = len(model.layers)
    mults = (linear_multipliers(n_layers, cfg.mult_first, cfg.mult_last) if spec.multipliers
             else [1.0] * n_layers)
    groups = layer_param_groups(model, mults, weight_decay=cfg.weight_decay)
    kwargs: dict[str, Any] = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps * spec.eps_factor,
                                  weight_decay=cfg.weight_decay)
    if fused:
        kwargs["fused"] = True
    optimizer_cls = torch.optim.AdamW if spec.torch_adamw else LayerAdaptiveAdamW
    optimizer = optimizer_cls(groups, **kwargs)
    warmup = max(1, round(cfg.warmup_frac * cfg.steps))
    schedulers: list[Any] = [WarmupCosineLR(optimizer, warmup, cfg.steps, cfg.min_lr_ratio)]
    if spec.eps_schedule:
        schedulers.append(PaperEpsScheduler(optimizer, eps_min=cfg.eps_min, warmup=cfg.eps_warmup,
                                            decay=cfg.eps_decay, alpha=cfg.eps_alpha))
    return optimizer, schedulers


# ----------------------------------------------------------------------------- probe


@torch.no_grad()
def sqrt_v_hat(optimizer: torch.optim.Optimizer) -> dict[torch.Tensor, torch.Tensor]:
    r""":math:`\sqrt{\hat v_t} = \sqrt{v_t / (1 - \beta_2^t)}` of every parameter an Adam-type optimizer has stepped.

    The denominator of Adam's update is :math:`\sqrt{\hat v_t} + \epsilon`; keys are the
    parameters, values float32 tensors of their shape.
    """
    out = {}
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "exp_avg_sq" in state:
                t = float(state["step"])
                out[p] = (state["exp_avg_sq"].float() / (1 - beta2**t)).sqrt()
    return out


class EpsProbe(Callback):
    r"""Every ``every`` steps (and after the first), compare Adam's :math:`\epsilon` with :math:`\sqrt{\hat v_t}`.

    AdamW divides by :math:`\sqrt{\hat v_t} + \epsilon`, so :math:`\epsilon` shrinks an
    entry's step by the factor :math:`\sqrt{\hat v_t} / (\sqrt{\hat v_t} + \epsilon)`: by
    more than 1 % only where :math:`\sqrt{\hat v_t} < 99\,\epsilon`. The probe appends to
    the trainer's history (so the records survive a resume):

    - ``probe_step``: the step just taken;
    - ``probe_eps``: the eps of param group 0 that the next step will use;
    - ``probe_sqrt_v``: the quantiles :attr:`QUANTILES` of :math:`\sqrt{\hat v_t}` over all
      entries of all parameters (the minimum exact; the others from at most ``max_entries``
      evenly spaced entries);
    - ``probe_ratio``: the smallest :math:`\sqrt{\hat v_t} / \epsilon`;
    - ``probe_frac``: the fraction of entries whose step eps shrinks by more than 1 %.
    """

    QUANTILES = (0.0, 0.001, 0.01, 0.1, 0.5)
    KEYS = ("probe_step", "probe_eps", "probe_sqrt_v", "probe_ratio", "probe_frac")

    def __init__(self, every: int, max_entries: int = 1 << 22) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every = every
        self.max_entries = max_entries

    @torch.no_grad()
    def measure(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """eps of group 0, quantiles of sqrt(v_hat), the smallest ratio, the fraction affected by > 1 %."""
        eps = float(optimizer.param_groups[0]["eps"])
        values = torch.cat([v.flatten() for v in sqrt_v_hat(optimizer).values()])
        smallest = float(values.min())
        frac = float((values < 99 * eps).float().mean())
        if values.numel() > self.max_entries:
            values = values[:: math.ceil(values.numel() / self.max_entries)]
        values = values.sort().values
        n = values.numel()
        quantiles = [float(values[min(n - 1, round(q * (n - 1)))]) for q in self.QUANTILES]
        quantiles[0] = smallest
        return {"probe_eps": eps, "probe_sqrt_v": quantiles, "probe_ratio": smallest / eps,
                "probe_frac": frac}

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step % self.every != 0 and trainer.step != 1:
            return
        record = {"probe_step": trainer.step, **self.measure(trainer.optimizer)}
        for key in self.KEYS:
            trainer.history.setdefault(key, []).append(record[key])


# ----------------------------------------------------------------------------- the run


class _RankZeroTrainer(Trainer):
    """A Trainer whose checkpoints are written by rank 0 alone, the other ranks waiting for it."""

    def save_checkpoint(self, path: str | Path) -> None:
        if _world()[0] == 0:
            super().save_checkpoint(path)
        _barrier()


def _run_dir(cfg: CapstoneConfig, variant: str, seed: int) -> Path:
    return Path(cfg.out_dir) / "runs" / f"{variant}-seed{seed}"


def _tokens_per_s(history: dict[str, list], seq_len: int, world: int, start: int,
                  stop: int | None = None) -> float:
    """Training tokens per second of all processes together over the history entries ``start:stop``.

    Each step's time is the trainer's measurement of that step (evaluation and checkpoints
    are not counted); ``examples`` counts this process's share of the batches.
    """
    rates = history["examples_per_s"][start:stop]
    if not rates:
        return float("nan")
    examples = history["examples"]
    per_step = [e1 - e0 for e0, e1 in zip([0] + examples[:-1], examples)][start:stop]
    seconds = sum(n / r for n, r in zip(per_step, rates))
    return world * seq_len * sum(per_step) / seconds


def _steady_tokens_per_s(history: dict[str, list], seq_len: int, world: int,
                         skip_frac: float = 0.1) -> float:
    """Training tokens per second of all processes together, leaving out the first ``skip_frac`` of the steps.

    The first steps pay for compilation and cold caches.
    """
    n = len(history["examples_per_s"])
    return _tokens_per_s(history, seq_len, world, start=min(max(n - 1, 0), int(skip_frac * n)))


class EvalLog(Callback):
    """At every evaluation, print one line: step, losses, throughput and MFU since the previous line.

    The throughput counts the training steps since the previous line (evaluation and
    checkpoint time left out), all processes together; the first step after :meth:`begin`
    is left out of the first line, since it pays for compilation and cold caches. The MFU is
    shown when the GPU's peak is known (:func:`mfu`). The remaining time extrapolates the
    wall time per step since the previous line, evaluations included. ``print_fn`` receives
    each line (``print`` by default).
    """

    def __init__(self, label: str, total_steps: int, seq_len: int, world: int = 1,
                 flops_per_tok: float | None = None, device_name: str | None = None,
                 print_fn: Any = None) -> None:
        self.label = label
        self.total_steps = total_steps
        self.seq_len = seq_len
        self.world = world
        self.flops_per_tok = flops_per_tok
        self.device_name = device_name
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self.next_index = 0  # the first history entry of the next line's window
        self.first_fresh = 0  # the history entry of this process's first step

    def begin(self, trainer: Trainer) -> None:
        """Call before ``fit``: the steps already in the history (a resumed run) are not this process's."""
        self.next_index = self.first_fresh = len(trainer.history["step"])

    def on_eval(self, trainer: Trainer, val_loss: float) -> None:
        h = trainer.history
        stop = len(h["step"])
        start = self.next_index
        if start == self.first_fresh and stop - start > 1:
            start += 1  # compilation and cold caches
        self.next_index = stop
        tokens_per_s = _tokens_per_s(h, self.seq_len, self.world, start, stop)
        parts = [f"{self.label} | step {trainer.step:>{len(str(self.total_steps))}}/{self.total_steps}",
                 f"val loss {val_loss:.4f}"]
        if stop:
            parts.append(f"train loss {h['loss'][stop - 1]:.4f}")
        parts.append(f"{tokens_per_s:,.0f} tokens/s")
        if self.flops_per_tok is not None:
            value = mfu(tokens_per_s, self.flops_per_tok, self.device_name, self.world)
            if value is not None:
                parts.append(f"MFU {value:.1%}")
        elapsed = h["time"][stop - 1] if stop else 0.0
        parts.append(f"{_clock(elapsed)} elapsed")
        if stop > start and stop >= 2 and trainer.step < self.total_steps:
            lo = max(start - 1, 0)
            per_step = (h["time"][stop - 1] - h["time"][lo]) / max(stop - 1 - lo, 1)
            parts.append(f"about {_clock(per_step * (self.total_steps - trainer.step))} to go")
        self.print_fn(" | ".join(parts))


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_variant(variant: str, seed: int, cfg: CapstoneConfig,
                callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train one variant with one seed; return its result (and, on rank 0, write it to the run's folder).

    The run lives in ``<out_dir>/runs/<variant>-seed<seed>/``: ``config.json``,
    ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end) and ``result.json``.
    If a checkpoint is there, the run resumes from it (after checking that the settings are
    the same), so re-running the same command after a kill finishes the interrupted run, and
    re-running a finished run just reads it back. ``callbacks`` are passed to the trainer.

    The result holds ``name``, ``seed``, ``val_loss`` (the last evaluation), ``tokens_per_s``
    (all processes, steady state), ``mfu`` (``None`` on a CPU or an unknown GPU), ``steps``,
    ``tokens`` (trained on), ``params``, ``curve`` (``[step, val_loss]`` pairs),
    ``train_loss`` (per step, of rank 0's share of the batch), ``lr``, ``eps_probe`` (see
    :class:`EpsProbe`) and what ran it: ``device``, ``device_name``, ``world_size``,
    ``precision``, ``compiled``, ``seconds``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    rank, world = _world()
    device = _device_for(cfg)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.set_device(device)
    precision = cfg.precision or ("bf16" if on_cuda else "fp32")
    use_compile = on_cuda if cfg.compile is None else cfg.compile

    data_dir, meta = prepare_data(cfg)
    run_dir = _run_dir(cfg, variant, seed)
    ckpt = run_dir / "checkpoint.pt"
    fingerprint = {"variant": variant, "seed": seed, **cfg.fingerprint()}
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back
    resume = ckpt.exists()
    if resume:
        saved = json.loads((run_dir / "config.json").read_text())
        if saved != fingerprint:
            changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            raise ValueError(f"{run_dir} holds a run with other settings ({changed}); use another "
                             f"out_dir or delete that folder")
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(fingerprint, indent=2))
    _barrier()

    model_cfg = cfg.model_config(vocab_size=meta["vocab_size"])
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    seed_everything(seed)
    model = QwenLM(model_cfg).to(device)
    # Compile the model, then wrap it in DDP, as PyTorch's guide to torch.compile advises
    # ("Where to apply torch.compile?": compile the module that DDP wraps, since the compiler
    # does not handle the wrapper itself well). DDP marks itself active during its forward,
    # and TorchDynamo then still splits the compiled graph at DDP's gradient buckets
    # (DDPOptimizer), so the all-reduce of one bucket overlaps the backward of the next.
    forward: nn.Module = torch.compile(model) if use_compile else model
    ddp = None
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if on_cuda else None)
        forward = ddp
    optimizer, schedulers = build_optimizer(model, variant, cfg, fused=on_cuda)

    def loss_fn(_model: nn.Module, batch: tuple) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if ddp is not None and len(batch) == 3:  # all-reduce gradients on the step's last micro-batch only
            ddp.require_backward_grad_sync = bool(batch[2])
        return lm_loss(forward(x), y)

    train_data = StepBatches(text.load_split(data_dir, "train"), cfg, seq_len, seed, rank, world)
    val_data = text.EvalBatches(text.load_split(data_dir, "val"), cfg.eval_batch_size, seq_len,
                                max_batches=cfg.eval_batches)
    own: list[Callback] = [EpsProbe(cfg.probe_every)] if cfg.probe_every else []
    device_name = torch.cuda.get_device_name(device) if on_cuda else None
    log = None
    if cfg.log_evals and rank == 0:
        log = EvalLog(f"{variant} seed {seed}", cfg.steps, seq_len, world,
                      flops_per_token(model_cfg, seq_len), device_name)
        own.append(log)
    trainer = _RankZeroTrainer(
        model, optimizer, loss_fn, train_data,
        TrainConfig(max_steps=cfg.steps, accumulation=train_data.accumulation,
                    clip_norm=cfg.clip_norm, precision=precision, eval_every=cfg.eval_every,
                    checkpoint_every=cfg.checkpoint_every, checkpoint_path=ckpt,
                    tokens_per_example=seq_len, progress=cfg.progress and rank == 0),
        scheduler=schedulers, val_data=val_data, callbacks=[*own, *callbacks])
    if resume:
        trainer.load_checkpoint(ckpt)
        # Checkpoints fall on step boundaries. Count the consumed micro-batches with this
        # run's accumulation, which changes with the number of processes, so that a run can
        # resume on another number of GPUs and still continue with the batch of the next step.
        trainer.batch_in_epoch = trainer.step * train_data.accumulation
    if log is not None:
        log.begin(trainer)
    started = time.perf_counter()
    history = trainer.fit()
    if not history["val_loss"] or history["eval_step"][-1] != trainer.step:
        # the result's val_loss is always that of the final weights
        history["eval_step"].append(trainer.step)
        history["val_loss"].append(evaluate(model, val_data, loss_fn, precision=precision))

    tokens_per_s = _steady_tokens_per_s(history, seq_len, world)
    result = {
        "name": variant,
        "seed": seed,
        "val_loss": history["val_loss"][-1],
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, flops_per_token(model_cfg, seq_len), device_name, world),
        "steps": trainer.step,
        "tokens": trainer.step * cfg.batch_size * seq_len,
        "params": count_parameters(model),
        "curve": [[s, v] for s, v in zip(history["eval_step"], history["val_loss"])],
        "train_loss": history["loss"],
        "lr": history["lr"],
        "eps_probe": {key: history.get(key, []) for key in EpsProbe.KEYS},
        "device": device.type,
        "device_name": device_name,
        "world_size": world,
        "precision": precision,
        "compiled": use_compile,
        "seconds": history["time"][-1] if history["time"] else 0.0,
        "seconds_this_call": time.perf_counter() - started,
    }
    if rank == 0:
        tmp = run_dir / f"result.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, run_dir / "result.json")
    _barrier()
    return result


def load_run(variant: str, seed: int, cfg: CapstoneConfig,
             device: str | torch.device = "cpu") -> tuple[QwenLM, torch.optim.Optimizer]:
    """The model and optimizer of a run, as its last checkpoint left them (for analysis)."""
    path = _run_dir(cfg, variant, seed) / "checkpoint.pt"
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}: run run_variant({variant!r}, {seed}, cfg) first")
    state = torch.load(path, map_location=device, weights_only=True)
    meta = json.loads((_data_dir(cfg) / "meta.json").read_text())
    model = QwenLM(cfg.model_config(vocab_size=meta["vocab_size"])).to(device)
    model.load_state_dict(state["model"])
    optimizer, _ = build_optimizer(model, variant, cfg)
    optimizer.load_state_dict(state["optimizer"])
    return model, optimizer


def merge_results(out_dir: str | Path, *, write: bool = True) -> dict[str, Any]:
    """Collect every run's ``result.json`` under ``out_dir/runs`` into ``out_dir/results.json``.

    Returns ``{"runs": [...]}``, one entry per finished run (variant and seed), sorted by
    variant and seed; per-step lists are left out of the merged file. Use it after a job
    array whose tasks each ran some of the variants and seeds into the same ``out_dir``.
    """
    out = Path(out_dir)
    runs = []
    for path in sorted((out / "runs").glob("*/result.json")):
        result = json.loads(path.read_text())
        runs.append({k: v for k, v in result.items() if k not in ("train_loss", "lr")})
    runs.sort(key=lambda r: (r["name"], r["seed"]))
    merged = {"runs": runs}
    if write:  # several jobs may merge into one folder: a temporary file of this process's own
        tmp = out / f"results.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(merged, indent=1))
        os.replace(tmp, out / "results.json")
    return merged


# ----------------------------------------------------------------------------- command line


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_lib.capstone`` (or under ``torchrun``): run variants x seeds, merge the results."""
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.capstone",
        description="Train the capstone's optimizer variants and write <out-dir>/results.json. "
                    "Under torchrun every process trains its slice of each batch (DDP).")
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--data-dir", default=None, help="token shards (default: <out-dir>/data)")
    parser.add_argument("--variants", nargs="+", default=[*PAPER_VARIANTS, "control"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override any setting, values in JSON: lr=1e-3 'model={\"n_layers\": 4}'")
    parser.add_argument("--prepare-only", action="store_true", help="build the token shards and stop")
    parser.add_argument("--merge-only", action="store_true", help="only merge finished runs into results.json")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(raw)
    cfg = capstone_config(args.preset, out_dir=args.out_dir, data_dir=args.data_dir,
                          steps=args.steps, seeds=args.seeds, **overrides)
    if args.merge_only:
        merged = merge_results(cfg.out_dir)
        print(f"merged {len(merged['runs'])} runs into {Path(cfg.out_dir) / 'results.json'}")
        return 0

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        use_cuda = pick_device(cfg.device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # rank 0 may spend long in prepare_data while the others wait in a barrier
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(hours=3))
    try:
        rank, world = _world()
        if args.prepare_only:
            data_dir, meta = prepare_data(cfg)
            if rank == 0:
                print(f"shards in {data_dir}: {json.dumps(meta['splits'])}")
            return 0
        for variant in args.variants:
            for seed in cfg.seeds:
                result = run_variant(variant, seed, cfg)
                if rank == 0:
                    mfu_text = "n/a" if result["mfu"] is None else f"{result['mfu']:.1%}"
                    print(f"{variant:>16} seed {seed}: val loss {result['val_loss']:.4f}, "
                          f"{result['tokens_per_s']:,.0f} tokens/s, MFU {mfu_text} "
                          f"({world} process{'es' if world > 1 else ''})", flush=True)
                    merge_results(cfg.out_dir)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
