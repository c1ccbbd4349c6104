"""Checks for the exercise on an LR range test that restores what it found; the oracle is
:func:`course_lib.train.lr_finder.lr_range_test`, which leaves model, optimizer and random number generator
exactly as they were.

Each trial builds a random model (linear layers, sometimes BatchNorm and dropout) and a random
optimizer with two parameter groups, trains it a little under a scheduler (or not at all), leaves
gradients behind (or not) and picks train or eval mode. A twin of that setting goes through
``lr_range_test``. The student's snapshot is taken of the original, which then goes through a sweep
of its own (rising learning rates, steps, dropout) and ``restore()``, twice in a row. After each
restore, everything must be bit for bit what ``lr_range_test`` left in the twin: parameters, buffers,
gradients, train/eval mode, optimizer state and param groups, and torch's random number generator;
the parameters must still be the objects the optimizer holds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.train.lr_finder import lr_range_test

from ._core import Student, Trials, describe, passed
from ._policy import policy

__all__ = ["snapshot_model", "snapshot_optimizer", "training_state", "POLICY"]

POLICY = policy(
    "snapshot_model", "snapshot_optimizer",
    reason="the task is to keep and restore copies; any of torch's functions may help",
)  # fmt: skip

_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop")


@dataclass
class TrainingState:
    """Copies of everything a range test may change, and the identities of the parameters."""

    parameters: list[torch.Tensor]
    buffers: dict[str, torch.Tensor]
    grads: list[torch.Tensor | None]
    training: bool
    optimizer: dict[str, Any]
    rng: torch.Tensor
    ids: list[int]
    optimizer_ids: list[int]


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """A deep copy of the state of ``model``, ``optimizer`` and torch's CPU generator."""
    return TrainingState(
        parameters=[p.detach().clone() for p in model.parameters()],
        buffers={name: b.detach().clone() for name, b in model.named_buffers()},
        grads=[None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        training=model.training,
        optimizer=copy.deepcopy(optimizer.state_dict()),  # state_dict() holds the live state tensors
        rng=torch.get_rng_state(),
        ids=[id(p) for p in model.parameters()],
        optimizer_ids=[id(p) for group in optimizer.param_groups for p in group["params"]],
    )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


@dataclass
class _Scenario:
    description: str
    fresh: bool
    reference: TrainingState  # what lr_range_test left in the twin
    before_restore: list[TrainingState]  # the original just before each restore()
    after_restore: list[TrainingState]  # ... and just after


def _build(run: Trials, trial: int):
    d, h, c = run.integer(3, 8), run.integer(4, 12), run.integer(2, 4)
    batch_norm, dropout = trial % 2 == 0, trial % 3 != 1
    layers: list[nn.Module] = [nn.Linear(d, h)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(h))
    layers.append(nn.Tanh())
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(h, c))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(run.normal(*p.shape, scale=0.5).float())
    kind = _OPTIMIZERS[trial % len(_OPTIMIZERS)]
    lr = run.log_uniform(1e-3, 1e-2)
    params = list(model.parameters())
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": lr * run.uniform(0.1, 3.0)}]
    optimizer = {
        "SGD": lambda: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
        "Adam": lambda: torch.optim.Adam(groups, lr=lr),
        "AdamW": lambda: torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, amsgrad=True),
        "RMSprop": lambda: torch.optim.RMSprop(groups, lr=lr, momentum=0.5),
    }[kind]()
    data = [(run.normal(16, d).float(), torch.randint(0, c, (16,), generator=run.generator)) for _ in range(3)]
    text = f"{' '.join(str(model).split())}, {kind} with two param groups, lr {lr:.3g}"
    return model, optimizer, data, text


def _loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _sweep(model: nn.Module, optimizer: torch.optim.Optimizer, data, steps: int = 8) -> None:
    """What a range test does to its model: rising learning rates, training steps, dropout, shuffling."""
    model.train()
    ratios = [g["lr"] / optimizer.param_groups[0]["lr"] for g in optimizer.param_groups]
    for i in range(steps):
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = 1e-4 * (1e4 ** (i / (steps - 1))) * ratio
        x, y = data[i % len(data)]
        order = torch.randperm(len(y))
        optimizer.zero_grad(set_to_none=True)
        _loss(model, (x[order], y[order])).backward()
        optimizer.step()


def _scenario(run: Trials, trial: int, cls: Callable) -> _Scenario:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and much faster on a busy machine
    try:
        return _run_scenario(run, trial, cls)
    finally:
        torch.set_num_threads(threads)


def _run_scenario(run: Trials, trial: int, cls: Callable) -> _Scenario:
    with torch.random.fork_rng(devices=[]):  # the student's global generator is left alone
        torch.manual_seed(run.integer(0, 2**31 - 1))
        model, optimizer, data, text = _build(run, trial)
        fresh = trial == 1
        if not fresh:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
            for batch in data:
                optimizer.zero_grad()
                _loss(model, batch).backward()
                optimizer.step()
                scheduler.step()
        if trial % 3 == 0:
            optimizer.zero_grad(set_to_none=True)  # no gradients left behind
        elif not fresh:
            _loss(model, data[0]).backward()
        if trial % 2 == 1:
            model.eval()
        text += (
            f"; {'a fresh optimizer' if fresh else '3 steps under StepLR'}, "
            f"{'gradients left' if any(p.grad is not None for p in model.parameters()) else 'no gradients'}, "
            f"{'train' if model.training else 'eval'} mode"
        )
        twin, twin_optimizer = copy.deepcopy((model, optimizer))
        for p, q in zip(model.parameters(), twin.parameters()):  # deepcopy leaves a Parameter's grad behind
            q.grad = None if p.grad is None else p.grad.clone()
        rng = torch.get_rng_state()
        inputs = describe(setting=text)
        seen = run.probe(_drive, cls, run.fn_name, inputs, model, optimizer, data, rng)
        if seen["type"] is not None:
            raise run.fail(f"{run.fn_name}(model, optimizer) should have a restore() method, but it is a {seen['type']}")
        torch.set_rng_state(rng)
        lr_range_test(twin, twin_optimizer, data, _loss, start_lr=1e-4, end_lr=1.0, num_steps=8)
        reference = training_state(twin, twin_optimizer)
        before = [TrainingState(**state) for state in seen["before"]]
        after = [TrainingState(**state) for state in seen["after"]]
        return _Scenario(text, fresh, reference, before, after)


def _drive(cls: Callable, student: Student, model: nn.Module, optimizer: torch.optim.Optimizer, data, rng) -> dict:
    """Probe: take the snapshot ``cls(model, optimizer)`` with torch's generator at ``rng``, then twice a
    sweep and ``restore()``; the training state just before and just after each restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(rng)
            snapshot = student(getattr(cls, "__name__", "Snapshot"), cls, model, optimizer)
            if not callable(getattr(snapshot, "restore", None)):
                return {"type": type(snapshot).__name__}
            before, after = [], []
            for n in range(2):  # restore() may be called more than once
                what = "a sweep after Snapshot(model, optimizer)" if n == 0 else "a sweep after restore()"
                student(what, _sweep, model, optimizer, data)
                before.append(vars(training_state(model, optimizer)))
                student("restore", snapshot.restore)
                after.append(vars(training_state(model, optimizer)))
            return {"type": None, "before": before, "after": after}
    finally:
        torch.set_num_threads(threads)


def _difference(run: Trials, what: str, scenario: _Scenario, n: int, advice: str, **values: Any) -> Exception:
    """The failure for ``what`` differing after restore number ``n``; ``values`` are the expected and
    returned values, shown when given."""
    when = "after restore()" if n == 0 else "after a second sweep and restore()"
    shown = f"\n{describe(**values)}" if values else ""
    return run.fail(
        f"{what} {when} differs from what lr_range_test leaves:{shown}\non input\n"
        f"  setting = {scenario.description}\nHint: {advice}"
    )


_REFERENCES = (
    "model.state_dict() returns the live tensors, which training changes in place: save copies "
    "(copy.deepcopy(model.state_dict()), or clone each tensor)."
)
_SHARED = (
    "the snapshot must keep its own copies: after the first restore() the model (or optimizer) shared the saved "
    "tensors, so the next sweep changed them. Copy values in (load_state_dict, p.copy_(saved)) instead."
)
_OPTIMIZER_REFERENCES = (
    "optimizer.state_dict() holds the live state tensors, which step() changes in place: "
    "save copy.deepcopy(optimizer.state_dict())."
)
_ADOPTED = (
    "load_state_dict keeps the very tensors you pass in: pass a copy, optimizer.load_state_dict(copy.deepcopy(saved)), "
    "so that the next sweep cannot change the snapshot."
)


def snapshot_model(cls: Callable, *, seed: int | None = None, trials: int = 6) -> None:
    """Check the model half of ``cls(model, optimizer)`` with ``.restore()``: parameters, buffers,
    gradients and train/eval mode bit for bit as ``lr_range_test`` leaves them, the parameters still
    the optimizer's objects (see the module's docstring for the scenario)."""
    run = Trials("snapshot_model", cls, seed, trials)
    for trial in run:
        s = _scenario(run, trial, cls)
        ref = s.reference
        for n, (before, got) in enumerate(zip(s.before_restore, s.after_restore)):
            if got.ids != before.ids or got.optimizer_ids != got.ids:
                advice = (
                    "keep the same parameter objects, which the optimizer holds: copy values into them "
                    "(model.load_state_dict without assign=True, p.copy_) rather than replacing them."
                )
                raise _difference(run, "the identity of the model's parameters", s, n, advice)
            for i, (p, want) in enumerate(zip(got.parameters, ref.parameters)):
                if not _equal(p, want):
                    unchanged = _equal(p, before.parameters[i])
                    advice = (_REFERENCES if n == 0 else _SHARED) if unchanged else "restore every parameter exactly."
                    raise _difference(run, f"parameter {i}", s, n, advice, expected=want, returned=p)
            for name, want in ref.buffers.items():
                value = got.buffers.get(name)
                if not _equal(value, want):
                    advice = (
                        "restore the buffers too (BatchNorm's running_mean, running_var and num_batches_tracked): "
                        "model.state_dict() has them, model.parameters() does not."
                    )
                    if n == 1 and _equal(value, before.buffers.get(name)):
                        advice = _SHARED
                    raise _difference(run, f"buffer {name!r}", s, n, advice, expected=want, returned=value)
            for i, (g, want) in enumerate(zip(got.grads, ref.grads)):
                if (g is None) != (want is None) or (want is not None and not _equal(g, want)):
                    advice = "restore the gradients too (p.grad, None where it was None); the sweep changed them."
                    raise _difference(run, f"the gradient of parameter {i}", s, n, advice, expected=want, returned=g)
            if got.training != ref.training:
                advice = "restore train/eval mode (model.train(was_training)): the sweep calls model.train()."
                raise _difference(run, "the model's mode", s, n, advice, expected_training=ref.training,
                                  returned_training=got.training)  # fmt: skip
    passed("snapshot_model", f"{run.n} random models restored bit for bit, twice, as lr_range_test does")


def snapshot_optimizer(cls: Callable, *, seed: int | None = None, trials: int = 6) -> None:
    """Check the optimizer half of ``cls(model, optimizer)`` with ``.restore()``: optimizer state, param
    groups (learning rates included) and torch's random number generator bit for bit as
    ``lr_range_test`` leaves them; a fresh optimizer must stay without state."""
    run = Trials("snapshot_optimizer", cls, seed, trials)
    for trial in run:
        s = _scenario(run, trial, cls)
        ref = s.reference
        for n, (before, got) in enumerate(zip(s.before_restore, s.after_restore)):
            groups, want_groups = got.optimizer["param_groups"], ref.optimizer["param_groups"]
            if groups != want_groups:
                keys = sorted({k for g, w in zip(groups, want_groups) for k in w if g.get(k) != w[k]})
                advice = (
                    f"the param groups differ in {keys}: the sweep sets group['lr']; restore the groups "
                    "(optimizer.load_state_dict does)."
                )
                expected = [{k: w[k] for k in keys} for w in want_groups]
                returned = [{k: g.get(k) for k in keys} for g in groups]
                what = "the optimizer's param groups"
                raise _difference(run, what, s, n, advice, expected=expected, returned=returned)
            state, want_state = got.optimizer["state"], ref.optimizer["state"]
            if set(state) != set(want_state):
                advice = (
                    "before the sweep the optimizer had never stepped, so it had no state; after restore() it must "
                    "have none either (optimizer.load_state_dict of a saved copy does that)."
                    if s.fresh
                    else "restore the optimizer's state for every parameter."
                )
                raise _difference(run, "the parameters that have optimizer state", s, n, advice,
                                  expected=sorted(want_state), returned=sorted(state))  # fmt: skip
            for index, entries in want_state.items():
                for key, want in entries.items():
                    value = state[index].get(key)
                    if not _equal(value, want):
                        unchanged = _equal(value, before.optimizer["state"][index].get(key))
                        advice = "restore the optimizer's state exactly."
                        if unchanged:
                            advice = _OPTIMIZER_REFERENCES if n == 0 else _ADOPTED
                        what = f"optimizer state {key!r} of parameter {index}"
                        raise _difference(run, what, s, n, advice, expected=want, returned=value)
            if not torch.equal(got.rng, ref.rng):
                advice = (
                    "restore torch's random number generator (torch.get_rng_state() when the snapshot is taken, "
                    "torch.set_rng_state(...) in restore): the sweep drew random numbers (dropout, shuffling)."
                )
                raise _difference(run, "torch's random number generator state", s, n, advice)
    detail = f"{run.n} random optimizers and the RNG restored bit for bit, twice, as lr_range_test does"
    passed("snapshot_optimizer", detail)
