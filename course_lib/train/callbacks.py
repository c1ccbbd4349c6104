"""Hooks into :class:`~course_lib.train.Trainer`, and the two that some optimizers need.

Most optimizers need nothing but ``optimizer.step()``. Two need more from the loop:

* :class:`SophiaHessianRefresh`: SophiaG divides by an estimate of the Hessian's diagonal that the
  loop refreshes every few steps, from the gradient of the loss on labels sampled from the model's
  own predictions (Gauss-Newton-Bartlett);
* :class:`ScheduleFreeEval`: schedule-free AdamW takes its gradients at one point and evaluates at
  another, the average; ``optimizer.eval()`` before every evaluation and ``optimizer.train()`` after
  it switch between the two, and the weights the run ends with are the average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..optim.schedule_free import ScheduleFreeAdamW
from ..optim.sophia import SophiaG, gauss_newton_bartlett

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["Callback", "ScheduleFreeEval", "SophiaHessianRefresh"]


class Callback:
    """Hooks called by :class:`~course_lib.train.Trainer`; override the ones you need.

    A plain callable given as a callback is called as ``on_step_end``. Set
    ``trainer.should_stop = True`` in a hook to end training after the current step.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step of :meth:`~course_lib.train.Trainer.fit` (also when resuming)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimizer step (and the schedulers); ``trainer.last_batch`` is its last micro-batch."""

    def on_eval_begin(self, trainer: Trainer) -> None:
        """Before each evaluation on the validation data."""

    def on_eval(self, trainer: Trainer, val_loss: float) -> None:
        """After each evaluation, with its loss."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After each epoch (and its evaluation, if evaluations follow epochs)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step and the final checkpoint."""


def _default_logits(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return model(inputs)


class SophiaHessianRefresh(Callback):
    r"""Refresh :class:`~course_lib.optim.SophiaG`'s Hessian estimate every ``every`` steps.

    After every ``every``-th step, the Gauss-Newton-Bartlett estimate
    :math:`B\,\hat g \odot \hat g` is computed on that step's last micro-batch (``logits_fn(model,
    batch)`` gives the logits; by default ``model(batch[0])``) and averaged into the optimizer's
    estimate. The estimate carries the batch's number of predictions :math:`B`, so the optimizer
    steps with ``bs=1`` (this callback sets ``trainer.step_kwargs``). ``generator`` draws the sampled
    labels, so a seeded run is reproducible. ``every=10`` is the reference implementation's.
    """

    def __init__(self, every: int = 10, generator: torch.Generator | None = None,
                 logits_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = _default_logits) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every, self.generator, self.logits_fn = every, generator, logits_fn

    def on_train_begin(self, trainer: Trainer) -> None:
        if not isinstance(trainer.optimizer, SophiaG):
            raise TypeError(f"SophiaHessianRefresh needs a SophiaG optimizer, got {type(trainer.optimizer).__name__}")
        trainer.step_kwargs["bs"] = 1  # the estimates below already carry the batch's size

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step % self.every != 0:
            return
        params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        trainable = [p for p in params if p.requires_grad]
        estimates = iter(gauss_newton_bartlett(self.logits_fn(trainer.model, trainer.last_batch), trainable,
                                               generator=self.generator))
        trainer.optimizer.update_hessian([next(estimates) if p.requires_grad else None for p in params])


class ScheduleFreeEval(Callback):
    """Evaluate schedule-free AdamW at its average: ``eval()`` before each evaluation, ``train()`` after.

    The run ends with ``optimizer.eval()``, so the model holds the average :math:`x`, the weights
    that schedule-free training returns (call ``optimizer.train()`` to train on).
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        if not isinstance(trainer.optimizer, ScheduleFreeAdamW):
            raise TypeError(f"ScheduleFreeEval needs a ScheduleFreeAdamW optimizer, got {type(trainer.optimizer).__name__}")
        trainer.optimizer.train()

    def on_eval_begin(self, trainer: Trainer) -> None:
        trainer.optimizer.eval()

    def on_eval(self, trainer: Trainer, val_loss: float) -> None:
        trainer.optimizer.train()

    def on_train_end(self, trainer: Trainer) -> None:
        trainer.optimizer.eval()
