"""The contract every optimizer of course_lib.optim keeps, checked over a REGISTRY of all of them.

Each registry entry says how to build its optimizer, which parameters suit it, the hyperparameter
settings to check it at (the first is its main setting), its bad-hyperparameter cases and the fast
paths it owns; a property it is exempt from would be listed in ``exempt`` with the reason (none is
at present). The properties:

* it descends on a convex quadratic, and with ``maximize=True`` it ascends; maximize on f takes
  exactly the steps of minimizing -f;
* a zero gradient without weight decay leaves the parameters unchanged;
* a param group with lr = 0 (and weight decay) stays put while another group moves;
* a state_dict saved with torch.save and loaded with ``weights_only=True`` resumes exactly the
  uninterrupted run; two runs from the same seed leave identical state dicts;
* bad hyperparameters raise ValueError naming them, in the constructor and in a param group;
* sparse gradients are rejected with a clear RuntimeError;
* the closure is evaluated with gradients enabled and its loss returned;
* the fast paths (tiled loop, foreach kernels) equal the plain loop bit for bit on the CPU;
* a student's subclass that overrides only ``update`` runs its own math on every path.

The base class's plug-in points (a whole-group optimizer, the fast-path choice) are checked at the
end. Comparisons with oracles (torch.optim, reference packages, the papers' equations) are in the
per-optimizer files beside this one.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import course_lib.optim as co
from course_lib.optim import CourseOptimizer, check_range
from course_lib.optim._fast import fast_paths
from optim_helpers import (
    MATRICES,
    MIXED,
    STEPS,
    Transposed,
    assert_equal_nested,
    assert_resumes_exactly,
    clones,
    make_params,
    quadratic,
    run,
    scaled_groups,
    seeded_grads,
    set_grads,
)

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent")
DEVICE_MARKS = {"cpu": (), "cuda": NO_CUDA}
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]


@dataclass(frozen=True)
class Bad:
    """A bad hyperparameter setting and the ValueError message it must raise (a regular expression).

    ``where``: "both" (the constructor's arguments and a param group's), "init" (a constructor
    argument that is no group hyperparameter). The message begins with the argument's name, or
    with ``named`` where the argument sets a group hyperparameter of another name.
    """

    kwargs: dict[str, Any]
    match: str
    where: str = "both"
    named: str | None = None


@dataclass(frozen=True)
class Entry:
    """One optimizer of course_lib.optim and how the contract checks it.

    ``build(params, **hyper)`` makes it (``wrap`` where the class alone does not take plain
    parameters); ``params()`` makes parameters that suit it (``shapes``, ``dtype``); ``configs``
    are the hyperparameter settings the properties run at (the first is the main one); ``bad``
    its bad-hyperparameter cases; ``paths`` the fast paths it owns; ``step`` one training step
    where ``opt.step()`` is not all of it. ``exempt`` maps a property of ``PROPERTIES`` that it
    does not keep to the reason why.
    """

    name: str
    cls: type
    configs: tuple[dict[str, Any], ...]
    bad: tuple[Bad, ...]
    shapes: tuple = MIXED  # the parameters that suit it
    dtype: torch.dtype = torch.float64
    decay: tuple[str, ...] = ("weight_decay",)  # the hyperparameters that decay weights
    paths: frozenset[str] = frozenset()  # the fast paths it owns
    wrap: Callable[..., torch.optim.Optimizer] | None = None  # builds it from (cls, params, **hyper)
    step: Callable[[torch.optim.Optimizer, list[torch.Tensor], int], Any] | None = None  # one training step
    second_group: dict[str, Any] = field(default_factory=dict)  # options of the second param group
    exempt: dict[str, str] = field(default_factory=dict)  # property -> the reason it does not apply

    def build(self, params: Any, cls: type | None = None, **hyper: Any) -> torch.optim.Optimizer:
        cls = cls or self.cls
        return self.wrap(cls, params, **hyper) if self.wrap else cls(params, **hyper)

    def params(self, seed: int = 0) -> list[torch.Tensor]:
        return make_params(self.shapes, seed, self.dtype)

    def groups(self, params: list[torch.Tensor], config: dict[str, Any]) -> list[dict[str, Any]]:
        return scaled_groups(params, config, (len(params) + 1) // 2, **self.second_group)

    def group(self, params: list[torch.Tensor], **options: Any) -> dict[str, Any]:
        """A group for ``add_param_group``."""
        return {"params": params, **options}

    def takes(self, argument: str) -> bool:
        return argument in inspect.signature(self.cls).parameters


def inner(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that runs the update: Lookahead's inner one, else ``opt`` itself."""
    return getattr(opt, "optimizer", opt)


# --- how each optimizer is built and stepped ------------------------------------------------------

def split_for_muon(cls: type, params: Any, **hyper: Any) -> torch.optim.Optimizer:
    """MuonWithAdamW on any parameters: in each group, the matrices go to Muon and the rest to AdamW."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    split = []
    for group in groups:
        for use_muon in (True, False):
            members = [p for p in group["params"] if (p.ndim == 2) == use_muon]
            if members:
                split.append({**group, "params": members, "use_muon": use_muon})
    return cls(split, **hyper)


class MuonWithAdamWEntry(Entry):
    def group(self, params: list[torch.Tensor], **options: Any) -> dict[str, Any]:
        return {"params": params, "use_muon": all(p.ndim == 2 for p in params), **options}


def lookahead(cls: type, params: Any, k: int = 3, alpha: float = 0.5, **hyper: Any) -> torch.optim.Optimizer:
    return co.Lookahead(cls(params, **hyper), k=k, alpha=alpha)


def sophia_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], t: int) -> None:
    """Refresh the Hessian estimate from the gradients every third step, then step with a batch of 16."""
    if t % 3 == 0:
        opt.update_hessian()
    opt.step(bs=16)


ADAM_LIKE_BAD = (
    Bad(dict(lr=-1.0), "lr"),
    Bad(dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    Bad(dict(eps=-1.0), "eps"),
    Bad(dict(weight_decay=-0.1), "weight_decay"),
)
EIGHT_BIT_BAD = ADAM_LIKE_BAD + (
    Bad(dict(blocksize=0), "blocksize"),
    Bad(dict(blocksize=64.0), "blocksize must be an integer"),
    Bad(dict(min_8bit_size=-1), "min_8bit_size"),
)
MUON_BAD = (
    Bad(dict(lr=-0.1), r"lr must be in \[0.0, inf\)"),
    Bad(dict(weight_decay=-0.1), "weight_decay"),
    Bad(dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
    Bad(dict(eps=-1.0), "eps"),
    Bad(dict(ns_steps=100), r"ns_steps must be an integer in \[0, 100\)"),
    Bad(dict(ns_steps=2.5), "ns_steps"),
    Bad(dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
    Bad(dict(ns_coefficients=(1.0, float("nan"), 2.0)), r"ns_coefficients\[b\]"),
    Bad(dict(adjust_lr_fn="rms"), "adjust_lr_fn"),
    Bad(dict(ns_dtype=torch.int32), "ns_dtype"),
)
# 8-bit moments for the matrices and the 3-d block (12 and 15 elements: blocks of 4, the last one
# short); the vector and the scalar, below min_8bit_size, keep float32 moments.
EIGHT_BIT = dict(min_8bit_size=10, blocksize=4)

REGISTRY = [
    Entry("SGD", co.SGD, (dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                          dict(lr=0.1, momentum=0.9, dampening=0.2, maximize=True),
                          dict(lr=0.1)),
          bad=(Bad(dict(lr=-0.1), r"lr must be in \[0.0, inf\), got -0.1"),
               Bad(dict(momentum=-0.1), "momentum"),
               Bad(dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
               Bad(dict(dampening=1.5), r"dampening must be in \[0.0, 1.0\]"),
               Bad(dict(weight_decay=-1.0), "weight_decay"),
               Bad(dict(nesterov=True), "nesterov"),
               Bad(dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov")),
          paths=frozenset({"foreach", "tiled"})),
    Entry("Adagrad", co.Adagrad, (dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1, weight_decay=0.1),),
          bad=(Bad(dict(lr_decay=-1.0), "lr_decay"),
               Bad(dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
               Bad(dict(eps=-1e-10), "eps")),
          paths=frozenset({"tiled"})),
    Entry("RMSprop", co.RMSprop, (dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1),),
          bad=(Bad(dict(alpha=1.0), r"alpha must be in \[0.0, 1.0\)"),
               Bad(dict(alpha=-0.5), "alpha"),
               Bad(dict(momentum=-0.5), "momentum"),
               Bad(dict(eps=-1.0), "eps")),
          paths=frozenset({"tiled"})),
    Entry("Adam", co.Adam, (dict(lr=0.01, amsgrad=True, weight_decay=0.1),
                            dict(lr=0.01, maximize=True, decoupled_weight_decay=True, weight_decay=0.1)),
          bad=(Bad(dict(lr=float("nan")), "lr"),
               Bad(dict(lr="0.1"), "lr must be a real number"),
               Bad(dict(lr=torch.tensor([0.1, 0.2])), "lr must be a number or a 1-element tensor"),
               Bad(dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0.0, 1.0\)"),
               Bad(dict(betas=(0.9, -0.1)), r"betas\[1\]"),
               Bad(dict(betas=(0.9,)), "betas must be a pair"),
               Bad(dict(eps=-1e-8), "eps"),
               Bad(dict(weight_decay=-0.1), "weight_decay")),
          paths=frozenset({"foreach", "tiled"})),
    Entry("AdamW", co.AdamW, (dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
          bad=(Bad(dict(betas=(0.9, 1.0)), r"betas\[1\]"),
               Bad(dict(weight_decay=-0.1), "weight_decay")),
          paths=frozenset({"foreach", "tiled"})),
    Entry("NAdam", co.NAdam, (dict(lr=0.01, weight_decay=0.1),
                              dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
          bad=(Bad(dict(momentum_decay=-1.0), "momentum_decay"),
               Bad(dict(betas=(-0.1, 0.999)), r"betas\[0\]"))),
    Entry("RAdam", co.RAdam, (dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), dict(lr=0.01)),
          bad=(Bad(dict(eps=-1.0), "eps"),
               Bad(dict(lr=-1.0), "lr")),
          paths=frozenset({"tiled"})),
    Entry("LAMB", co.LAMB, (dict(lr=0.01, weight_decay=0.1, clamp_value=10.0),),
          bad=(Bad(dict(lr=-0.1), r"lr must be in \[0.0, inf\)"),
               Bad(dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0.0, 1.0\)"),
               Bad(dict(eps=-1e-6), "eps"),
               Bad(dict(weight_decay=-0.1), "weight_decay"),
               Bad(dict(clamp_value=-1.0), "clamp_value")),
          second_group={"adapt": False}),
    Entry("LARS", co.LARS, (dict(lr=1.0, weight_decay=0.01, nesterov=True),),
          bad=(Bad(dict(lr=float("nan")), "lr"),
               Bad(dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
               Bad(dict(weight_decay=-1.0), "weight_decay"),
               Bad(dict(trust_coefficient=-1e-3), "trust_coefficient"),
               Bad(dict(momentum=0.0, nesterov=True), "nesterov")),
          second_group={"adapt": False}),
    Entry("Adafactor", co.Adafactor, (dict(weight_decay=0.1), dict(variant="paper", beta1=0.9)),
          bad=(Bad(dict(lr=-1.0), "lr"),
               Bad(dict(beta2_decay=0.1), "beta2_decay"),
               Bad(dict(eps=(-1.0, 1e-3)), r"eps\[0\]"),
               Bad(dict(eps=(None, -1.0)), r"eps\[1\]"),
               Bad(dict(eps=1e-3), "eps must be a pair"),
               Bad(dict(d=0.5), "d must be in"),
               Bad(dict(weight_decay=-0.1), "weight_decay"),
               Bad(dict(variant="hf"), "variant"),
               Bad(dict(beta1=1.0), "beta1"))),
    # The 8-bit optimizers in float64 (the contract's dtype; the step is then taken in float64) and
    # in float32, the dtype they are made for.
    Entry("Adam8bit", co.Adam8bit, (dict(lr=0.01, weight_decay=0.1, **EIGHT_BIT),),
          bad=EIGHT_BIT_BAD),
    Entry("Adam8bit-float32", co.Adam8bit, (dict(lr=0.01, weight_decay=0.1, **EIGHT_BIT),),
          bad=(), dtype=torch.float32),
    Entry("AdamW8bit", co.AdamW8bit, (dict(lr=0.01, weight_decay=0.1, **EIGHT_BIT),),
          bad=EIGHT_BIT_BAD, dtype=torch.float32),
    Entry("Lion", co.Lion, (dict(lr=1e-3, weight_decay=0.1), dict(lr=1e-3, betas=(0.5, 0.9))),
          bad=(Bad(dict(lr=-1e-4), r"lr must be in \[0.0, inf\)"),
               Bad(dict(betas=(1.0, 0.99)), r"betas\[0\] must be in \[0.0, 1.0\)"),
               Bad(dict(betas=(0.9, -0.1)), r"betas\[1\]"),
               Bad(dict(betas=(0.9,)), "betas must be a pair"),
               Bad(dict(weight_decay=-1.0), "weight_decay")),
          paths=frozenset({"foreach", "tiled"})),
    Entry("SophiaG", co.SophiaG, (dict(lr=0.01, rho=0.05, weight_decay=0.1),),
          bad=(Bad(dict(lr=-1.0), "lr"),
               Bad(dict(betas=(1.0, 0.99)), r"betas\[0\]"),
               Bad(dict(rho=-0.1), "rho"),
               Bad(dict(weight_decay=-1.0), "weight_decay"),
               Bad(dict(eps=0.0), "eps")),
          step=sophia_step),
    Entry("Muon", co.Muon, (dict(lr=0.02, weight_decay=0.1),
                            dict(lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw")),
          bad=MUON_BAD, shapes=MATRICES),  # Muon takes matrices only
    MuonWithAdamWEntry(
        "MuonWithAdamW", co.MuonWithAdamW, (dict(lr=0.02, weight_decay=0.1, adamw_lr=3e-3, adamw_weight_decay=0.01),),
        bad=MUON_BAD + (
            # the AdamW groups' defaults: the message names the argument
            Bad(dict(adamw_lr=-1e-3), r"adamw_lr must be in \[0.0, inf\)", "init"),
            Bad(dict(adamw_betas=(0.9, 1.0)), r"adamw_betas\[1\]", "init"),
            Bad(dict(adamw_betas=(0.9,)), "adamw_betas must be a pair", "init"),
            Bad(dict(adamw_eps=-1.0), "adamw_eps", "init"),
            Bad(dict(adamw_weight_decay=-0.1), "adamw_weight_decay", "init")),
        shapes=((8, 5), (6,), Transposed(6, 3), (4, 12), ()),  # matrices for Muon, the rest for AdamW
        decay=("weight_decay", "adamw_weight_decay"), wrap=split_for_muon),
    Entry("ScheduleFreeAdamW", co.ScheduleFreeAdamW, (dict(lr=0.01, weight_decay=0.1, warmup_steps=3),),
          bad=(Bad(dict(lr=-0.1), r"lr must be in \[0.0, inf\)"),
               Bad(dict(betas=(1.0, 0.999)), r"betas\[0\]"),
               Bad(dict(eps=-1.0), "eps"),
               Bad(dict(weight_decay=-0.1), "weight_decay"),
               Bad(dict(warmup_steps=-1), r"warmup_steps must be an integer in \[0, inf\)"),
               Bad(dict(warmup_steps=2.5), "warmup_steps"),
               Bad(dict(r=-1.0), "r must be"),
               Bad(dict(weight_lr_power=-2.0), "weight_lr_power")),
          paths=frozenset({"tiled"})),
    # Lookahead wraps an inner optimizer (AdamW here) that runs the update: its fast paths are
    # AdamW's, and a group hyperparameter reaches AdamW's checks through the wrapper.
    Entry("Lookahead(AdamW)", co.AdamW, (dict(lr=0.01, k=3, alpha=0.6),),
          bad=(Bad(dict(k=0), r"k must be an integer in \[1, inf\)", "init"),
               Bad(dict(k=2.0), "k must be an integer", "init"),
               Bad(dict(alpha=1.5), r"alpha must be in \[0.0, 1.0\]", "init"),
               Bad(dict(alpha=-0.1), "alpha", "init"),
               Bad(dict(lr=-0.1), r"lr must be in \[0.0, inf\)")),
          paths=frozenset({"foreach", "tiled"}), wrap=lookahead),
]
PROPERTIES = ("descends", "maximize", "zero_gradient", "lr_zero", "state_dict", "determinism", "bad", "sparse",
              "closure", "fast_paths", "student")


def applies(prop: str) -> list[Any]:
    """The entries that keep property ``prop`` (all but those exempt from it), for parametrize."""
    assert prop in PROPERTIES
    return [pytest.param(e, id=e.name) for e in REGISTRY if prop not in e.exempt]


def applies_with_configs(prop: str) -> list[Any]:
    """(entry, config) for every hyperparameter setting of the entries that keep property ``prop``."""
    assert prop in PROPERTIES
    return [pytest.param(e, c, id=f"{e.name}-{i}") for e in REGISTRY if prop not in e.exempt
            for i, c in enumerate(e.configs)]


def test_the_registry_holds_every_optimizer():
    exported = {getattr(co, name) for name in co.__all__
                if isinstance(getattr(co, name), type) and issubclass(getattr(co, name), torch.optim.Optimizer)}
    exported.discard(CourseOptimizer)
    registered = {e.cls for e in REGISTRY} | {type(e.build(e.params())) for e in REGISTRY}
    assert all(set(e.exempt) <= set(PROPERTIES) for e in REGISTRY)
    assert exported <= registered, f"not in the REGISTRY: {sorted(c.__name__ for c in exported - registered)}"


def train(entry: Entry, opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int = STEPS,
          **options: Any) -> torch.optim.Optimizer:
    return run(opt, params, steps, step=entry.step, **options)


def losses_on_quadratic(entry: Entry, steps: int = 20, **hyper: Any) -> list[float]:
    params = entry.params()
    opt = entry.build(params, **hyper)
    losses = [sum(quadratic(p) for p in params).item()]
    for _ in range(steps):
        opt.zero_grad()
        sum(quadratic(p) for p in params).backward()
        opt.step()
        losses.append(sum(quadratic(p) for p in params).item())
    return losses


# --- descent and ascent ---------------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["defaults", "config"])
@pytest.mark.parametrize("entry", applies("descends"))
def test_descends_on_a_convex_quadratic(entry, setting):
    losses = losses_on_quadratic(entry, **({} if setting == "defaults" else entry.configs[0]))
    assert losses[1] < losses[0] and losses[-1] < losses[1]


@pytest.mark.parametrize("entry", applies("maximize"))
def test_maximize_ascends(entry):
    losses = losses_on_quadratic(entry, **{**entry.configs[0], "maximize": True})
    assert losses[1] > losses[0] and losses[-1] > losses[1]


@pytest.mark.parametrize("entry, config", applies_with_configs("maximize"))
def test_maximize_takes_exactly_the_steps_of_minimizing_the_negation(entry, config):
    """Gradients g with maximize=True, and -g (those of -f) without: the same parameters, bit for bit."""
    up, down = entry.params(), entry.params()
    ascending = entry.build(entry.groups(up, config), **{**config, "maximize": True})
    descending = entry.build(entry.groups(down, config), **{**config, "maximize": False})
    for t in range(8):
        set_grads(up, seeded_grads(up, t))
        set_grads(down, [None if g is None else -g for g in seeded_grads(down, t)])
        for opt, params in ((ascending, up), (descending, down)):
            opt.step() if entry.step is None else entry.step(opt, params, t)
    for i, (p, q) in enumerate(zip(up, down)):
        assert torch.equal(p, q), i
    assert not torch.equal(up[0], entry.params()[0])


# --- steps that must not move -----------------------------------------------------------------------

@pytest.mark.parametrize("entry, config", applies_with_configs("zero_gradient"))
def test_zero_gradient_without_weight_decay_leaves_the_parameters_unchanged(entry, config):
    config = {**config, **{name: 0.0 for name in entry.decay}}
    params = entry.params()
    start = clones(params)
    opt = entry.build(entry.groups(params, config), **config)
    for t in range(5):
        set_grads(params, [torch.zeros_like(p) for p in params])
        opt.step() if entry.step is None else entry.step(opt, params, t)
    for p, s in zip(params, start):
        assert torch.equal(p, s)
    assert inner(opt).state  # the steps were taken


@pytest.mark.parametrize("entry", applies("lr_zero"))
def test_a_group_with_zero_lr_stays_put_while_the_other_moves(entry):
    start = entry.params()
    moving, frozen, tiny = clones(start), clones(start), clones(start)
    decay = {"weight_decay": 0.1}  # coupled or decoupled, decay is scaled by lr too
    opt = entry.build([{"params": moving}, {"params": frozen, "lr": 0.0, **decay},
                       {"params": tiny, "lr": 1e-12, **decay}], **entry.configs[0])
    for t in range(10):
        for p in moving + frozen + tiny:
            p.grad = torch.full_like(p, 1.0 + t)
        opt.step() if entry.step is None else entry.step(opt, moving + frozen + tiny, t)
    for m, f, s, q in zip(moving, frozen, tiny, start):
        assert torch.equal(f, q)
        torch.testing.assert_close(s, q, rtol=0, atol=1e-9)
        assert (m - q).abs().min() > 1e-4


# --- state dicts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, config", applies_with_configs("state_dict"))
def test_state_dict_survives_save_and_weights_only_load(entry, config):
    """Stop half way, torch.save, torch.load(weights_only=True) into a fresh optimizer, resume: bit for bit
    the uninterrupted run (two groups, lr changing every step, gradients missing on some steps)."""
    saved, _ = assert_resumes_exactly(lambda params: entry.build(entry.groups(params, config), **config),
                                      entry.params, step=entry.step)
    states = saved["optimizer"]["state"] if "optimizer" in saved else saved["state"]
    assert states
    for state in states.values():
        assert all(torch.is_tensor(v) or isinstance(v, (int, float)) for v in state.values())


@pytest.mark.parametrize("entry", applies("determinism"))
def test_the_same_seed_gives_an_identical_state_dict(entry):
    def state_dict_after_five_steps():
        torch.manual_seed(0)
        params = entry.params()
        opt = train(entry, entry.build(entry.groups(params, entry.configs[0]), **entry.configs[0]), params, 5)
        return opt.state_dict(), params

    (first, first_params), (second, second_params) = state_dict_after_five_steps(), state_dict_after_five_steps()
    assert_equal_nested(first, second)
    assert all(torch.equal(p, q) for p, q in zip(first_params, second_params))
    assert (first["optimizer"] if "optimizer" in first else first)["state"][0]["step"] == 5


# --- bad input ----------------------------------------------------------------------------------------

BAD_CASES = [pytest.param(e, b, id=f"{e.name}-{next(iter(b.kwargs))}-{i}")
             for e in REGISTRY if "bad" not in e.exempt for i, b in enumerate(e.bad)]


@pytest.mark.parametrize("entry, bad", BAD_CASES)
def test_bad_hyperparameter_raises_value_error_naming_it(entry, bad):
    names = [bad.named] if bad.named else list(bad.kwargs)
    attempts = [lambda: entry.build(entry.params(), **bad.kwargs)]
    if bad.where == "both":
        first, second = entry.params()[:1], entry.params(seed=1)[:1]
        attempts.append(lambda: entry.build([{"params": first}, {"params": second, **bad.kwargs}]))
        attempts.append(lambda: entry.build(first).add_param_group(entry.group(second, **bad.kwargs)))
    for attempt in attempts:
        with pytest.raises(ValueError, match=bad.match) as error:
            attempt()
        assert any(str(error.value).startswith(name) for name in names), str(error.value)


@pytest.mark.parametrize("entry", applies("sparse"))
def test_sparse_gradients_are_rejected_with_a_clear_error(entry):
    emb = torch.nn.Embedding(10, 3, sparse=True).to(entry.dtype)
    emb(torch.tensor([1, 2])).sum().backward()
    opt = entry.build(emb.parameters())
    with pytest.raises(RuntimeError, match=f"{type(inner(opt)).__name__} does not support sparse gradients; use dense"):
        opt.step()


# --- the closure ----------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", applies("closure"))
def test_closure_is_evaluated_with_grad_enabled_and_its_loss_returned(entry):
    params, twin = entry.params(), entry.params()
    opt, twin_opt = entry.build(params, **entry.configs[0]), entry.build(twin, **entry.configs[0])
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = sum(quadratic(p) for p in params)
        loss.backward()  # raises under no_grad: the loss would not require grad
        calls.append(loss)
        return loss

    for _ in range(3):
        with torch.no_grad():  # the optimizer must enable grad for the closure itself
            loss = opt.step(closure)
        assert calls[-2] is True and loss is calls[-1]
        twin_opt.zero_grad()
        sum(quadratic(p) for p in twin).backward()
        assert twin_opt.step() is None
    assert len(calls) == 6
    for p, q in zip(params, twin):  # the step used the closure's gradients
        assert torch.equal(p, q)


# --- the fast paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in REGISTRY])
def test_fast_paths_are_the_ones_declared(entry):
    assert fast_paths(type(inner(entry.build(entry.params())))) == entry.paths


def run_with_path(entry, config, foreach, device, tile_size=None):
    params = [p.detach().to(device).requires_grad_() for p in entry.params()]
    opt = entry.build(entry.groups(params, config), foreach=foreach, **config)
    if tile_size is not None:
        inner(opt).tile_size = tile_size
    return train(entry, opt, params), params


FAST = [pytest.param(e, c, device, id=f"{e.name}-{i}-{device}", marks=marks)
        for e in REGISTRY if e.paths and "fast_paths" not in e.exempt
        for i, c in enumerate(e.configs) for device, marks in DEVICE_MARKS.items()]


@pytest.mark.parametrize("entry, config, device", FAST)
def test_fast_paths_equal_the_loop(entry, config, device):
    """On the CPU bit for bit: the tiled loop (tiles of 5 elements, so most tensors span several tiles and
    end on a short one) and the foreach kernels; on CUDA to float64 round-off."""
    loop, loop_params = run_with_path(entry, config, False, device)
    assert inner(loop).implementation(loop.param_groups[0], torch.device(device)) == "loop"
    paths = {"tiled": (None, 5)} if device == "cpu" and "tiled" in entry.paths else {}
    if "foreach" in entry.paths:
        paths["foreach"] = (True, None)
    assert paths
    exact = device == "cpu"
    for name, (foreach, tile_size) in paths.items():
        opt, params = run_with_path(entry, config, foreach, device, tile_size)
        assert inner(opt).implementation(opt.param_groups[0], torch.device(device)) == name
        for p, q in zip(params, loop_params):
            if exact:
                assert torch.equal(p, q), name
            else:
                torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
            state, expected = inner(opt).state[p], inner(loop).state[q]
            assert state.keys() == expected.keys()
            for key, value in expected.items():
                if torch.is_tensor(value):
                    assert torch.equal(state[key], value) if exact else torch.allclose(state[key], value), key
                else:
                    assert state[key] == value, key


def normalized(grad: torch.Tensor) -> torch.Tensor:
    """A per-tensor change of the gradient: on a tile, or skipped by a parent's kernel, it would differ."""
    return grad / grad.norm().clamp_min(1e-12)


@pytest.mark.parametrize("entry", applies("student"))
def test_a_subclass_that_overrides_only_update_runs_its_own_math_on_every_path(entry):
    """A student's variant of each optimizer (update on g / ||g||) never runs its parent's fast paths:
    on every path it equals the parent's plain loop fed g / ||g||."""
    class Student(entry.cls):
        def update(self, param, grad, state, group, **kwargs):
            super().update(param, normalized(grad), state, group, **kwargs)

    assert fast_paths(Student) == frozenset()
    config = entry.configs[0]
    loop = {"foreach": False} if entry.takes("foreach") else {}
    expected = entry.params()
    run(entry.build(entry.groups(expected, config), **config, **loop), expected,
        grads=lambda ps, t: [None if g is None else normalized(g) for g in seeded_grads(ps, t)])
    for foreach in ([None, True, False] if entry.takes("foreach") else [None]):
        params = entry.params()
        opt = entry.build(entry.groups(params, config), cls=Student, **config,
                          **({"foreach": foreach} if entry.takes("foreach") else {}))
        inner(opt).tile_size = 5
        assert inner(opt).implementation(opt.param_groups[0], torch.device("cpu")) == "loop"
        run(opt, params)
        for p, q in zip(params, expected):
            assert torch.equal(p, q), foreach


class NormalizedAdam(co.Adam):
    """A student's variant, as lesson 03 teaches: override ``update`` only. Adam on g / ||g|| (per tensor)."""

    def update(self, param, grad, state, group):
        super().update(param, grad / grad.norm().clamp_min(1e-12), state, group)


class TiledStudentSGD(co.SGD):
    """A variant that declares its own (elementwise) update tileable: the tiled path is its to take."""

    tileable = True

    def update(self, param, grad, state, group):
        super().update(param, grad.clamp(-1, 1), state, group)


def reference_normalized_adam(param: torch.Tensor, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
    """The same variant written out with torch.optim.Adam on whole tensors."""
    p = param.detach().clone().requires_grad_()
    opt = torch.optim.Adam([p], lr=lr, foreach=False)
    for g in grads:
        p.grad = g / g.norm()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach", [None, True, False], ids=["default", "foreach", "loop"])
def test_a_normalized_adam_runs_its_own_math_on_tensors_of_two_tiles(device, foreach):
    """Against torch.optim.Adam fed g / ||g||, on a tensor of 2**20 elements: two tiles of the tiled loop."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(1024, 1024, generator=gen).to(device)
    grads = [torch.randn(1024, 1024, generator=gen).to(device) for _ in range(3)]
    p = start.clone().requires_grad_()
    opt = NormalizedAdam([p], lr=1e-2, foreach=foreach)
    assert opt.implementation(opt.param_groups[0], p.device) == "loop"
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = reference_normalized_adam(start, grads, 1e-2)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_fast_paths_belong_to_the_class_that_wrote_the_math():
    assert fast_paths(co.Adam) == {"foreach", "tiled"} == fast_paths(co.AdamW)  # AdamW: Adam's math, unchanged
    assert fast_paths(co.SGD) == {"foreach", "tiled"}
    assert fast_paths(co.RMSprop) == {"tiled"} and fast_paths(co.NAdam) == frozenset()
    assert fast_paths(NormalizedAdam) == frozenset()
    assert fast_paths(TiledStudentSGD) == {"tiled"}  # declared by the class that changed the math; no foreach


def test_a_variant_that_declares_itself_tileable_is_tiled_and_exact():
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(3000, generator=gen)
    results = []
    for foreach in (False, None):
        p = start.clone().requires_grad_()
        opt = TiledStudentSGD([p], lr=0.1, momentum=0.9, foreach=foreach)
        opt.tile_size = 256
        assert opt.implementation(opt.param_groups[0], p.device) == ("loop" if foreach is False else "tiled")
        for t in range(4):
            p.grad = 3 * torch.sin(torch.arange(3000.0) + t)
            opt.step()
        results.append(p.detach())
    assert torch.equal(*results)


@pytest.mark.parametrize(
    "cls, kw, device, expected",
    [(co.Adam, {}, "cpu", "tiled"), (co.Adam, {}, "cuda", "foreach"), (co.Adam, dict(foreach=True), "cpu", "foreach"),
     (co.Adam, dict(foreach=False), "cuda", "loop"), (co.SGD, {}, "cpu", "tiled"), (co.SGD, {}, "cuda", "foreach"),
     (co.Adagrad, {}, "cuda", "loop"), (co.Adagrad, dict(foreach=True), "cpu", "tiled"), (co.NAdam, {}, "cpu", "loop")],
)
def test_implementation_choice(cls, kw, device, expected):
    opt = cls([torch.zeros(1, requires_grad=True)], **kw)
    assert opt.implementation(opt.param_groups[0], torch.device(device)) == expected


# --- the base class's plug-in points --------------------------------------------------------------

class ClippedSGD(CourseOptimizer):
    """SGD whose step is scaled so that the group's global gradient norm is at most max_norm."""

    def __init__(self, params, lr: float = 0.1, max_norm: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, max_norm=max_norm, foreach=None, maximize=False))

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_range("max_norm", group["max_norm"], 0.0, math.inf)

    def update(self, param, grad, state, group) -> None:
        param.add_(grad, alpha=-group["lr"])

    def step_group(self, group, params, grads, states, scale: float = 1.0) -> None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        factor = scale * min(1.0, group["max_norm"] / (float(norm) + 1e-12))
        for param, grad, state in zip(params, grads, states):
            self.update(param, grad * factor, state, group)


def test_a_whole_group_optimizer_with_extra_step_arguments():
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen)]
    grads = [10 * torch.randn(3, 2, generator=gen), 10 * torch.randn(4, generator=gen)]
    ours = [t.clone().requires_grad_() for t in start]
    ref = [t.clone().requires_grad_() for t in start]
    opt = ClippedSGD(ours, lr=0.1, max_norm=1.0)
    for p, g in zip(ours, grads):
        p.grad = g.clone()
    opt.step(scale=0.5)
    for p, g in zip(ref, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ref, max_norm=1.0)
    torch.optim.SGD(ref, lr=0.05).step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q)
    assert all(opt.state[p]["step"] == 1 for p in ours)
    with pytest.raises(ValueError, match="max_norm"):
        ClippedSGD(ours, max_norm=-1.0)
    with pytest.raises(TypeError):
        co.Adam(ours).step(scale=0.5)


def test_a_subclass_must_define_its_update():
    class NoUpdate(CourseOptimizer):
        pass

    with pytest.raises(TypeError):
        NoUpdate([torch.zeros(1, requires_grad=True)], dict(lr=0.1))
