"""Checks for the large-batch exercise: gradient accumulation, LARS's local learning rate, and bfloat16
autocast on the CPU.

- Gradient accumulation: the oracle is one backward pass and one optimizer step on the whole batch.
  Micro-batches :math:`B_1, \\dots, B_k` of a batch :math:`B` give the big batch's gradient when each
  micro-batch's mean loss is weighted by its share of the examples:

  .. math::
      \\nabla \\frac{1}{|B|} \\sum_{i \\in B} \\ell_i = \\sum_j \\frac{|B_j|}{|B|}\\,
      \\nabla \\frac{1}{|B_j|} \\sum_{i \\in B_j} \\ell_i .

- LARS: the oracle is :class:`course_lib.optim.LARS`'s first step. On its first step the momentum
  buffer is the direction itself, so :math:`\\theta_0 - \\theta_1 = \\gamma\\, \\lambda\\, (g + \\beta
  \\theta_0)` and the local rate is read off in closed form, :math:`\\lambda = \\lVert \\theta_0 - \\theta_1
  \\rVert / (\\gamma \\lVert g + \\beta \\theta_0 \\rVert)`.
- Autocast: the oracle is the same forward pass and loss under ``torch.autocast("cpu", torch.bfloat16)``.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.optim import LARS

from ._core import DTYPE, Trials, describe, passed
from ._policy import policy

__all__ = ["accumulation_step", "lars_local_lr", "lars_reference_local_lr", "autocast_gradients", "POLICY"]

POLICY = [
    policy("accumulation_step", "autocast_gradients",
           reason="the task is to drive the model and optimizer you are given; any of torch's functions may help"),
    policy("lars_local_lr", forbid=("course_lib.optim.LARS",),
           reason="the task is to write LARS's local rate yourself, from the two norms"),
]  # fmt: skip

_DIVIDE = (
    "divide each micro-batch's loss by the number of micro-batches (in general: weight it by its share of the "
    "examples, len(xb) / len(x)), so that the accumulated gradient is that of the mean loss over the batch."
)
_ZERO_ONCE = (
    "zero the gradients once, before the loop: backward() adds into .grad, and zeroing inside the loop throws "
    "away every micro-batch but the last."
)
_STALE = "zero the gradients before accumulating: .grad still held the previous step's gradient."
_SHARE = (
    "the last micro-batch is smaller: weight each micro-batch's mean loss by its share of the examples, "
    "len(xb) / len(x), not by 1 / (number of micro-batches)."
)
_STEP_ONCE = "call optimizer.step() once, after the last micro-batch, not after every micro-batch."


def _random_mlp(run: Trials, dtype: torch.dtype = DTYPE) -> tuple[nn.Module, int, int]:
    """A two-layer perceptron with random sizes and weights; returns (model, inputs, classes)."""
    d, h, c = run.integer(3, 10), run.integer(4, 16), run.integer(2, 5)
    model = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(run.normal(*p.shape, scale=0.7).to(dtype))
    return model, d, c


def _optimizer(kind: str, params, hyper: dict) -> torch.optim.Optimizer:
    if kind == "SGD":
        return torch.optim.SGD(params, lr=hyper["lr"], momentum=hyper["momentum"])
    return torch.optim.AdamW(params, lr=hyper["lr"], weight_decay=hyper["weight_decay"])


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _micro_grads(model: nn.Module, loss_fn, x, y, size: int) -> list[list[torch.Tensor]]:
    """The gradient of each micro-batch's mean loss, at the model's current parameters."""
    out = []
    for xb, yb in zip(x.split(size), y.split(size)):
        model.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        out.append(_grads(model))
    model.zero_grad(set_to_none=True)
    return out


def _stepping_every_micro_batch(model, optimizer, loss_fn, x, y, size, zero_each: bool) -> list[torch.Tensor]:
    """The gradients left by stepping after every micro-batch (zeroing in between or not)."""
    model.zero_grad(set_to_none=True)
    for xb, yb in zip(x.split(size), y.split(size)):
        if zero_each:
            model.zero_grad(set_to_none=True)
        (loss_fn(model(xb), yb) * len(xb) / len(x)).backward()
        optimizer.step()
    return _grads(model)


def _closest(got: torch.Tensor, *variants: torch.Tensor) -> torch.Tensor:
    """The variant of a mistake that ``got`` matches, or the first one (for a hint)."""
    for variant in variants:
        if got.shape == variant.shape and torch.allclose(got.to(variant.dtype), variant, rtol=1e-9, atol=1e-12):
            return variant
    return variants[0]


def accumulation_step(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(model, optimizer, loss_fn, x, y, micro_batch_size) -> float``.

    One optimizer step on the batch ``(x, y)`` computed in micro-batches of ``micro_batch_size``
    examples (the last one may be smaller). Afterwards every ``p.grad`` must equal the gradient of the
    mean loss over the whole batch, the parameters must equal one step of the same optimizer on the
    whole batch, and the returned loss must be that mean loss, all to float64 round-off. The models
    are small random perceptrons in float64, the optimizers SGD with momentum or AdamW, and every
    ``p.grad`` holds a stale gradient when ``fn`` is called. Trials 0 and 2 split the batch evenly.
    """
    run = Trials("accumulation_step", fn, seed, trials)
    loss_fn = F.cross_entropy
    for trial in run:
        model, d, c = _random_mlp(run)
        size = run.integer(3, 8)
        if trial in (0, 2):
            n = size * run.integer(2, 6)
        else:
            n = size * run.integer(1, 5) + run.integer(1, size - 1)
        x, y = run.normal(n, d), torch.randint(0, c, (n,), generator=run.generator)
        kind = "SGD" if trial % 2 == 0 else "AdamW"
        hyper = dict(lr=run.log_uniform(1e-3, 1e-1), momentum=run.uniform(0.0, 0.95), weight_decay=run.uniform(0, 0.1))
        setting = f"momentum={hyper['momentum']:.6g}" if kind == "SGD" else f"weight_decay={hyper['weight_decay']:.6g}"
        inputs = describe(
            model=" ".join(str(model).split()), optimizer=f"{kind}(lr={hyper['lr']:.6g}, {setting})",
            loss_fn="F.cross_entropy", x=x, y=y, micro_batch_size=size,
        )  # fmt: skip
        # references on copies: the big batch, the gradients of each micro-batch, the usual mistakes
        reference = copy.deepcopy(model)
        micro = _micro_grads(reference, loss_fn, x, y, size)
        stepping = [
            _stepping_every_micro_batch(m, _optimizer(kind, m.parameters(), hyper), loss_fn, x, y, size, zero)
            for zero in (True, False)
            for m in [copy.deepcopy(model)]
        ]
        with torch.no_grad():
            micro_losses = [loss_fn(reference(xb), yb).item() for xb, yb in zip(x.split(size), y.split(size))]
        reference_optimizer = _optimizer(kind, reference.parameters(), hyper)
        reference.zero_grad(set_to_none=True)
        big_loss = loss_fn(reference(x), y)
        big_loss.backward()
        reference_optimizer.step()
        stale = [run.normal(*p.shape) for p in model.parameters()]
        for p, g in zip(model.parameters(), stale):
            p.grad = g.clone()
        optimizer = _optimizer(kind, model.parameters(), hyper)
        got_loss = run.call(fn, "accumulation_step", inputs, model, optimizer, loss_fn, x, y, size)
        shares = [len(xb) / n for xb in x.split(size)]
        k = len(shares)
        for i, (p, want) in enumerate(zip(model.parameters(), reference.parameters())):
            if p.grad is None:
                raise run.fail(f"after accumulation_step, parameter {i} has no gradient (p.grad is None), on input\n"
                               f"{inputs}")
            hints = {
                _DIVIDE: sum(g[i] for g in micro),
                _STALE: want.grad + stale[i],
                _SHARE: sum(g[i] for g in micro) / k,
                _ZERO_ONCE: _closest(p.grad, micro[-1][i] * shares[-1], micro[-1][i] / k, micro[-1][i]),
                _STEP_ONCE: _closest(p.grad, stepping[0][i], stepping[1][i]),
            }
            what = f"the gradient of parameter {i} ({tuple(p.shape)})"
            run.expect_tensor(what, p.grad, want.grad, inputs, hints=hints)
        for i, (p, want) in enumerate(zip(model.parameters(), reference.parameters())):
            run.expect_tensor(f"parameter {i} after the step", p.detach(), want.detach(), inputs)
        run.expect_close(
            "the returned loss",
            got_loss,
            big_loss.item(),
            inputs,
            hints={
                "return the mean loss over the batch: the sum of the micro-batch losses weighted by their shares "
                "(loss.item() of the weighted loss, summed).": sum(micro_losses),
            },
        )
    passed("accumulation_step", f"{run.n} random batches: gradients, step and loss equal one big batch's to round-off")


# ----- LARS ---------------------------------------------------------------------------------------


def lars_reference_local_lr(weight: torch.Tensor, grad: torch.Tensor, *, trust_coefficient: float,
                            weight_decay: float, lr: float = 1.0, momentum: float = 0.9) -> float:
    """The local rate that :class:`course_lib.optim.LARS` applies to ``weight`` on its first step, read
    off the step: :math:`\\lVert \\theta_0 - \\theta_1 \\rVert / (\\gamma \\lVert g + \\beta \\theta_0 \\rVert)`."""
    param = weight.detach().clone().requires_grad_(True)
    optimizer = LARS([param], lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    param.grad = grad.detach().clone()
    optimizer.step()
    moved = torch.linalg.vector_norm(weight - param.detach())
    direction = torch.linalg.vector_norm(grad + weight_decay * weight)
    return (moved / (lr * direction)).item()


def lars_local_lr(fn: Callable, *, seed: int | None = None, trials: int = 8) -> None:
    """Check ``fn(weight, grad, *, trust_coefficient, weight_decay) -> float``: LARS's local learning rate
    of one layer, against :class:`course_lib.optim.LARS`'s first step (random global rate and momentum).

    Random shapes, weights of norm 0.1 to 10 and gradients spanning four orders of magnitude; trial 1
    has a weight of zeros, trial 2 a gradient of zeros, trial 3 no weight decay.
    """
    run = Trials("lars_local_lr", fn, seed, trials)
    for trial in run:
        shape = run.shape()
        weight = run.normal(*shape, scale=run.log_uniform(0.1, 10.0))
        grad = run.mixed_scale(*shape, low=1e-4, high=1.0)
        hyper = dict(trust_coefficient=run.log_uniform(1e-3, 2e-2), weight_decay=run.log_uniform(1e-4, 1e-1))
        if trial == 1:
            weight = torch.zeros_like(weight)
        elif trial == 2:
            grad = torch.zeros_like(grad)
        elif trial == 3:
            hyper["weight_decay"] = 0.0
        step = dict(lr=run.log_uniform(0.1, 10.0), momentum=run.uniform(0, 0.95))  # any: the rate is read off
        want = lars_reference_local_lr(weight, grad, **hyper, **step)
        inputs = describe(weight=weight, grad=grad, **hyper)
        got = run.call(fn, "lars_local_lr", inputs, weight.clone(), grad.clone(), **hyper)
        eta, beta = hyper["trust_coefficient"], hyper["weight_decay"]
        w, g = torch.linalg.vector_norm(weight).item(), torch.linalg.vector_norm(grad).item()
        g_decayed = torch.linalg.vector_norm(grad + beta * weight).item()
        hints = {}
        if w == 0 or g == 0:
            formula = eta * w / (g + beta * w) if g + beta * w > 0 else 0.0
            hints["when the weight or the gradient is all zeros, LARS uses a local rate of 1 (a bias initialised to "
                  "zero has no scale to trust)."] = formula
        else:
            hints.update({
                "the local rate is trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||): the weight norm goes "
                "on top.": eta * g / (w + beta * g),
                "multiply by the trust coefficient.": w / (g + beta * w),
                "weight decay also enters the denominator: ||g|| + weight_decay * ||w||.": eta * w / g,
                "the denominator is ||g|| + weight_decay * ||w||, not the norm of g + weight_decay * w.":
                    eta * w / g_decayed,
                "use the Euclidean norms (torch.linalg.vector_norm), not their squares.":
                    eta * w**2 / (g**2 + beta * w**2),
            })  # fmt: skip
        run.expect_close("the local learning rate", got, want, inputs, rtol=1e-8, atol=0.0, hints=hints)
    passed("lars_local_lr", f"{run.n} random layers match course_lib.optim.LARS's first step")


# ----- bfloat16 autocast ------------------------------------------------------------------------


def autocast_gradients(fn: Callable, *, seed: int | None = None, trials: int = 3) -> None:
    """Check ``fn(model, loss_fn, x, y) -> float``: forward pass and loss under
    ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)``, then backward.

    Afterwards every ``p.grad`` must be float32 (the model stays float32) and equal the gradient of the
    same computation done by the check, and the returned loss its value (to a relative 1e-5; plain
    float32 differs by about 1e-3).
    """
    run = Trials("autocast_gradients", fn, seed, trials)
    loss_fn = F.cross_entropy
    for _ in run:
        model, d, c = _random_mlp(run, dtype=torch.float32)
        n = run.integer(16, 64)
        x, y = run.normal(n, d).float() * 3, torch.randint(0, c, (n,), generator=run.generator)
        inputs = describe(model=" ".join(str(model).split()), loss_fn="F.cross_entropy", x=x, y=y)
        variants = {}
        for name in ("autocast", "float32", "loss outside"):
            twin = copy.deepcopy(model)
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=name != "float32"):
                output = twin(x)
                loss = loss_fn(output, y) if name != "loss outside" else None
            if loss is None:
                loss = loss_fn(output, y)
            loss.backward()
            variants[name] = (loss.item(), _grads(twin))
        got_loss = run.call(fn, "autocast_gradients", inputs, model, loss_fn, x, y)
        for i, p in enumerate(model.parameters()):
            if p.dtype != torch.float32 or (p.grad is not None and p.grad.dtype != torch.float32):
                raise run.fail(
                    f"parameter {i} or its gradient is {p.dtype if p.dtype != torch.float32 else p.grad.dtype}: "
                    "the model must stay float32. Do not convert it; autocast casts inside each operation, "
                    "and the gradients come back in the parameters' dtype."
                )
            if p.grad is None:
                raise run.fail(f"parameter {i} has no gradient (p.grad is None): call backward(), on input\n{inputs}")
            run.expect_tensor(
                f"the gradient of parameter {i}",
                p.grad,
                variants["autocast"][1][i],
                inputs,
                rtol=1e-5,
                atol=1e-7,
                hints={
                    "run the forward pass and the loss inside torch.autocast(device_type='cpu', dtype=torch.bfloat16): "
                    "these are float32 gradients.": variants["float32"][1][i],
                    "compute the loss inside the autocast block too: autocast runs cross_entropy in float32; outside "
                    "it, bfloat16 logits give a bfloat16 loss.": variants["loss outside"][1][i],
                },
            )
        run.expect_close("the returned loss", got_loss, variants["autocast"][0], inputs, rtol=1e-5, atol=0.0)
    passed("autocast_gradients", f"{run.n} random models: bfloat16 autocast gradients, float32 parameters")
