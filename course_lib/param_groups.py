"""Param groups: which parameters decay, which learn faster, which optimizer moves which part.

- :func:`decays` / :func:`weight_decay_groups`: weight decay for the weight matrices and
  kernels of ``Linear``, ``Conv*``, ``Bilinear``, attention and recurrent layers; none for
  their biases, for normalization layers, or (unless asked) for embeddings. The choice is
  made by module type, never by substrings of parameter names.
- :func:`layerwise_lr_groups`: layer-wise LR decay; depth belongs to a block, so a block's
  weight and bias share one rate.
- :func:`discriminative_lr_groups`: one LR per named part of a model.
- :class:`MultiOptimizer`: several optimizers for several parts of one model behind one
  object, stepped after ONE backward pass.

Every function visits ``model.named_parameters()``, which lists a shared (tied) parameter
once, under its first name, so a tied parameter lands in exactly one group. Frozen
parameters (``requires_grad=False``) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase  # base of every BatchNorm and InstanceNorm, lazy ones too

__all__ = [
    "EMBEDDING_TYPES",
    "NORM_TYPES",
    "WEIGHT_LAYER_TYPES",
    "MultiOptimizer",
    "decays",
    "discriminative_lr_groups",
    "layerwise_lr_groups",
    "weight_decay_groups",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
"""Normalization layers: their scales and shifts never decay (decay would pull a scale to 0)."""

EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
"""Lookup tables: decayed only when asked (rare tokens' rows would shrink between their updates)."""

WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.MultiheadAttention,
    nn.RNNBase,
)
"""Layers that multiply by a weight matrix or kernel: the matrix decays, the bias does not."""


def decays(module: nn.Module, param: nn.Parameter, decay_embeddings: bool = False) -> bool:
    r"""Whether weight decay applies to ``param``, a parameter that ``module`` itself owns.

    - a weight layer (:data:`WEIGHT_LAYER_TYPES`): its matrices and kernels decay (2 or more
      dimensions); its biases do not (1 dimension). Decay shrinks the map :math:`x \mapsto Wx`;
      a bias only shifts the output, and shrinking it buys no smoothness;
    - a normalization layer: no;
    - an embedding: ``decay_embeddings``;
    - any other module (a bare ``nn.Parameter`` of a custom module, e.g. a learned position
      table or a gate): no. Decay is a regularizer; apply it where its effect is known.
    """
    if isinstance(module, NORM_TYPES):
        return False
    if isinstance(module, EMBEDDING_TYPES):
        return decay_embeddings
    if isinstance(module, WEIGHT_LAYER_TYPES):
        return param.ndim >= 2
    return False


def _owned_parameters(model: nn.Module) -> Iterable[tuple[str, nn.Module, nn.Parameter]]:
    """``(name, owning module, parameter)`` for each distinct trainable parameter, tied ones once."""
    for name, param in model.named_parameters():
        if param.requires_grad:
            module_name, _, _ = name.rpartition(".")
            yield name, model.get_submodule(module_name), param


def weight_decay_groups(
    model: nn.Module, weight_decay: float, decay_embeddings: bool = False
) -> list[dict[str, Any]]:
    """Two param groups: ``{"params": decayed, "weight_decay": weight_decay}`` and the rest with 0.

    Which parameters decay is :func:`decays`. A tied parameter (e.g. an embedding shared with
    the output layer) is judged by its first owner in ``model.named_parameters()`` order.
    Pass the result to any optimizer: ``AdamW(weight_decay_groups(model, 0.1), lr=1e-3)``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = [], []
    for _, module, param in _owned_parameters(model):
        (decay if decays(module, param, decay_embeddings) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _contains(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def layerwise_lr_groups(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    lr: float,
    decay_rate: float,
    head: Sequence[nn.Module] = (),
    weight_decay: float = 0.0,
    decay_embeddings: bool = False,
) -> list[dict[str, Any]]:
    r"""Layer-wise LR decay: a parameter at depth :math:`d` of :math:`L` blocks gets :math:`\eta\,\gamma^{L + 1 - d}`.

    Depth is a property of a block, not of a tensor: every parameter of ``blocks[i]`` has
    depth :math:`i + 1`; parameters of the ``head`` modules (e.g. the final norm and the
    output layer) have depth :math:`L + 1` and get ``lr`` itself; everything else (embeddings,
    stem) has depth 0, the smallest rate :math:`\eta\,\gamma^{L+1}`. A parameter shared by
    several parts (tied weights) takes the deepest one.

    Each depth gives up to two groups, decayed and not (see :func:`decays`), with keys
    ``lr``, ``weight_decay`` and ``depth``.
    """
    if not 0.0 < decay_rate <= 1.0:
        raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    top = len(blocks) + 1
    parts = [(i + 1, _contains(block)) for i, block in enumerate(blocks)]
    parts.append((top, set().union(*(_contains(m) for m in head))))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for _, module, param in _owned_parameters(model):
        depth = max((d for d, ids in parts if id(param) in ids), default=0)
        decayed = decays(module, param, decay_embeddings)
        group = groups.setdefault(
            (depth, decayed),
            {
                "params": [],
                "lr": lr * decay_rate ** (top - depth),
                "weight_decay": weight_decay if decayed else 0.0,
                "depth": depth,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def discriminative_lr_groups(
    model: nn.Module,
    lrs: Mapping[str, float],
    weight_decay: float = 0.0,
    decay_embeddings: bool = False,
) -> list[dict[str, Any]]:
    """One LR per named part: ``lrs`` maps a submodule name (``"backbone"``, ``"head"``) to its LR.

    Every trainable parameter must belong to exactly one named part, else ``ValueError``
    (so the parts must not nest). Each part gives up to two groups,
    decayed and not (see :func:`decays`), with keys ``lr``, ``weight_decay`` and ``part``.
    """
    if not lrs:
        raise ValueError("lrs must name at least one submodule")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    owner: dict[int, str] = {}
    for part, lr in lrs.items():
        if lr <= 0:
            raise ValueError(f"lrs[{part!r}] must be > 0, got {lr}")
        for pid in _contains(model.get_submodule(part)):
            if pid in owner:
                raise ValueError(f"a parameter belongs to two parts, {owner[pid]!r} and {part!r}")
            owner[pid] = part
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, module, param in _owned_parameters(model):
        if id(param) not in owner:
            raise ValueError(f"parameter {name!r} belongs to none of the parts {sorted(lrs)}")
        part = owner[id(param)]
        decayed = decays(module, param, decay_embeddings)
        groups.setdefault(
            (part, decayed),
            {"params": [], "lr": lrs[part], "weight_decay": weight_decay if decayed else 0.0, "part": part},
        )["params"].append(param)
    return list(groups.values())


class MultiOptimizer:
    """Several optimizers, each on its own part of one model, used like one optimizer.

    The training step is the usual one, with ONE backward pass::

        opt = MultiOptimizer({"body": SGD(model.body.parameters(), lr=0.1),
                              "head": Adam(model.head.parameters(), lr=1e-3)}, model=model)
        opt.zero_grad(); loss_fn(model, batch).backward(); opt.step()

    Calling ``backward`` once per optimizer on the same graph fails (the graph is freed after
    the first), or with ``retain_graph=True`` adds the gradient again into parameters whose
    optimizer did not zero it in between. Each optimizer's
    ``step`` only reads the gradients of its own parameters, so one backward serves all.

    No parameter may belong to two optimizers; with ``model`` given, every trainable
    parameter of the model must belong to one. ``param_groups`` lists the groups of all
    optimizers (the same dicts, so changing ``lr`` there changes it in the optimizer); for a
    LR scheduler, build one per optimizer from :attr:`optimizers`.
    """

    def __init__(
        self,
        optimizers: Mapping[str, torch.optim.Optimizer] | Sequence[torch.optim.Optimizer],
        model: nn.Module | None = None,
    ) -> None:
        if not isinstance(optimizers, Mapping):
            optimizers = {str(i): opt for i, opt in enumerate(optimizers)}
        if not optimizers:
            raise ValueError("optimizers must hold at least one optimizer")
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(optimizers)
        owner: dict[int, str] = {}
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in owner:
                        where = "twice in" if owner[id(p)] == name else f"in {owner[id(p)]!r} and in"
                        raise ValueError(f"a parameter of shape {tuple(p.shape)} is {where} optimizer {name!r}")
                    owner[id(p)] = name
        if model is not None:
            for pname, p in model.named_parameters():
                if p.requires_grad and id(p) not in owner:
                    raise ValueError(f"parameter {pname!r} of the model is in none of the optimizers")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The param groups of every optimizer, in order (the optimizers' own dicts)."""
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step every optimizer on the gradients already computed (by one backward)."""
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"state holds optimizers {sorted(state)}, this one has {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
