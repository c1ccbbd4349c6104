"""The published training recipes (lesson 11): each as stated by its paper or released code.

Each published recipe (ResNet-50 on ImageNet, BERT pretraining and fine-tuning, DCGAN, ViT) is a
:class:`Recipe`: the settings as the paper or its released code states them, with their source.
They are far too large to run here; :meth:`Recipe.scaled` keeps the method and changes the
scale-dependent numbers, and :meth:`Recipe.build` turns a recipe into an optimizer and a
scheduler for any model and number of steps. The small stand-ins that the lesson runs them on
live with the other models and data: :mod:`course_lib.models` (``mlp``, ``SmallConvNet``,
``TinyTransformer``, ``TinyViT``, ``gan_pair``), :mod:`course_lib.data` (``load_digits``,
``sort_task``, ``ring_data``) and :mod:`course_lib.train.tasks` (``train_gan``, ...).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR

from .param_groups import weight_decay_groups
from .schedules import WarmupCosineLR, WarmupPolyLR

__all__ = ["PUBLISHED", "Recipe"]


@dataclass(frozen=True)
class Recipe:
    """An optimizer recipe as published: optimizer, hyperparameters, schedule and training length.

    ``schedule`` is ``"constant"``, ``"multistep"`` (multiply by ``gamma`` at each of the
    ``milestones``, given as fractions of training), ``"linear"`` (linear decay to 0) or
    ``"cosine"`` (cosine decay to ``min_ratio`` of the peak); ``warmup_steps`` of linear warmup
    come first. ``steps`` is the published length in optimizer steps, or ``epochs`` with
    ``train_examples`` (then ``steps = epochs * ceil(train_examples / batch_size)``); either may be
    unknown (``None``) when it depends on the task. ``warmup_ratio``, if set, is a warmup given as
    a share of training (as fine-tuning code states it) instead of ``warmup_steps``. ``source`` names the citation the numbers come
    from; ``notes`` says what the source leaves open.
    """

    name: str
    source: str
    optimizer: str
    lr: float
    batch_size: int
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    min_ratio: float = 0.0
    epochs: float | None = None
    train_examples: int | None = None
    steps: int | None = None
    clip_norm: float | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in ("SGD", "Adam", "AdamW"):
            raise ValueError(f"optimizer must be 'SGD', 'Adam' or 'AdamW', got {self.optimizer!r}")
        if self.schedule not in ("constant", "multistep", "linear", "cosine"):
            raise ValueError(f"schedule must be 'constant', 'multistep', 'linear' or 'cosine', got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ValueError(f"milestones are fractions of training in (0, 1), got {self.milestones}")

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps of the published run, when the source fixes them."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None and self.train_examples is not None:
            return int(self.epochs * math.ceil(self.train_examples / self.batch_size))
        return None

    @property
    def warmup_fraction(self) -> float | None:
        """The share of training spent warming up: ``warmup_ratio``, or ``warmup_steps`` over the length."""
        if self.warmup_ratio is not None:
            return self.warmup_ratio
        if self.warmup_steps == 0:
            return 0.0
        total = self.total_steps
        return None if total is None else self.warmup_steps / total

    def scaled(self, **changes: Any) -> Recipe:
        """The same recipe with some settings changed (e.g. ``lr``, ``batch_size``, ``warmup_steps``).

        The warmup stays the same *share* of training: a published warmup given in steps is
        pinned as ``warmup_ratio`` first, so that changing ``batch_size`` (and with it the
        published length in steps) does not change it. Passing ``warmup_steps`` or
        ``warmup_ratio`` sets the warmup anew.
        """
        if "warmup_steps" in changes and "warmup_ratio" not in changes:
            changes["warmup_ratio"] = None
        elif "warmup_ratio" not in changes and self.warmup_ratio is None and self.warmup_fraction is not None:
            changes["warmup_ratio"] = self.warmup_fraction
        return dataclasses.replace(self, **changes)

    def build(
        self,
        model: nn.Module,
        total_steps: int,
        warmup_steps: int | None = None,
        groups: list[dict[str, Any]] | None = None,
    ) -> tuple[torch.optim.Optimizer, LRScheduler | None]:
        """An optimizer and a per-step LR scheduler that follow this recipe for ``total_steps`` steps.

        Weight decay goes to weight matrices and kernels only (:func:`course_lib.param_groups.
        weight_decay_groups`, chosen by module type), whatever the source did. ``groups`` replaces
        those param groups (e.g. per-part learning rates from :func:`course_lib.param_groups.
        discriminative_lr_groups`); a group without ``lr`` or ``weight_decay`` takes the recipe's.
        The schedule scales every group's rate by the same factor. The warmup lasts
        ``warmup_steps`` if given, else the recipe's share of training (:attr:`warmup_fraction`)
        applied to ``total_steps``. Gradient clipping
        (``clip_norm``) belongs to the training loop: pass it to ``TrainConfig``.
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup_steps is None:
            fraction = self.warmup_fraction
            if fraction is None:
                raise ValueError("the recipe's warmup share is unknown (no training length): pass warmup_steps")
            warmup_steps = round(fraction * total_steps)
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps), got {warmup_steps}")
        if self.optimizer == "Adam" and self.weight_decay:
            raise ValueError("Adam with weight_decay is L2 regularization; a published decoupled decay is AdamW")
        if groups is None:
            groups = weight_decay_groups(model, self.weight_decay)
        wd = self.weight_decay
        if self.optimizer == "SGD":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov, weight_decay=wd
            )
        elif self.optimizer == "Adam":
            opt = torch.optim.Adam(groups, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=wd)
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=wd)
        sched: LRScheduler | None
        if self.schedule == "cosine":
            sched = WarmupCosineLR(opt, warmup_steps, total_steps, min_ratio=self.min_ratio)
        elif self.schedule == "linear":
            sched = WarmupPolyLR(opt, warmup_steps, total_steps, power=1.0)
        elif self.schedule == "multistep":
            if warmup_steps:
                raise ValueError("this recipe's multistep schedule has no warmup")
            sched = MultiStepLR(opt, [round(m * total_steps) for m in self.milestones], gamma=self.gamma)
        elif warmup_steps:
            sched = LambdaLR(opt, lambda step: min(1.0, step / warmup_steps))
        else:
            sched = None
        return opt, sched


PUBLISHED: dict[str, Recipe] = {
    "resnet50_imagenet": Recipe(
        name="ResNet-50 on ImageNet, batch 256",
        source="goyal2017accurate",
        optimizer="SGD",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=256,
        schedule="multistep",
        milestones=(30 / 90, 60 / 90, 80 / 90),
        gamma=0.1,
        epochs=90,
        train_examples=1_281_167,
        notes="the reference run; for k*256 images per batch the LR is k*0.1 with a 5-epoch linear warmup",
    ),
    "bert_pretraining": Recipe(
        name="BERT pretraining",
        source="devlin2019bert",
        optimizer="AdamW",
        lr=1e-4,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=0.01,
        batch_size=256,
        schedule="linear",
        warmup_steps=10_000,
        steps=1_000_000,
        clip_norm=1.0,
        notes="eps, the clipping and the exclusion of LayerNorm and biases from decay are in the released code",
    ),
    "bert_finetuning": Recipe(
        name="BERT fine-tuning (GLUE)",
        source="devlin2019bert",
        optimizer="AdamW",
        lr=2e-5,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=0.01,
        batch_size=32,
        schedule="linear",
        epochs=3,
        warmup_ratio=0.1,
        clip_norm=1.0,
        notes="the paper searches lr in {5e-5, 3e-5, 2e-5}, batch in {16, 32}, epochs in {2, 3, 4}; "
        "the released code warms up for 10% of the steps",
    ),
    "dcgan": Recipe(
        name="DCGAN",
        source="radford2016dcgan",
        optimizer="Adam",
        lr=2e-4,
        betas=(0.5, 0.999),
        batch_size=128,
        schedule="constant",
        notes="the paper found beta1 = 0.9 oscillating and unstable, 0.5 stable; weights start from N(0, 0.02)",
    ),
    "vit_b16_imagenet": Recipe(
        name="ViT-B/16 trained on ImageNet",
        source="dosovitskiy2021vit",
        optimizer="AdamW",
        lr=3e-3,
        betas=(0.9, 0.999),
        weight_decay=0.3,
        batch_size=4096,
        schedule="cosine",
        warmup_steps=10_000,
        epochs=300,
        train_examples=1_281_167,
        clip_norm=1.0,
        notes="the paper says Adam with weight decay; eps is not stated",
    ),
}
"""The published settings, labelled with their sources. Not run in this course: see :meth:`Recipe.scaled`."""
