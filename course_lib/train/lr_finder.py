"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks").

Train for a few hundred steps while the LR grows exponentially from ``start_lr`` to
``end_lr``, record the loss, and read off a good LR: where the loss still falls fast,
before it blows up. The sweep, the bias-corrected smoothing and the stop at divergence
follow fastai's ``LRFinder``. Afterwards the model, its buffers, its gradients, the
optimizer (state and param groups) and the RNG are exactly as before.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.batching import epoch_batches
from .trainer import move_to

__all__ = ["RangeTestResult", "lr_range_test", "smooth", "suggest_lr"]


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    r"""Bias-corrected exponential moving average, as in Adam's first moment.

    .. math::
        a_i = \beta a_{i-1} + (1 - \beta)\,\ell_i, \quad a_{-1} = 0, \qquad s_i = a_i / (1 - \beta^{i+1})

    Without the correction the first values would be pulled towards 0.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1.0 - beta) * loss
        out.append(average / (1.0 - beta ** (i + 1)))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float], rule: str = "min/10") -> float:
    """A learning rate read off the range test's smoothed loss curve.

    - ``"min/10"`` (default): the LR of the lowest smoothed loss, divided by 10. At the
      minimum the LR is already at the edge of stability (the loss rises right after), so
      one decade lower sits in the region where the loss falls fast. It depends only on
      where the minimum is, which noise moves little.
    - ``"steepest"``: the LR where the smoothed loss falls fastest per decade of LR,
      looking only before the minimum. Closer to the edge, and more sensitive to noise:
      a derivative of a noisy curve is noisier than the curve.
    """
    if len(lrs) != len(smoothed) or len(lrs) < 2:
        raise ValueError(f"lrs and smoothed must have the same length >= 2, got {len(lrs)} and {len(smoothed)}")
    i_min = int(np.argmin(smoothed))
    if rule == "min/10":
        return lrs[i_min] / 10.0
    if rule == "steepest":
        end = max(i_min, 1) + 1  # at least two points for a slope
        slope = np.gradient(np.asarray(smoothed[:end]), np.log(np.asarray(lrs[:end])))
        return lrs[int(np.argmin(slope))]
    raise ValueError(f"rule must be 'min/10' or 'steepest', got {rule!r}")


@dataclass
class RangeTestResult:
    """What the range test recorded: one entry per step, up to the stop."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    diverged: bool

    def suggestion(self, rule: str = "min/10") -> float:
        """See :func:`suggest_lr`."""
        return suggest_lr(self.lrs, self.smoothed, rule)

    def plot(self, ax: Any = None, rule: str = "min/10") -> Any:
        """Raw and smoothed loss against the LR (log axis), with the suggested LR marked."""
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(self.lrs, self.losses, color="0.75", lw=1, label="loss")
        ax.plot(self.lrs, self.smoothed, lw=2, label="smoothed loss")
        lr = self.suggestion(rule)
        ax.axvline(lr, color="C3", ls="--", label=f"{rule}: {lr:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend()
        return ax


def _cycle(data: Any) -> Iterator[Any]:
    """Batches of ``data``, epoch after epoch."""
    epoch = 0
    while True:
        empty = True
        for batch in epoch_batches(data, epoch):
            empty = False
            yield batch
        if empty:
            raise ValueError("data yields no batches")
        epoch += 1


def lr_range_test(
    model: nn.Module,
    optimizer: Any,
    data: Any,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.98,
    diverge_factor: float = 4.0,
) -> RangeTestResult:
    r"""Run the LR range test and restore model and optimizer exactly.

    Step :math:`i` of :math:`n` uses :math:`\eta_i = \eta_{\text{start}}
    (\eta_{\text{end}} / \eta_{\text{start}})^{i/(n-1)}`, records the loss of its batch, then
    steps. Every param group keeps its ratio to group 0's LR (so discriminative LRs scale
    together); the recorded LR is group 0's. The test stops early when a loss is not finite
    or the smoothed loss exceeds ``diverge_factor`` times its minimum so far.

    ``data`` is anything :func:`course_lib.train.trainer.epoch_batches` reads (cycled if short);
    ``loss_fn(model, batch)`` as for the trainer.
    """
    if not 0.0 < start_lr < end_lr:
        raise ValueError(f"start_lr and end_lr must satisfy 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if diverge_factor <= 1.0:
        raise ValueError(f"diverge_factor must be > 1, got {diverge_factor}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")

    tensors = list(model.parameters()) + list(model.buffers())
    saved_tensors = [t.detach().clone() for t in tensors]
    saved_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    was_training = model.training

    device = next(model.parameters()).device
    lr0 = optimizer.param_groups[0]["lr"]
    ratios = [group["lr"] / lr0 if lr0 > 0 else 1.0 for group in optimizer.param_groups]
    lrs: list[float] = []
    losses: list[float] = []
    best, diverged = math.inf, False
    model.train()
    try:
        for i, batch in zip(range(num_steps), _cycle(data)):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, move_to(batch, device))
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                diverged = True
                break
            lrs.append(lr)
            losses.append(value)
            smoothed = smooth(losses, beta)[-1]
            best = min(best, smoothed)
            if smoothed > diverge_factor * best:
                diverged = True
                break
    finally:
        with torch.no_grad():
            for t, saved in zip(tensors, saved_tensors):
                t.copy_(saved)
        for p, grad in zip(model.parameters(), saved_grads):
            p.grad = grad
        optimizer.load_state_dict(saved_optimizer)
        torch.set_rng_state(saved_rng[0])
        if saved_rng[1]:
            torch.cuda.set_rng_state_all(saved_rng[1])
        model.train(was_training)
    return RangeTestResult(lrs, losses, smooth(losses, beta), diverged)
