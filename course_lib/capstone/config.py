"""The capstone's settings: one dataclass, and named presets from a smoke test to the paper's scale."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..models.qwen import QwenConfig

__all__ = ["PRESETS", "CapstoneConfig", "capstone_config"]


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
