"""One run of one optimizer variant with one seed, and the file that collects every run's results."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import shards
from ..models.qwen import QwenLM, count_parameters, flops_per_token
from ..schedules import WarmupCosineLR
from ..train import Callback, TrainConfig, Trainer, evaluate
from ..utils import seed_everything
from .config import CapstoneConfig
from .data import Prefetched, StepBatches, prepare_data, shard_dir
from .distributed import RankZeroTrainer, barrier, device_for, world
from .method import (VARIANTS, LayerAdaptiveAdamW, PaperEpsScheduler, layer_param_groups, linear_multipliers,
                     nudge_weights_)
from .mfu import mfu
from .report import environment

__all__ = ["EpsProbe", "EvalLog", "build_optimizer", "load_run", "run_variant", "sqrt_v_hat", "sync_every"]


def build_optimizer(model: QwenLM, variant: str, cfg: CapstoneConfig,
                    fused: bool = False) -> tuple[torch.optim.Optimizer, list[Any]]:
    """The optimizer and the per-step schedulers of a variant (see :data:`VARIANTS`).

    Every variant gets the same param groups (one multiplier per block, weight decay on the
    ``Linear`` weight matrices only) and a warmup-cosine learning rate (a linear warmup over
    ``warmup_frac`` of the steps, then a cosine to ``min_lr_ratio`` of the peak). The
    multipliers are 1 unless the variant uses them; the eps schedule is added only for the
    variants that use it. ``fused`` selects torch's fused AdamW kernel (GPUs).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    spec = VARIANTS[variant]
    n_layers = len(model.layers)
    mults = (linear_multipliers(n_layers, cfg.mult_first, cfg.mult_last) if spec.multipliers
             else [1.0] * n_layers)
    groups = layer_param_groups(model, mults, weight_decay=cfg.weight_decay)
    kwargs: dict[str, Any] = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
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


def sync_every(cfg: CapstoneConfig) -> int:
    """Steps between host syncs: ``cfg.sync_every``, or the largest interval that has one at every evaluation and probe.

    The trainer reads the loss back at every evaluation anyway; the eps probe reads the
    optimizer's state, which would wait for the device at a step without a sync, and the
    time it waited would go missing from the steps' time.
    """
    if cfg.sync_every is not None:
        return cfg.sync_every
    return math.gcd(cfg.eval_every, cfg.probe_every or cfg.eval_every)


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

    The first steps pay for compilation and cold caches. The window starts right after the
    first evaluation past them where there is one: steps between two host syncs are timed by
    the host, which runs ahead of the device, and only a window from one sync to another
    (every evaluation is one) holds exactly the device's time.
    """
    n = len(history["examples_per_s"])
    start = min(max(n - 1, 0), int(skip_frac * n))
    steps = history["step"]
    synced = [steps.index(s) + 1 for s in history.get("eval_step", []) if s in steps]
    after = [i for i in synced if start <= i < n]
    return _tokens_per_s(history, seq_len, world, start=after[0] if after else start)


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
    rank, world_size = world()
    device = device_for(cfg)
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
    barrier()

    model_cfg = cfg.model_config(vocab_size=meta["vocab_size"])
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    seed_everything(seed)
    model = QwenLM(model_cfg)
    if VARIANTS[variant].nudge_init:  # the control: the same weights, each moved by one float32 step
        nudge_weights_(model, seed)
    model = model.to(device)
    # Compile the model, then wrap it in DDP, as PyTorch's guide to torch.compile advises
    # ("Where to apply torch.compile?": compile the module that DDP wraps, since the compiler
    # does not handle the wrapper itself well). DDP marks itself active during its forward,
    # and TorchDynamo then still splits the compiled graph at DDP's gradient buckets
    # (DDPOptimizer), so the all-reduce of one bucket overlaps the backward of the next.
    # The compiled region ends with the loss (the model returns it when given the targets), so
    # the cross-entropy is compiled too and the batch's logits are never all in memory.
    forward: nn.Module = torch.compile(model, mode=cfg.compile_mode) if use_compile else model
    ddp = None
    if world_size > 1:
        ddp = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if on_cuda else None)
        forward = ddp
    optimizer, schedulers = build_optimizer(model, variant, cfg, fused=on_cuda)

    def loss_fn(_model: nn.Module, batch: tuple) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if ddp is not None and len(batch) == 3:  # all-reduce gradients on the step's last micro-batch only
            ddp.require_backward_grad_sync = bool(batch[2])
        return forward(x, y)

    train_data: Any = StepBatches(shards.load_split(data_dir, "train"), cfg, seq_len, seed, rank, world_size)
    prefetch = (2 if on_cuda else 0) if cfg.prefetch is None else cfg.prefetch
    if prefetch:  # the same batches, drawn ahead in a thread (pinned on a GPU, so copies are async)
        train_data = Prefetched(train_data, depth=prefetch, pin_memory=on_cuda)
    val_data = shards.EvalBatches(shards.load_split(data_dir, "val"), cfg.eval_batch_size, seq_len,
                                max_batches=cfg.eval_batches)
    own: list[Callback] = [EpsProbe(cfg.probe_every)] if cfg.probe_every else []
    device_name = torch.cuda.get_device_name(device) if on_cuda else None
    log = None
    if cfg.log_evals and rank == 0:
        log = EvalLog(f"{variant} seed {seed}", cfg.steps, seq_len, world_size,
                      flops_per_token(model_cfg, seq_len), device_name)
        own.append(log)
    trainer = RankZeroTrainer(
        model, optimizer, loss_fn, train_data,
        TrainConfig(max_steps=cfg.steps, accumulation=train_data.accumulation,
                    clip_norm=cfg.clip_norm or None, precision=precision, eval_every=cfg.eval_every,
                    checkpoint_every=cfg.checkpoint_every, checkpoint_path=ckpt,
                    tokens_per_example=seq_len, sync_every=sync_every(cfg),
                    progress=cfg.progress and rank == 0),
        scheduler=schedulers, val_data=val_data, callbacks=[*own, *callbacks])
    if resume:
        trainer.load_checkpoint(ckpt)
        # Checkpoints fall on step boundaries. Count the consumed micro-batches with this
        # run's accumulation, which changes with the number of processes, so that a run can
        # resume on another number of GPUs and still continue with the batch of the next step.
        trainer.batch_in_epoch = trainer.step * train_data.accumulation
    if log is not None:
        log.begin(trainer)
    started, started_at = time.perf_counter(), trainer.step
    history = trainer.fit()
    if not history["val_loss"] or history["eval_step"][-1] != trainer.step:
        # the result's val_loss is always that of the final weights
        history["eval_step"].append(trainer.step)
        history["val_loss"].append(evaluate(model, val_data, loss_fn, precision=precision))

    tokens_per_s = _steady_tokens_per_s(history, seq_len, world_size)
    finished_before = resume and started_at == cfg.steps and (run_dir / "result.json").exists()
    env = (json.loads((run_dir / "result.json").read_text()).get("environment") if finished_before
           else None) or environment(device)  # a finished run read back keeps the record of where it ran
    result = {
        "name": variant,
        "seed": seed,
        "val_loss": history["val_loss"][-1],
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, flops_per_token(model_cfg, seq_len), device_name, world_size),
        "steps": trainer.step,
        "tokens": trainer.step * cfg.batch_size * seq_len,
        "params": count_parameters(model),
        "curve": [[s, v] for s, v in zip(history["eval_step"], history["val_loss"])],
        "train_loss": history["loss"],
        "lr": history["lr"],
        "eps_probe": {key: history.get(key, []) for key in EpsProbe.KEYS},
        "device": device.type,
        "device_name": device_name,
        "world_size": world_size,
        "precision": precision,
        "compiled": use_compile,
        "compile_mode": cfg.compile_mode if use_compile else None,
        "seconds": history["time"][-1] if history["time"] else 0.0,
        "seconds_this_call": time.perf_counter() - started,
        "config": {"variant": variant, "seed": seed, **cfg.resolved()},
        "environment": env,
    }
    if rank == 0:
        tmp = run_dir / f"result.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, run_dir / "result.json")
    barrier()
    return result


def load_run(variant: str, seed: int, cfg: CapstoneConfig,
             device: str | torch.device = "cpu") -> tuple[QwenLM, torch.optim.Optimizer]:
    """The model and optimizer of a run, as its last checkpoint left them (for analysis)."""
    path = _run_dir(cfg, variant, seed) / "checkpoint.pt"
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}: run run_variant({variant!r}, {seed}, cfg) first")
    state = torch.load(path, map_location=device, weights_only=True)
    meta = json.loads((shard_dir(cfg) / "meta.json").read_text())
    model = QwenLM(cfg.model_config(vocab_size=meta["vocab_size"])).to(device)
    model.load_state_dict(state["model"])
    optimizer, _ = build_optimizer(model, variant, cfg)
    optimizer.load_state_dict(state["optimizer"])
    return model, optimizer
