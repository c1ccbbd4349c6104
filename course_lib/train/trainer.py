"""One training loop for the lessons and the capstone.

A few lines train a model::

    data = SeededBatches(TensorDataset(X, y), batch_size=64, seed=0)   # course_lib.data
    trainer = Trainer(model, optimizer, supervised_loss(F.cross_entropy), data,
                      TrainConfig(epochs=5, clip_norm=1.0))
    history = trainer.fit()            # dict of lists: step, loss, lr, grad_norm, ...

What one optimizer step does (:meth:`Trainer.train_step`):

1. take ``accumulation`` micro-batches (fewer at the end of an epoch);
2. for each, ``loss_fn(model, batch)`` under autocast, weighted by its share of the
   examples of the group, and backward: the summed gradient is the gradient of the mean
   loss over all the group's examples, as if it were one big batch;
3. unscale (fp16) and measure the gradient norm, once;
4. stop with ``FloatingPointError`` naming the step (counted from 1, as in ``history``) and
   the loss or the parameter if a value is NaN or infinite, checked *before* clipping (clipping
   by norm would spread one NaN over every gradient);
5. clip by norm (with the norm just measured) or by value;
6. step the optimizer and the per-step schedulers. With fp16 the ``GradScaler`` skips a step
   whose gradients are not finite and lowers its scale; ``max_skipped_steps`` skips in a row
   stop the run.

Reading a number back from a GPU makes the Python loop wait for the GPU. By default the loss
and the gradient norm are read after every step; with ``sync_every=k`` they stay on the device
and are read for ``k`` steps at once (and before every evaluation, checkpoint and the end), so
the GPU is never idle waiting for the loop between those points. A step's time runs from the
moment its batches are requested to the end of its optimizer step, so ``examples_per_s``
counts the time spent drawing data.

Data order is resumable: ``train_data`` follows the :class:`~course_lib.data.batching.Batches`
protocol, ``batches(epoch, start)`` yields batch ``start``, ``start + 1``, ... of that epoch in an
order fixed by the epoch number alone (see :class:`~course_lib.data.batching.SeededBatches`). A checkpoint stores the epoch and the number of micro-batches
consumed, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from tqdm.auto import tqdm
except ImportError:  # a GPU node's environment may lack it: then there is no progress bar
    tqdm = None

from ..data.batching import epoch_batches
from .callbacks import Callback

__all__ = ["TrainConfig", "Trainer", "clip_grad_norm_with_", "count_examples", "evaluate", "grad_norm", "move_to",
           "supervised_loss"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def supervised_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LossFn:
    """``loss_fn`` for ``(inputs, targets)`` batches: ``criterion(model(inputs), targets)``."""

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        return criterion(model(inputs), targets)

    return loss_fn


def count_examples(batch: Any) -> int:
    """Number of examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return count_examples(next(iter(batch.values())))
    return count_examples(batch[0])


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(value, device) for value in batch)
    return batch


def _groups_of(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` batches; the last list may be shorter."""
    while group := list(itertools.islice(batches, size)):
        yield group


def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    r"""The global gradient norm :math:`\lVert g \rVert_2 = \sqrt{\sum_p \lVert g_p \rVert_2^2}`, as ``clip_grad_norm_`` computes it.

    A tensor on the gradients' device (reading it is a host sync); torch's own
    ``get_total_norm`` (torch >= 2.6, what ``clip_grad_norm_`` calls) where it exists.
    """
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    norms = [torch.linalg.vector_norm(g) for g in grads]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


@torch.no_grad()
def clip_grad_norm_with_(params: Sequence[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale the gradients by ``min(1, max_norm / (total_norm + 1e-6))``, in place: ``clip_grad_norm_`` given the norm.

    The second half of ``torch.nn.utils.clip_grad_norm_``, which would measure the norm again:
    torch's own ``clip_grads_with_norm_`` where it exists (torch >= 2.6), the same lines below
    for older versions. The factor stays a tensor on the device, so clipping needs no host sync.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)
        return
    factor = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for device, group in by_device.items():
        torch._foreach_mul_(group, factor.to(device))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn,
    count_fn: Callable[[Any], int] = count_examples,
    precision: str = "fp32",
) -> float:
    """Mean of ``loss_fn`` over all examples of ``data`` (epoch 0 of it), in eval mode, without gradients."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in epoch_batches(data, 0):
        n = count_fn(batch)
        with _autocast(device, precision):
            total += float(loss_fn(model, move_to(batch, device))) * n
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("data for evaluation is empty")
    return total / count


class _NoBar:
    """What ``fit`` uses of a tqdm bar, showing nothing."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def _progress_bar(total: int | None, initial: int, enabled: bool) -> Any:
    """A tqdm bar (hidden unless ``enabled``), or one that shows nothing where tqdm is not installed."""
    if tqdm is None:
        return _NoBar()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step")


def _describe_non_finite(names: list[str]) -> str:
    """The end of a ``FloatingPointError`` message: which parameters have NaN or Inf gradients."""
    message = f"the gradient of parameter {names[0]!r} has NaN or Inf entries"
    if len(names) > 1:
        message += f" (so do {len(names) - 1} more, the next one {names[1]!r})"
    return message


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class TrainConfig:
    """Settings of a run. Training stops at ``max_steps`` optimizer steps or after ``epochs``, whichever comes first.

    - ``accumulation``: micro-batches per optimizer step;
    - ``clip_norm`` / ``clip_value``: clip the gradient by global norm, or each entry (not both);
    - ``precision``: ``"fp32"``, ``"bf16"`` (autocast, CPU or GPU) or ``"fp16"`` (autocast
      and ``GradScaler``, CUDA only);
    - ``scheduler_interval``: step the LR schedulers after every optimizer step (``"step"``)
      or every epoch (``"epoch"``); ``ReduceLROnPlateau`` is stepped after every evaluation
      with the validation loss;
    - ``eval_every``: evaluate every so many steps; ``None``: at the end of every epoch;
    - ``checkpoint_every`` and ``checkpoint_path``: save a checkpoint every so many steps
      and at the end (one file, replaced atomically);
    - ``tokens_per_example``: if set, the history logs ``tokens_per_s`` and the progress bar
      shows it;
    - ``check_finite``: stop on a NaN/Inf loss or gradient;
    - ``sync_every``: read the loss and the gradient norm back from the device every so many
      steps (and before every evaluation, checkpoint and the end; see the module docstring).
      With 1 (the default) a NaN or Inf stops the run at its step, naming the parameter; with
      more it stops the run at the next read, naming the step. ``history`` is complete at
      every read; in between it lags behind ``step``;
    - ``max_skipped_steps`` (fp16): stop after so many steps in a row that the ``GradScaler``
      skipped for NaN/Inf gradients (``None``: never). A few skips are how the scaler finds its
      scale; each halves it, so 20 in a row take it from :math:`2^{16}` to :math:`2^{-4}`, and
      gradients that overflow even then are NaN or Inf at any scale;
    - ``progress``: show a tqdm bar with the step's loss and LR (off by default, so notebook
      outputs stay reproducible).
    """

    max_steps: int | None = None
    epochs: int | None = None
    accumulation: int = 1
    clip_norm: float | None = None
    clip_value: float | None = None
    precision: str = "fp32"
    scheduler_interval: str = "step"
    eval_every: int | None = None
    checkpoint_every: int | None = None
    checkpoint_path: str | Path | None = None
    tokens_per_example: int | None = None
    check_finite: bool = True
    max_skipped_steps: int | None = 20
    sync_every: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs (or both)")
        for name in ("max_steps", "epochs", "eval_every", "checkpoint_every", "tokens_per_example", "max_skipped_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.accumulation < 1:
            raise ValueError(f"accumulation must be >= 1, got {self.accumulation}")
        if not isinstance(self.sync_every, int) or self.sync_every < 1:
            raise ValueError(f"sync_every must be an integer >= 1, got {self.sync_every!r}")
        for name in ("clip_norm", "clip_value"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        if self.clip_norm is not None and self.clip_value is not None:
            raise ValueError("set clip_norm or clip_value, not both")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {self.scheduler_interval!r}")
        if self.checkpoint_every is not None and self.checkpoint_path is None:
            raise ValueError("checkpoint_every needs checkpoint_path")


class Trainer:
    """The loop: accumulation, clipping, mixed precision, schedules, evaluation, callbacks, checkpoints.

    ``loss_fn(model, batch)`` returns the mean loss of a batch (the hook for custom batches,
    e.g. token windows). ``count_fn(batch)`` says how many examples a batch holds; it weights
    micro-batches within an accumulation group and counts examples seen. The device is the
    one of the model's parameters; batches are moved there. ``optimizer`` is any
    ``torch.optim.Optimizer`` or a :class:`~course_lib.param_groups.MultiOptimizer`;
    ``scheduler`` is one LR scheduler (or :class:`~course_lib.schedules.ParamGroupScheduler`),
    a list of them, or ``None``.

    ``history`` (a dict of lists, one entry per optimizer step) holds ``step``, ``epoch``,
    ``loss`` (of the step's examples), ``lr`` (of param group 0, used by that step),
    ``grad_norm`` (before clipping), ``examples`` (seen so far), ``time`` (seconds since the
    start), ``examples_per_s`` and, with ``tokens_per_example``, ``tokens_per_s``; and per
    evaluation ``eval_step`` and ``val_loss``. With ``sync_every > 1`` the per-step entries are
    appended at each read-back (:meth:`read_back`), so between two of them the history lags
    behind ``step``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        loss_fn: LossFn,
        train_data: Any,
        config: TrainConfig,
        scheduler: Any = None,
        val_data: Any = None,
        callbacks: Sequence[Callback | Callable[[Trainer], None]] = (),
        count_fn: Callable[[Any], int] = count_examples,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.train_data = train_data
        self.config = config
        if scheduler is None:
            self.schedulers = []
        elif isinstance(scheduler, (list, tuple)):
            self.schedulers = list(scheduler)
        else:
            self.schedulers = [scheduler]
        self.val_data = val_data
        self.callbacks = list(callbacks)
        self.count_fn = count_fn
        self.device = next(model.parameters()).device
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision='fp16' needs a CUDA model (GradScaler), the model is on {self.device}; use 'bf16'")
        if val_data is None and any(isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) for s in self.schedulers):
            raise ValueError("ReduceLROnPlateau needs val_data: it is stepped with the validation loss")
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch
        self.batch_in_epoch = 0  # micro-batches of the current epoch consumed
        self.examples = 0
        self.skipped_in_a_row = 0  # fp16: consecutive steps the GradScaler skipped
        self.history: dict[str, list[float]] = {key: [] for key in self._history_keys()}
        self.should_stop = False
        self.step_kwargs: dict[str, Any] = {}  # passed to optimizer.step(); callbacks may set them
        self.last_batch: Any = None  # the last micro-batch of the latest step, on the model's device
        self._unread: list[dict[str, Any]] = []  # steps whose loss and norm are still on the device
        # read the loss and the norm at once, and check them before clipping and stepping
        self._check_each_step = config.sync_every == 1 or self.scaler is not None

    def _history_keys(self) -> list[str]:
        keys = ["step", "epoch", "loss", "lr", "grad_norm", "examples", "time", "examples_per_s"]
        if self.config.tokens_per_example is not None:
            keys.append("tokens_per_s")
        return keys + ["eval_step", "val_loss"]

    def _finished(self) -> bool:
        cfg = self.config
        return (
            self.should_stop
            or (cfg.max_steps is not None and self.step >= cfg.max_steps)
            or (cfg.epochs is not None and self.epoch >= cfg.epochs)
        )

    def fit(self) -> dict[str, list[float]]:
        """Train until ``max_steps`` or ``epochs`` (continuing from a loaded checkpoint); return the history."""
        cfg = self.config
        self.model.train()
        total = cfg.max_steps
        if total is None and hasattr(self.train_data, "__len__"):
            total = cfg.epochs * math.ceil(len(self.train_data) / cfg.accumulation)
        self._start = time.perf_counter() - (self.history["time"][-1] if self.history["time"] else 0.0)
        self._dispatch("on_train_begin")
        with _progress_bar(total, self.step, cfg.progress) as bar:
            while not self._finished():
                fresh_epoch = self.batch_in_epoch == 0
                batches = epoch_batches(self.train_data, self.epoch, self.batch_in_epoch)
                groups = _groups_of(batches, cfg.accumulation)
                while not self._finished():
                    started = time.perf_counter()  # a step's time includes drawing its batches
                    group = next(groups, None)
                    if group is None:  # the epoch is over
                        if fresh_epoch and self.batch_in_epoch == 0:
                            raise ValueError(f"train_data yields no batches in epoch {self.epoch}")
                        self._end_epoch()
                        break
                    self.train_step(group, started)
                    bar.set_postfix(self._postfix(), refresh=False)
                    bar.update(1)
                    self._after_step()
        self.read_back()
        if cfg.checkpoint_path is not None:
            self.save_checkpoint(cfg.checkpoint_path)
        self._dispatch("on_train_end")
        return self.history

    def train_step(self, micro_batches: list[Any], started: float | None = None) -> None:
        """One optimizer step on a group of micro-batches, weighted by their numbers of examples.

        ``started``: the ``time.perf_counter()`` at which the step began (``fit`` passes the
        moment before it drew the batches); by default, now.
        """
        started = time.perf_counter() if started is None else started
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        counts = [self.count_fn(batch) for batch in micro_batches]
        total = sum(counts)
        losses = []
        for batch, n in zip(micro_batches, counts):
            self.last_batch = batch = move_to(batch, self.device)
            with _autocast(self.device, self.config.precision):
                loss = self.loss_fn(self.model, batch) * (n / total)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            losses.append(loss.detach().float())
        loss = torch.stack(losses).sum()  # on the device; read at once or at the next sync point
        if self._check_each_step and self.config.check_finite and not math.isfinite(float(loss)):
            raise FloatingPointError(f"step {self.step + 1}: the loss is {float(loss)}")
        norm = self._clip_gradients()
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer, **self.step_kwargs)  # skipped if a gradient is NaN or Inf
            self.scaler.update()  # then the scale is lowered
            self.count_skipped(self.scaler.get_scale() < scale)
        else:
            self.optimizer.step(**self.step_kwargs)
        self.step += 1
        self.batch_in_epoch += len(micro_batches)
        self.examples += total
        if self.config.scheduler_interval == "step":
            self._step_schedulers()
        self._record(loss, lr, norm, total, started)

    def _clip_gradients(self) -> torch.Tensor:
        """Unscale (fp16), measure the gradient norm once, check it is finite, clip; return the norm before clipping."""
        cfg = self.config
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = grad_norm(params)
        # check BEFORE clipping: clipping by norm scales every gradient by c / norm, and a NaN
        # norm would turn them all into NaN and hide which parameter it came from
        if self._check_each_step and not math.isfinite(float(norm)):
            bad = self.non_finite_gradients()
            if self.scaler and bad:
                return norm  # fp16: the GradScaler skips this step; leave the gradients as they are
            if cfg.check_finite and not self.scaler:
                what = _describe_non_finite(bad) if bad else f"the gradient norm overflows to {float(norm)}"
                raise FloatingPointError(f"step {self.step + 1}: {what}")
        if cfg.clip_norm is not None:
            clip_grad_norm_with_(params, cfg.clip_norm, norm)  # the norm above: one pass over the gradients
        if cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
        return norm

    def non_finite_gradients(self) -> list[str]:
        """Names of the parameters whose gradient holds a NaN or an Inf, in the model's order."""
        return [
            name for name, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        ]

    def count_skipped(self, skipped: bool) -> None:
        """Count the steps in a row that the ``GradScaler`` skipped; stop after ``max_skipped_steps`` of them.

        Called after each fp16 step with whether the scaler skipped it (its scale went down).
        ``max_skipped_steps=None`` or ``check_finite=False`` only counts.
        """
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        limit = self.config.max_skipped_steps
        if self.config.check_finite and limit is not None and self.skipped_in_a_row >= limit:
            bad = self.non_finite_gradients()
            raise FloatingPointError(
                f"step {self.step + 1}: the GradScaler skipped the last {self.skipped_in_a_row} steps "
                f"(steps {self.step + 2 - self.skipped_in_a_row} to {self.step + 1}) for NaN or Inf gradients; "
                + (_describe_non_finite(bad) if bad else "they do not go away at a lower loss scale")
            )

    def _postfix(self) -> dict[str, str]:
        """What the progress bar shows: the latest loss and LR read back, and tokens/s with ``tokens_per_example``."""
        h = self.history
        if not h["loss"]:
            return {}
        postfix = {"loss": f"{h['loss'][-1]:.4g}", "lr": f"{h['lr'][-1]:.3g}"}
        if self.config.tokens_per_example is not None:
            postfix["tok/s"] = f"{h['tokens_per_s'][-1]:.3g}"
        return postfix

    def _step_schedulers(self) -> None:
        for scheduler in self.schedulers:
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()

    def _sync_due(self) -> bool:
        """Whether the step just taken ends with a read-back: every ``sync_every`` steps, and before evaluations,
        checkpoints and the end."""
        cfg = self.config
        return (self._check_each_step or self.step % cfg.sync_every == 0
                or (cfg.eval_every is not None and self.step % cfg.eval_every == 0)
                or (cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0)
                or (cfg.max_steps is not None and self.step >= cfg.max_steps))

    def _record(self, loss: torch.Tensor, lr: float, norm: torch.Tensor, examples: int, started: float) -> None:
        """Keep the step's numbers; at a sync point, wait for the device (in the step's time) and read them all back."""
        sync = self._sync_due()
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's time then covers the device's work
        now = time.perf_counter()
        self._unread.append({"step": self.step, "epoch": self.epoch, "loss": loss, "lr": float(lr), "grad_norm": norm,
                             "examples": self.examples, "time": now - self._start,
                             "seconds": now - started, "n": examples})
        if sync:
            self.read_back()

    def read_back(self) -> None:
        """Read the losses and gradient norms of the steps not yet read (one host sync), append them to ``history``.

        Stops with ``FloatingPointError`` at the first step whose loss or gradient norm is NaN
        or infinite (with ``sync_every=1`` the step itself has already stopped the run).
        """
        if not self._unread:
            return
        records, self._unread = self._unread, []
        losses = torch.stack([r["loss"] for r in records]).tolist()
        norms = torch.stack([r["grad_norm"].to(records[0]["grad_norm"].device) for r in records]).tolist()
        h = self.history
        for r, loss, norm in zip(records, losses, norms):
            if self.config.check_finite and not self._check_each_step:
                if not math.isfinite(loss):
                    raise FloatingPointError(f"step {r['step']}: the loss is {loss}")
                if not math.isfinite(norm):
                    raise FloatingPointError(f"step {r['step']}: the gradient norm is {norm} (with sync_every=1 "
                                             f"the run stops at once and names the parameter)")
            h["step"].append(r["step"])
            h["epoch"].append(r["epoch"])
            h["loss"].append(loss)
            h["lr"].append(r["lr"])
            h["grad_norm"].append(norm)
            h["examples"].append(r["examples"])
            h["time"].append(r["time"])
            h["examples_per_s"].append(r["n"] / r["seconds"])
            if self.config.tokens_per_example is not None:
                h["tokens_per_s"].append(r["n"] * self.config.tokens_per_example / r["seconds"])

    def _after_step(self) -> None:
        cfg = self.config
        if cfg.eval_every is not None and self.step % cfg.eval_every == 0:
            self._evaluate()
        self._dispatch("on_step_end")
        if cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint(cfg.checkpoint_path)

    def _end_epoch(self) -> None:
        self.read_back()
        self.epoch += 1
        self.batch_in_epoch = 0
        if self.config.scheduler_interval == "epoch":
            self._step_schedulers()
        if self.config.eval_every is None:
            self._evaluate()
        self._dispatch("on_epoch_end")

    def _evaluate(self) -> None:
        if self.val_data is None:
            return
        self.read_back()
        self._dispatch("on_eval_begin")
        val_loss = evaluate(self.model, self.val_data, self.loss_fn, self.count_fn, self.config.precision)
        self.history["eval_step"].append(self.step)
        self.history["val_loss"].append(val_loss)
        for scheduler in self.schedulers:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
        self._dispatch("on_eval", val_loss)

    def _dispatch(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            if hasattr(callback, event):
                getattr(callback, event)(self, *args)
            elif event == "on_step_end" and callable(callback):
                callback(self)

    def save_checkpoint(self, path: str | Path) -> None:
        """Save everything a bit-identical resume needs; write to a temporary file, then rename (atomic)."""
        self.read_back()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "examples": self.examples,
            "skipped_in_a_row": self.skipped_in_a_row,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint into this trainer's model, optimizer, schedulers and scaler; ``fit`` then resumes.

        Build the trainer exactly as for the first run (same model, optimizer, schedulers,
        data, config), then load. Loading uses ``torch.load(weights_only=True)``.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if len(state["schedulers"]) != len(self.schedulers):
            raise ValueError(f"the checkpoint holds {len(state['schedulers'])} schedulers, the trainer has {len(self.schedulers)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for scheduler, s in zip(self.schedulers, state["schedulers"]):
            scheduler.load_state_dict(s)
        if self.scaler and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.examples = state["batch_in_epoch"], state["examples"]
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.history = state["history"]
        self._unread = []
