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
3. unscale (fp16) and measure the gradient norm;
4. stop with ``FloatingPointError`` naming the step (counted from 1, as in ``history``) and
   the loss or the parameter if a value is NaN or infinite, checked *before* clipping (clipping
   by norm would spread one NaN over every gradient);
5. clip by norm or by value;
6. step the optimizer and the per-step schedulers. With fp16 the ``GradScaler`` skips a step
   whose gradients are not finite and lowers its scale; ``max_skipped_steps`` skips in a row
   stop the run.

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
from tqdm.auto import tqdm

from ..data.batching import epoch_batches
from .callbacks import Callback

__all__ = ["TrainConfig", "Trainer", "count_examples", "evaluate", "grad_norm", "move_to", "supervised_loss"]

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
    r"""The global gradient norm :math:`\lVert g \rVert_2 = \sqrt{\sum_p \lVert g_p \rVert_2^2}`, as ``clip_grad_norm_`` computes it."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    if not norms:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


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
    evaluation ``eval_step`` and ``val_loss``.
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
        with tqdm(total=total, initial=self.step, disable=not cfg.progress, unit="step") as bar:
            while not self._finished():
                fresh_epoch = self.batch_in_epoch == 0
                batches = epoch_batches(self.train_data, self.epoch, self.batch_in_epoch)
                for group in _groups_of(batches, cfg.accumulation):
                    self.train_step(group)
                    bar.set_postfix(self._postfix(), refresh=False)
                    bar.update(1)
                    self._after_step()
                    if self._finished():
                        break
                else:
                    if fresh_epoch and self.batch_in_epoch == 0:
                        raise ValueError(f"train_data yields no batches in epoch {self.epoch}")
                    self._end_epoch()
        if cfg.checkpoint_path is not None:
            self.save_checkpoint(cfg.checkpoint_path)
        self._dispatch("on_train_end")
        return self.history

    def train_step(self, micro_batches: list[Any]) -> None:
        """One optimizer step on a group of micro-batches, weighted by their numbers of examples."""
        started = time.perf_counter()
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
        loss_value = torch.stack(losses).sum().item()
        if self.config.check_finite and not math.isfinite(loss_value):
            raise FloatingPointError(f"step {self.step + 1}: the loss is {loss_value}")
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
        self._log(loss_value, lr, norm, total, time.perf_counter() - started)

    def _clip_gradients(self) -> float:
        """Unscale (fp16), check the gradients are finite, return their norm before clipping, clip."""
        cfg = self.config
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = float(grad_norm(params))
        # check BEFORE clipping: clip_grad_norm_ scales every gradient by c / norm, and a NaN
        # norm would turn them all into NaN and hide which parameter it came from
        if not math.isfinite(norm):
            bad = self.non_finite_gradients()
            if self.scaler and bad:
                return norm  # fp16: the GradScaler skips this step; leave the gradients as they are
            if cfg.check_finite and not self.scaler:
                what = _describe_non_finite(bad) if bad else f"the gradient norm overflows to {norm}"
                raise FloatingPointError(f"step {self.step + 1}: {what}")
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
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
        """What the progress bar shows: the step's loss and LR, and tokens/s with ``tokens_per_example``."""
        h = self.history
        postfix = {"loss": f"{h['loss'][-1]:.4g}", "lr": f"{h['lr'][-1]:.3g}"}
        if self.config.tokens_per_example is not None:
            postfix["tok/s"] = f"{h['tokens_per_s'][-1]:.3g}"
        return postfix

    def _step_schedulers(self) -> None:
        for scheduler in self.schedulers:
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()

    def _log(self, loss: float, lr: float, norm: float, examples: int, seconds: float) -> None:
        h = self.history
        h["step"].append(self.step)
        h["epoch"].append(self.epoch)
        h["loss"].append(loss)
        h["lr"].append(float(lr))
        h["grad_norm"].append(norm)
        h["examples"].append(self.examples)
        h["time"].append(time.perf_counter() - self._start)
        h["examples_per_s"].append(examples / seconds)
        if self.config.tokens_per_example is not None:
            h["tokens_per_s"].append(examples * self.config.tokens_per_example / seconds)

    def _after_step(self) -> None:
        cfg = self.config
        if cfg.eval_every is not None and self.step % cfg.eval_every == 0:
            self._evaluate()
        self._dispatch("on_step_end")
        if cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint(cfg.checkpoint_path)

    def _end_epoch(self) -> None:
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
