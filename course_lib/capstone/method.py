r"""Layer-adaptive AdamW: a learning-rate multiplier per layer and a step-dependent epsilon.

The capstone revisits a paper that changes AdamW in two ways and finds no gain
(validation loss 4.9437 against the baseline's 4.9266):

1. each transformer layer :math:`l` learns with :math:`\eta_l = \eta \, m_l` (its equation 1),
   with multipliers in the range 1.0-1.2 (the range that its own ablation reports to hurt);
2. the :math:`\epsilon` of Adam's denominator follows a schedule (its equation 2), see
   :func:`paper_eps`.

Here the multipliers live in param groups (:func:`layer_param_groups` builds them, one
multiplier per block) and :class:`LayerAdaptiveAdamW` applies them; the schedule is
:class:`PaperEpsScheduler`. With every multiplier 1 and a constant epsilon the optimizer is
torch's ``AdamW``, bit for bit.

What the paper leaves open, and the choices made here:

* which layer gets which multiplier: it gives only the range. :func:`linear_multipliers`
  ramps linearly from ``first`` (block 0) to ``last`` (the last block); pass any list.
* the parameters outside the blocks, the token embedding (tied with the output head, so it
  is both the first and the last layer) and the final norm: ``other_mult``, default 1.
* weight decay: by module type through :func:`course_lib.param_groups.decays`: the weight
  matrices of ``Linear`` layers decay; biases, norm gains and (unless asked) embeddings do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..param_groups import decays
from ..schedules import ParamGroupScheduler, plot_schedule

__all__ = [
    "PAPER_VARIANTS",
    "VARIANTS",
    "Variant",
    "LayerAdaptiveAdamW",
    "PaperEpsScheduler",
    "layer_param_groups",
    "linear_multipliers",
    "nudge_weights_",
    "paper_eps",
    "plot_paper_eps",
]


def _check_multiplier(name: str, value: Any) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def linear_multipliers(n_layers: int, first: float = 1.0, last: float = 1.2) -> list[float]:
    """``n_layers`` multipliers from ``first`` (block 0) to ``last`` (the last block), evenly spaced."""
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    first, last = _check_multiplier("first", first), _check_multiplier("last", last)
    if n_layers == 1:
        return [first]
    return [first + (last - first) * i / (n_layers - 1) for i in range(n_layers)]


def layer_param_groups(model: nn.Module, multipliers: Sequence[float], *,
                       blocks: Sequence[nn.Module] | None = None, weight_decay: float = 0.1,
                       other_mult: float = 1.0,
                       decay_embeddings: bool = False) -> list[dict[str, Any]]:
    """Param groups with an ``lr_mult`` per block, split into decayed and not decayed.

    Every parameter of ``blocks[i]`` (default ``model.layers``), its norms and biases included,
    gets ``multipliers[i]``: depth belongs to the block, not to the tensor. Parameters outside
    the blocks get ``other_mult``. Each group has the keys ``params``, ``weight_decay``
    (``weight_decay`` or 0, see :func:`course_lib.param_groups.decays`), ``lr_mult`` and
    ``layer`` (the block index, -1 outside the blocks); the groups outside the blocks come
    first. A tied parameter is listed once; frozen parameters are left out.
    """
    if blocks is None:
        if not isinstance(getattr(model, "layers", None), nn.ModuleList):
            raise ValueError("blocks must be given for a model without a `layers` ModuleList")
        blocks = list(model.layers)
    if len(multipliers) != len(blocks):
        raise ValueError(f"multipliers must hold one value per block ({len(blocks)}), "
                         f"got {len(multipliers)}")
    mults = [_check_multiplier(f"multipliers[{i}]", m) for i, m in enumerate(multipliers)]
    other_mult = _check_multiplier("other_mult", other_mult)
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    block_of: dict[int, int] = {}
    for i, block in enumerate(blocks):
        for p in block.parameters():
            if block_of.setdefault(id(p), i) != i:
                raise ValueError(f"blocks {block_of[id(p)]} and {i} share a parameter")
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        decayed = decays(owner, param, decay_embeddings)
        layer = block_of.get(id(param), -1)
        group = groups.setdefault((layer, decayed), {
            "params": [],
            "weight_decay": float(weight_decay) if decayed else 0.0,
            "lr_mult": other_mult if layer < 0 else mults[layer],
            "layer": layer,
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


class LayerAdaptiveAdamW(torch.optim.AdamW):
    r"""AdamW whose param groups may carry a learning-rate multiplier ``lr_mult`` (default 1).

    A group with base rate :math:`\eta` (its own ``lr`` or the default) and multiplier
    :math:`m` is stepped by AdamW with rate :math:`\eta m`, decoupled weight decay included:

    .. math::
        \theta \leftarrow \theta - \eta m \lambda \theta, \qquad
        \theta \leftarrow \theta - \eta m \, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}

    The product is stored as the group's ``lr`` when the group is added (``lr_mult`` stays in
    the group for the record), so everything else is torch's AdamW: ``foreach`` and ``fused``
    kernels, GradScaler, state dicts. LR schedulers that scale each group's own initial rate
    (``LambdaLR``, ``CosineAnnealingLR``, the course's ``WarmupCosineLR``) keep the ratios
    between layers; one that writes a single absolute rate into every group (``OneCycleLR``
    with a scalar ``max_lr``) erases them. The groups passed in are copied, not modified, so
    one list of groups can build several optimizers.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        mult = _check_multiplier("lr_mult", group.setdefault("lr_mult", 1.0))
        group["lr"] = group.get("lr", self.defaults["lr"]) * mult
        super().add_param_group(group)


def paper_eps(t: float, *, eps_base: float = 1e-8, eps_min: float = 1e-9, warmup: int = 200,
              decay: int = 200, alpha: float = 0.1) -> float:
    r"""The paper's epsilon schedule (its equation 2), as written, at step ``t``.

    .. math::
        \epsilon_t = \begin{cases}
        \epsilon_{base}\,(1 - t/T_w) + \epsilon_{min}\, t/T_w & t < T_w \\
        \max\bigl(\epsilon_{base} / (t/T_d + 1)^{\alpha},\ \epsilon_{min}\bigr) & t \ge T_w
        \end{cases}

    with :math:`T_w` = ``warmup`` and :math:`T_d` = ``decay``. What it does with the paper's
    constants (:math:`10^{-8}, 10^{-9}, 200, 200, 0.1`):

    * the "warmup" is a linear *decrease*, from 1e-8 towards 1e-9;
    * at :math:`T_w` the two pieces do not meet: the first tends to :math:`\epsilon_{min}` =
      1e-9, the second starts at :math:`\epsilon_{base}/2^{0.1}` = 9.33e-9, a jump up by a
      factor 9.3;
    * after that :math:`\epsilon` falls slowly (6.8e-9 at step 10 000) and reaches the floor
      :math:`\epsilon_{min}` only at :math:`t = T_d((\epsilon_{base}/\epsilon_{min})^{1/\alpha} - 1)`
      = 2e12 steps: the ``max`` never acts.
    """
    if not (isinstance(t, (int, float)) and t >= 0):
        raise ValueError(f"t must be a number >= 0, got {t!r}")
    if not (isinstance(eps_base, (int, float)) and eps_base > 0):
        raise ValueError(f"eps_base must be > 0, got {eps_base!r}")
    if not (isinstance(eps_min, (int, float)) and 0 <= eps_min <= eps_base):
        raise ValueError(f"eps_min must be in [0, eps_base={eps_base}], got {eps_min!r}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if not (isinstance(decay, int) and decay >= 1):
        raise ValueError(f"decay must be an integer >= 1, got {decay!r}")
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    if t < warmup:
        frac = t / warmup
        return eps_base * (1.0 - frac) + eps_min * frac
    return max(eps_base / (t / decay + 1.0) ** alpha, eps_min)


class PaperEpsScheduler(ParamGroupScheduler):
    """Sets every group's ``eps`` to :func:`paper_eps` of the step, with ``eps_base`` = the group's initial eps.

    Step it once after each optimizer step, like an LR scheduler: optimizer step ``t``
    (counting from 0) uses ``paper_eps(t)``. Build the optimizer with ``eps=eps_base``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, eps_min: float = 1e-9,
                 warmup: int = 200, decay: int = 200, alpha: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.eps_min, self.warmup, self.decay, self.alpha = eps_min, warmup, decay, alpha
        super().__init__(optimizer, "eps", self._eps_at, last_epoch)

    def _eps_at(self, step: int, eps_base: float) -> float:
        return paper_eps(step, eps_base=eps_base, eps_min=self.eps_min, warmup=self.warmup,
                         decay=self.decay, alpha=self.alpha)


def plot_paper_eps(steps: int = 1000, ax: Any = None, *, eps_base: float = 1e-8,
                   eps_min: float = 1e-9, warmup: int = 200, decay: int = 200,
                   alpha: float = 0.1) -> list[float]:
    """Draw the eps that optimizer steps ``0 .. steps-1`` use under :class:`PaperEpsScheduler`.

    The values come from stepping the scheduler on a throwaway optimizer
    (:func:`course_lib.schedules.plot_schedule`); the y axis is logarithmic, with the end of
    the "warmup" and the floor ``eps_min`` marked. Returns the values.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3))
    values = plot_schedule(
        lambda opt: PaperEpsScheduler(opt, eps_min=eps_min, warmup=warmup, decay=decay,
                                      alpha=alpha),
        steps, ax=ax, key="eps", base_value=eps_base)
    ax.set_yscale("log")
    ax.axvline(warmup, color="gray", linestyle=":", label=f"$T_w$ = {warmup}")
    ax.axhline(eps_min, color="gray", linestyle="--", label=r"$\epsilon_{min}$")
    ax.set_ylabel(r"$\epsilon_t$")
    ax.legend()
    return values


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """What an optimizer variant changes: per-block LR multipliers, the eps schedule, or neither.

    ``nudge_init`` moves every initial weight by one float32 step (:func:`nudge_weights_`):
    the control, a change that always acts and is too small to matter by itself.
    ``torch_adamw`` uses ``torch.optim.AdamW`` instead of :class:`LayerAdaptiveAdamW`.
    """

    multipliers: bool
    eps_schedule: bool
    nudge_init: bool = False
    torch_adamw: bool = False


VARIANTS: dict[str, Variant] = {
    "adamw": Variant(multipliers=False, eps_schedule=False),
    "layer_adaptive": Variant(multipliers=True, eps_schedule=True),
    "multipliers_only": Variant(multipliers=True, eps_schedule=False),
    "eps_only": Variant(multipliers=False, eps_schedule=True),
    "control": Variant(multipliers=False, eps_schedule=False, nudge_init=True),
    "torch_adamw": Variant(multipliers=False, eps_schedule=False, torch_adamw=True),
}
"""The optimizer variants; the first four are the paper's baseline, method and two ablations."""


@torch.no_grad()
def nudge_weights_(model: nn.Module, seed: int) -> None:
    """Move every non-zero weight of ``model`` to the next representable number up or down (one ulp), in place.

    The direction of each entry is a fair coin from a generator of its own seeded with
    ``seed``, so the global random state, and with it everything else about the run, stays as
    it was. A relative change of about 1e-7 (float32) is far below anything a training run
    could respond to by design, yet it always acts: every forward pass differs from the
    unnudged model's in its last bits from the first step on. Zeros (the initial biases) stay
    zero, since the next number after 0 is a denormal. The capstone's ``"control"`` variant.
    """
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        up = torch.rand(p.shape, generator=generator) < 0.5
        toward = torch.where(up, math.inf, -math.inf).to(device=p.device, dtype=p.dtype)
        p.copy_(torch.where(p != 0, torch.nextafter(p, toward), p))


PAPER_VARIANTS: tuple[str, ...] = ("adamw", "layer_adaptive", "multipliers_only", "eps_only")
