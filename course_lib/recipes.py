"""Small stand-ins for the published training recipes, and the recipes themselves (lesson 11).

Each published recipe (ResNet-50 on ImageNet, BERT pretraining and fine-tuning, DCGAN, ViT) is a
:class:`Recipe`: the settings as the paper or its released code states them, with their source.
They are far too large to run here; :meth:`Recipe.scaled` keeps the method and changes the
scale-dependent numbers, and :meth:`Recipe.build` turns a recipe into an optimizer and a
scheduler for any model and number of steps. The stand-ins run in seconds on a CPU:

- :func:`digits`: scikit-learn's 8x8 digits as flat vectors or 1x8x8 images, pixels in [0, 1],
  optionally a subset of the classes and a few examples per class (for fine-tuning);
- :func:`mlp`, :class:`SmallConvNet` (for the convolutional-network recipe),
  :class:`TinyTransformer` with :func:`sort_task` and :func:`sequence_loss` (for BERT's),
  :class:`TinyViT` (a vision transformer on the digit images, for ViT's);
- :func:`ring_data`, :func:`gan_pair`, :func:`train_gan`, :func:`gan_quality`,
  :func:`ring_share` (for DCGAN's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR

from .data import Split
from .param_groups import weight_decay_groups
from .schedules import WarmupCosineLR, WarmupPolyLR

__all__ = [
    "PUBLISHED",
    "Recipe",
    "SmallConvNet",
    "TinyTransformer",
    "TinyViT",
    "digits",
    "gan_pair",
    "gan_quality",
    "mlp",
    "ring_data",
    "ring_share",
    "sequence_accuracy",
    "sequence_loss",
    "sort_task",
    "train_gan",
]


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------


def digits(
    test_fraction: float = 0.2,
    seed: int = 0,
    image: bool = False,
    classes: Sequence[int] | None = None,
    train_per_class: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Split:
    """scikit-learn's 8x8 digits with pixels divided by 16 (so in [0, 1]); no download.

    A stratified split holds out ``test_fraction``, shuffled with ``seed``. ``image=True`` gives
    inputs of shape ``(n, 1, 8, 8)``, else ``(n, 64)``. ``classes`` keeps only those digits and
    relabels them ``0 .. len(classes) - 1`` in the given order; ``train_per_class`` then keeps the
    first so many training examples of each class (the test split stays whole).

    Unlike :func:`course_lib.data.load_digits` the inputs are not standardized: the pixel scale
    is the same for every split, and no feature can blow up on a test example.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = _sk_load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16.0, dtype=dtype)
    y = torch.as_tensor(y, dtype=torch.long)
    if classes is not None:
        classes = list(classes)
        if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
            raise ValueError(f"classes must be distinct digits 0-9, got {classes}")
        keep = torch.isin(y, torch.tensor(classes))
        x, y = x[keep], y[keep]
        y = torch.tensor([classes.index(int(label)) for label in y], dtype=torch.long)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_tr, x_te = torch.as_tensor(x_tr), torch.as_tensor(x_te)
    y_tr, y_te = torch.as_tensor(y_tr), torch.as_tensor(y_te)
    n_classes = int(y.max()) + 1
    if train_per_class is not None:
        if train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1, got {train_per_class}")
        idx = torch.cat([torch.nonzero(y_tr == c).flatten()[:train_per_class] for c in range(n_classes)])
        idx = idx.sort().values
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if image:
        x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    return Split(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, n_classes=n_classes)


def mlp(sizes: Sequence[int], seed: int = 0, activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> nn.Sequential:
    """``Linear - activation [- Dropout]`` for each hidden layer of ``sizes``, then a last ``Linear``.

    ``mlp([64, 128, 10])`` is one hidden layer of 128. The initial weights depend only on ``seed``.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {list(sizes)}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class SmallConvNet(nn.Module):
    """A small convolutional network for 1x8x8 images, in the style of a ResNet stem and stages.

    ``blocks[0]``: 3x3 convolution, BatchNorm, ReLU at 8x8; ``blocks[1]`` and ``blocks[2]``: the
    same with stride 2 (4x4, then 2x2) and twice the channels; ``head``: global average pooling and
    a linear layer. ``blocks`` and ``head`` are the parts that layer-wise learning rates address.
    """

    def __init__(self, n_classes: int = 10, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.blocks = nn.ModuleList([block(1, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class TinyTransformer(nn.Module):
    """A pre-norm transformer encoder that maps a token sequence to one prediction per position.

    Token embedding plus a learned position embedding, ``n_layers`` blocks of
    ``nn.TransformerEncoderLayer`` (``norm_first=True``, GELU), a final LayerNorm and a linear head.
    ``blocks``, ``norm`` and ``head`` are the parts that layer-wise learning rates address.
    """

    def __init__(
        self,
        vocab: int = 10,
        length: int = 8,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(length, d_model)
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model, n_heads, 4 * d_model, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(n_layers)
            ]
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class TinyViT(nn.Module):
    """A vision transformer for small square images: patches, pre-norm blocks, mean pooling.

    The image (``channels`` x ``image_size`` x ``image_size``) is cut into non-overlapping
    ``patch`` x ``patch`` squares, read row by row (:meth:`patches`). Each patch's pixels go
    through one linear layer (the patch embedding of ViT), plus a learned position embedding;
    then ``n_layers`` blocks of ``nn.TransformerEncoderLayer`` (``norm_first=True``, GELU), a
    final LayerNorm, the mean over the patches and a linear head. ViT reads its prediction from
    an extra class token instead; the mean is the simpler choice at this size. ``blocks``,
    ``norm`` and ``head`` are the parts that layer-wise learning rates address.
    """

    def __init__(
        self,
        image_size: int = 8,
        patch: int = 2,
        channels: int = 1,
        n_classes: int = 10,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 1,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(f"patch must be a divisor of image_size={image_size} in [1, {image_size}], got {patch}")
        torch.manual_seed(seed)
        self.image_size, self.patch, self.channels = image_size, patch, channels
        self.n_patches = (image_size // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, d_model)
        self.pos = nn.Embedding(self.n_patches, d_model)
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model, n_heads, 4 * d_model, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(n_layers)
            ]
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """``(batch, n_patches, channels * patch * patch)``: the patches row by row, each flattened channel-first."""
        p = self.patch
        x = images.unfold(2, p, p).unfold(3, p, p)  # (batch, channels, rows, cols, p, p)
        x = x.permute(0, 2, 3, 1, 4, 5)  # (batch, rows, cols, channels, p, p)
        return x.reshape(images.shape[0], self.n_patches, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.patches(images)) + self.pos.weight
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def sort_task(n: int, length: int = 8, vocab: int = 10, seed: int = 0) -> torch.utils.data.TensorDataset:
    """``n`` random sequences of ``length`` tokens from ``range(vocab)``; the target is the sorted sequence.

    Sorting needs every position to look at the whole sequence (to count how many tokens are
    smaller), so it exercises attention; it is learnable by a tiny transformer in a few hundred steps.
    """
    if n < 1 or length < 2 or vocab < 2:
        raise ValueError(f"need n >= 1, length >= 2, vocab >= 2; got {n}, {length}, {vocab}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    return torch.utils.data.TensorDataset(x, x.sort(dim=1).values)


def sequence_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean cross-entropy over every position of ``(tokens, targets)``: the trainer's ``loss_fn``."""
    tokens, targets = batch
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def sequence_accuracy(model: nn.Module, dataset: torch.utils.data.TensorDataset) -> tuple[float, float]:
    """``(token accuracy, whole-sequence accuracy)`` of ``model`` on ``dataset``, in eval mode."""
    was_training = model.training
    model.eval()
    tokens, targets = dataset.tensors
    device = next(model.parameters()).device
    right = model(tokens.to(device)).argmax(-1).cpu() == targets
    model.train(was_training)
    return right.float().mean().item(), right.all(dim=1).float().mean().item()


# --------------------------------------------------------------------------------------------
# A GAN on two-dimensional data
# --------------------------------------------------------------------------------------------


def _ring_centres(modes: int, radius: float) -> torch.Tensor:
    angles = 2 * math.pi * torch.arange(modes, dtype=torch.float32) / modes
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def ring_data(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points from a mixture of ``modes`` Gaussians (standard deviation ``std``) on a circle."""
    centres = _ring_centres(modes, radius)
    which = torch.randint(0, modes, (n,), generator=generator)
    return centres[which] + std * torch.randn(n, 2, generator=generator)


def gan_pair(latent: int = 2, hidden: int = 64, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A generator (``latent`` -> 2, ReLU) and a discriminator (2 -> 1 logit, LeakyReLU 0.2), seeded."""
    torch.manual_seed(seed)
    generator = nn.Sequential(
        nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
    )
    discriminator = nn.Sequential(
        nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
    )
    return generator, discriminator


def train_gan(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    steps: int,
    batch_size: int = 128,
    latent: int = 2,
    seed: int = 0,
    data_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Alternate one discriminator step and one generator step, ``steps`` times (non-saturating loss).

    A GAN has two losses pulling against each other, so each network has its own optimizer and
    its own backward pass; this is why it does not fit a single-loss training loop. Real data and
    noise come from a generator seeded with ``seed``. ``on_step(t)``, if given, is called after
    step ``t`` (1, 2, ...), e.g. to measure the generator during training. Returns the losses per step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    g = torch.Generator().manual_seed(seed)
    data_kwargs = data_kwargs or {}
    ones = torch.ones(batch_size, 1)
    zeros = torch.zeros(batch_size, 1)
    history: dict[str, list[float]] = {"d_loss": [], "g_loss": []}
    for _ in range(steps):
        real = ring_data(batch_size, generator=g, **data_kwargs)
        fake = generator(torch.randn(batch_size, latent, generator=g))
        opt_d.zero_grad(set_to_none=True)
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real), ones) + F.binary_cross_entropy_with_logits(
            discriminator(fake.detach()), zeros
        )
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
        g_loss.backward()
        opt_g.step()
        history["d_loss"].append(d_loss.item())
        history["g_loss"].append(g_loss.item())
        if on_step is not None:
            on_step(len(history["d_loss"]))
    return history


@torch.no_grad()
def gan_quality(
    generator: nn.Module,
    n: int = 2000,
    latent: int = 2,
    modes: int = 8,
    radius: float = 2.0,
    std: float = 0.05,
    seed: int = 1234,
) -> tuple[int, float]:
    """``(modes covered, fraction of good samples)`` of ``n`` generated points.

    A sample is good if it lies within ``3 * std`` of a mode's centre; a mode is covered if it
    received at least a quarter of its fair share ``n / modes`` of good samples.
    """
    z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))
    points = generator(z)
    distances = torch.cdist(points, _ring_centres(modes, radius))
    nearest = distances.min(dim=1)
    good = nearest.values < 3 * std
    counts = torch.bincount(nearest.indices[good], minlength=modes)
    return int((counts >= n / modes / 4).sum()), good.float().mean().item()


@torch.no_grad()
def ring_share(
    generator: nn.Module,
    n: int = 2000,
    latent: int = 2,
    radius: float = 2.0,
    tolerance: float = 0.3,
    seed: int = 1234,
) -> float:
    """The fraction of ``n`` generated points whose distance from the origin is within ``tolerance`` of ``radius``.

    A coarser measure than :func:`gan_quality`: it asks whether the samples lie on the ring at
    all, wherever on it, so it shows progress before the modes separate.
    """
    if n < 1 or tolerance <= 0:
        raise ValueError(f"need n >= 1 and tolerance > 0, got n={n}, tolerance={tolerance}")
    z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))
    return ((generator(z).norm(dim=1) - radius).abs() < tolerance).float().mean().item()


# --------------------------------------------------------------------------------------------
# Published recipes
# --------------------------------------------------------------------------------------------


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
                raise ValueError(f"the recipe's warmup share is unknown (no training length): pass warmup_steps")
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
