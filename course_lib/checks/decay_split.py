"""Checks for the exercise on choosing which parameters decay; the oracles are
:func:`course_lib.param_groups.weight_decay_groups` and :func:`course_lib.param_groups.discriminative_lr_groups`.

The rule is decided by the type of the module that owns a parameter, never by its name: the weight
matrices and kernels of weight layers (``Linear``, ``Bilinear``, ``Conv*``, ``MultiheadAttention``,
``RNN``/``LSTM``/``GRU``) decay; their biases, normalization layers, embeddings and the parameters of any
other module do not. Each trial builds a random model whose names mislead on purpose (a ``Linear`` named
``bias_proj``, a ``LayerNorm`` named ``dense``), with an embedding, a custom module holding a 2-D
parameter of its own, sometimes a tied output head and a frozen layer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from course_lib.param_groups import (
    EMBEDDING_TYPES,
    NORM_TYPES,
    WEIGHT_LAYER_TYPES,
    discriminative_lr_groups,
    weight_decay_groups,
)

from ._core import Trials, describe, passed
from ._policy import policy

__all__ = ["decay_groups", "part_groups", "random_model", "Gate", "POLICY"]

POLICY = policy(
    "decay_groups", "part_groups",
    forbid=("course_lib.param_groups.decays", "course_lib.param_groups.weight_decay_groups",
            "course_lib.param_groups.discriminative_lr_groups", "course_lib.param_groups.layerwise_lr_groups"),
    reason="the task is to write the rule yourself (your decay_groups is yours to reuse in part_groups)",
)  # fmt: skip

# Names that suggest the opposite of what the module is.
_LINEAR_NAMES = ("bias_proj", "ln_out", "norm_gate", "emb_proj", "layernorm_in", "bn_adapter")
_NORM_NAMES = ("dense", "proj", "fc", "weight_mixer", "linear", "conv_out", "kernel")
_EMBEDDING_NAMES = ("lookup_dense", "table", "proj_in", "token_weight")
_OTHER_NAMES = ("linear_gate", "fc_scale", "weight_map")


class Gate(nn.Module):
    """A custom module with parameters of its own: a 2-D mixing matrix and a gain (neither decays)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight) * self.gain


class _Container(nn.Module):
    """Holds submodules under the names it is given (the check never calls the model)."""


def _pick(run: Trials, names: tuple[str, ...], taken: set[str]) -> str:
    free = [n for n in names if n not in taken]
    name = free[run.integer(0, len(free) - 1)]
    taken.add(name)
    return name


def _norm(run: Trials, d: int) -> nn.Module:
    kinds = [lambda: nn.LayerNorm(d), lambda: nn.BatchNorm1d(d), lambda: nn.GroupNorm(1, d)]
    if hasattr(nn, "RMSNorm"):
        kinds.append(lambda: nn.RMSNorm(d))
    return kinds[run.integer(0, len(kinds) - 1)]()


def _weight_layer(run: Trials, d: int) -> nn.Module:
    kinds = [
        lambda: nn.Conv1d(d, d, kernel_size=run.integer(1, 3), bias=bool(run.integer(0, 1))),
        lambda: nn.Conv2d(2, d, kernel_size=2),
        lambda: nn.Bilinear(d, d, 2),
        lambda: nn.MultiheadAttention(d, 1),
        lambda: nn.GRU(d, d),
    ]
    return kinds[run.integer(0, len(kinds) - 1)]()


def random_model(run: Trials, *, tie: bool | None = None, freeze: bool | None = None) -> nn.Module:
    """A model of misleadingly named parts: always a Linear with a no-decay-sounding name, a
    normalization layer with a decay-sounding name, an embedding and a :class:`Gate`; some of
    another weight layer, a nested container, a tied head (before or after the embedding) and a
    frozen layer."""
    d = run.integer(2, 5)
    taken: set[str] = set()
    parts: list[tuple[str, nn.Module]] = [
        (_pick(run, _LINEAR_NAMES, taken), nn.Linear(d, d, bias=bool(run.integer(0, 1)))),
        (_pick(run, _NORM_NAMES, taken), _norm(run, d)),
        (_pick(run, _OTHER_NAMES, taken), Gate(d)),
    ]
    embedding = nn.Embedding(run.integer(3, 7), d)
    parts.insert(run.integer(0, len(parts)), (_pick(run, _EMBEDDING_NAMES, taken), embedding))
    if run.integer(0, 1):
        parts.append((_pick(run, _LINEAR_NAMES, taken), nn.Linear(d, d)))
    if run.integer(0, 1):
        parts.append(("mixer", _weight_layer(run, d)))
    if run.integer(0, 1):
        inner = nn.Sequential(nn.Linear(d, d), _norm(run, d), nn.Linear(d, d, bias=False))
        parts.insert(run.integer(0, len(parts)), ("blocks", inner))
    tie = bool(run.integer(0, 1)) if tie is None else tie
    if tie:
        head = nn.Linear(d, embedding.num_embeddings, bias=False)
        head.weight = embedding.weight
        position = [n for n, _ in parts].index(next(n for n, m in parts if m is embedding))
        parts.insert(position + (1 if run.integer(0, 1) else 0), ("head", head))
    model = _Container()
    for name, module in parts:
        model.add_module(name, module)
    freeze = bool(run.integer(0, 1)) if freeze is None else freeze
    if freeze:
        candidates = [m for _, m in parts  # any part but the embedding and the head that shares its table
                      if all(p is not embedding.weight for p in m.parameters()) and any(True for _ in m.parameters())]
        for p in candidates[run.integer(0, len(candidates) - 1)].parameters():
            p.requires_grad_(False)
    return model


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


_DECIDE = "Decide by the type of the module that owns the parameter (isinstance), not by its name or shape."


def _why(model: nn.Module, name: str, param: nn.Parameter, should_decay: bool) -> str:
    """Advice for a parameter put in the wrong group."""
    owner = _owner(model, name)
    kind = type(owner).__name__
    if isinstance(owner, NORM_TYPES):
        reason = (f"'{name}' belongs to a normalization layer ({kind}): its gains and shifts never decay "
                  "(decay would pull a gain towards 0), whatever the layer is called.")
    elif isinstance(owner, EMBEDDING_TYPES):
        reason = (f"'{name}' is the table of an embedding ({kind}): embeddings do not decay here (a rare "
                  "token's row would shrink between its updates), although the table is a matrix.")
    elif isinstance(owner, WEIGHT_LAYER_TYPES) and should_decay:
        reason = (f"'{name}' is the weight (a matrix or kernel) of a weight layer ({kind}): it decays, "
                  "whatever its name.")
    elif isinstance(owner, WEIGHT_LAYER_TYPES):
        reason = f"'{name}' is a bias (one dimension) of a weight layer ({kind}): biases do not decay."
    else:
        matrix = ", even though it is a matrix" if param.ndim >= 2 else ""
        reason = (f"'{name}' is a parameter that a module of type {kind} holds itself, and {kind} is not a "
                  f"weight layer: it does not decay{matrix}.")
    return f"{reason} {_DECIDE}"


def _params_of(run: Trials, group: Any, where: str) -> list:
    if not isinstance(group, dict) or "params" not in group:
        kind = type(group).__name__
        raise run.fail(f"{where} should be a dict with a 'params' key, but it is a {kind}: {group!r:.200}")
    params = group["params"]
    if isinstance(params, torch.Tensor):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise run.fail(f"{where}['params'] should be a list of parameters, got {type(params).__name__}") from None
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise run.fail(f"{where}['params'] should hold parameters (tensors), but holds a {type(p).__name__}")
    return params


def _assignment(run: Trials, model: nn.Module, groups: list[tuple[Any, list]], inputs: str) -> dict[int, Any]:
    """Map each parameter id to the label of the group it is in; reject strangers, frozen, duplicates."""
    names = {id(p): n for n, p in model.named_parameters()}
    where: dict[int, Any] = {}
    for label, params in groups:
        for p in params:
            if id(p) not in names:
                raise run.fail(f"a group holds a tensor of shape {tuple(p.shape)} that is not a parameter of the "
                               f"model, on input\n{inputs}")
            name = names[id(p)]
            if not p.requires_grad:
                raise run.fail(f"'{name}' is frozen (requires_grad=False) but is in a group, on input\n{inputs}\n"
                               "Hint: leave frozen parameters out: the optimizer has nothing to do with them.")
            if id(p) in where:
                raise run.fail(
                    f"'{name}' is listed twice, on input\n{inputs}\nHint: a tied parameter (here the embedding "
                    "table that the head shares) belongs to two modules but must be listed once: model."
                    "named_parameters() gives it once, under its first owner, and that owner decides.")
            where[id(p)] = label
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in where:
            kind = type(_owner(model, name)).__name__
            raise run.fail(f"'{name}' (owned by a module of type {kind}) is in no group, on "
                           f"input\n{inputs}\nHint: every trainable parameter must be in exactly one group.")
    return where


def decay_groups(fn: Callable, *, seed: int | None = None, trials: int = 5) -> None:
    """Check ``fn(model, weight_decay) -> [{"params": decayed, "weight_decay": weight_decay},
    {"params": not_decayed, "weight_decay": 0.0}]`` against ``course_lib.param_groups.weight_decay_groups``
    on random models whose names mislead (see the module's docstring)."""
    run = Trials("decay_groups", fn, seed, trials)
    for trial in run:
        model = random_model(run, tie=trial % 2 == 0 if trial < 2 else None, freeze=True if trial == 1 else None)
        weight_decay = run.log_uniform(1e-3, 0.5)
        inputs = f"  model = {model!r}\n  weight_decay = {weight_decay!r}"
        got = run.call(fn, "decay_groups", inputs, model, weight_decay)
        if not isinstance(got, (list, tuple)) or len(got) != 2:
            raise run.fail(f"decay_groups should return a list of two param groups, but it returned "
                           f"{type(got).__name__}{f' of length {len(got)}' if isinstance(got, (list, tuple)) else ''}")
        decayed, kept = (_params_of(run, g, f"group {i}") for i, g in enumerate(got))
        for i, (group, value) in enumerate(zip(got, (weight_decay, 0.0))):
            if group.get("weight_decay") != value:
                raise run.fail(f"group {i} should have 'weight_decay': {value!r}, but has "
                               f"{group.get('weight_decay', 'no weight_decay key')!r}, on input\n{inputs}")
        where = _assignment(run, model, [(True, decayed), (False, kept)], inputs)
        reference = weight_decay_groups(model, weight_decay)
        should = {id(p): True for p in reference[0]["params"]} | {id(p): False for p in reference[1]["params"]}
        for name, param in model.named_parameters():
            if id(param) in should and where[id(param)] != should[id(param)]:
                verdict = "be decayed" if should[id(param)] else "not be decayed"
                raise run.fail(
                    f"'{name}' (shape {tuple(param.shape)}, owned by a module of type "
                    f"{type(_owner(model, name)).__name__}) should {verdict}, but your groups put it in the other "
                    f"group, on input\n{inputs}\n"
                    f"Hint: {_why(model, name, param, should[id(param)])}")
    passed("decay_groups", f"{run.n} random models with misleading names match course_lib's weight_decay_groups")


def _part_model(run: Trials, trial: int) -> tuple[nn.Module, dict[str, float]]:
    """Three parts; in trial 0 the head has a tied table and 'body2' a frozen layer, so that every mistake
    :func:`decay_groups` lists shows inside a part too."""
    model = _Container()
    lrs: dict[str, float] = {}
    for part in ("body", "body2", "head"):  # 'body' is a prefix of 'body2' on purpose
        freeze = part == "body2" and (trial == 0 or bool(run.integer(0, 1)))
        tie = True if trial == 0 and part == "head" else None
        model.add_module(part, random_model(run, tie=tie, freeze=freeze))
        lrs[part] = run.log_uniform(1e-5, 1e-1)
    return model, lrs


def part_groups(fn: Callable, *, seed: int | None = None, trials: int = 4) -> None:
    """Check ``fn(model, lrs, weight_decay) -> groups``: one learning rate per named part (``lrs`` maps the
    names of the model's top-level submodules to rates), each part split into decayed and not decayed.
    Each trainable parameter must be in one group whose ``lr`` and ``weight_decay`` are those of
    ``course_lib.param_groups.discriminative_lr_groups``."""
    run = Trials("part_groups", fn, seed, trials)
    for trial in run:
        model, lrs = _part_model(run, trial)
        weight_decay = run.log_uniform(1e-3, 0.5)
        inputs = describe(lrs=lrs, weight_decay=weight_decay) + f"\n  model = {model!r}"
        got = run.call(fn, "part_groups", inputs, model, dict(lrs), weight_decay)
        if not isinstance(got, (list, tuple)):
            raise run.fail(f"part_groups should return a list of param groups, but it returned {type(got).__name__}")
        labelled = []
        for i, group in enumerate(got):
            params = _params_of(run, group, f"group {i}")
            for key in ("lr", "weight_decay"):
                if not isinstance(group.get(key), (int, float)):
                    raise run.fail(f"group {i} should have a number under '{key}', but has {group.get(key)!r}")
            labelled.append(((float(group["lr"]), float(group["weight_decay"])), params))
        where = _assignment(run, model, labelled, inputs)
        reference = {id(p): (g["lr"], g["weight_decay"]) for g in discriminative_lr_groups(model, lrs, weight_decay)
                     for p in g["params"]}  # fmt: skip
        for name, param in model.named_parameters():
            if id(param) not in reference:
                continue
            (lr, wd), (want_lr, want_wd) = where[id(param)], reference[id(param)]
            part = name.split(".")[0]
            if lr != want_lr:
                hint = f"'{name}' belongs to the part '{part}', whose rate is {want_lr:.6g}."
                wrong_part = next((p for p, v in lrs.items() if v == lr), None)
                if wrong_part is not None and part.startswith(wrong_part):
                    hint += (f" Its name also starts with '{wrong_part}': match whole submodule names "
                             f"(model.get_submodule(part).parameters(), or name.split('.')[0] == part).")
                raise run.fail(f"'{name}' is in a group with lr {lr:.6g}, expected {want_lr:.6g}, on input\n"
                               f"{inputs}\nHint: {hint}")
            if wd != want_wd:
                raise run.fail(
                    f"'{name}' is in a group with weight_decay {wd:.6g}, expected {want_wd:.6g}, on input\n"
                    f"{inputs}\nHint: {_why(model, name, param, want_wd > 0)} Use the same rule as in decay_groups "
                    "inside each part.")
    passed("part_groups", f"{run.n} random three-part models match course_lib.param_groups.discriminative_lr_groups")
