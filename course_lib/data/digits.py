"""scikit-learn's 8x8 handwritten digits, split and scaled, as tensors: every machine has them offline.

The data ship inside scikit-learn (no download). One function loads them for every lesson:
standardized flat vectors for the linear and perceptron experiments, or pixels in [0, 1] (flat or as
1x8x8 images, a subset of the classes, a few examples per class) for the networks of the recipes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Split", "load_digits"]


@dataclass(frozen=True)
class Split:
    """Train and test tensors of a classification data set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.x_train[0].numel()


def load_digits(
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    scale: str = "standardize",
    image: bool = False,
    classes: Sequence[int] | None = None,
    train_per_class: int | None = None,
) -> Split:
    """The 8x8 handwritten digits of scikit-learn: 1797 images, 64 pixels, 10 classes.

    A stratified split holds out ``test_fraction`` of the examples, shuffled with ``seed`` (the
    same split for every ``scale`` and ``image``).

    Args:
        scale: ``"standardize"`` centres the pixels with the training mean and divides them all by
            one number, the training set's overall standard deviation (a per-pixel one would divide
            by ~0 for border pixels that are almost always 0 and blow up test examples); nothing
            leaks from the test split. ``"unit"`` divides the pixels (0..16) by 16, so they lie in
            [0, 1] for every split.
        image: inputs of shape ``(n, 1, 8, 8)`` instead of ``(n, 64)``.
        classes: keep only these digits, relabelled ``0 .. len(classes) - 1`` in the given order.
        train_per_class: keep the first so many training examples of each class (the test split
            stays whole), for fine-tuning experiments.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if scale not in ("standardize", "unit"):
        raise ValueError(f"scale must be 'standardize' or 'unit', got {scale!r}")
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = _sk_load_digits(return_X_y=True)
    if classes is not None:
        classes = list(classes)
        if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
            raise ValueError(f"classes must be distinct digits 0-9, got {classes}")
        keep = np.isin(y, classes)
        x, y = x[keep], np.array([classes.index(int(label)) for label in y[keep]])
    train, test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    if scale == "unit":
        x_tr, x_te = (torch.as_tensor(x[i] / 16.0, dtype=dtype) for i in (train, test))
    else:
        x_tr, x_te = (torch.as_tensor(x[i], dtype=dtype) for i in (train, test))
        mean = x_tr.mean(0)
        std = (x_tr - mean).std()
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    y_tr, y_te = torch.as_tensor(y[train], dtype=torch.long), torch.as_tensor(y[test], dtype=torch.long)
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
