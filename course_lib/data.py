"""Small data sets that every machine has offline, as tensors ready for the lessons.

The data come from scikit-learn, which ships them inside the package (no download). Features are
standardized with the statistics of the training split only, so nothing leaks from the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Split", "load_digits", "batches"]


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
        return self.x_train.shape[1]


def load_digits(test_fraction: float = 0.2, seed: int = 0, dtype: torch.dtype = torch.float32) -> Split:
    """The 8x8 handwritten digits of scikit-learn: 1797 images, 64 features, 10 classes.

    A stratified split, ``test_fraction`` of the examples held out, shuffled with ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = _sk_load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_tr = torch.as_tensor(x_tr, dtype=dtype)
    x_te = torch.as_tensor(x_te, dtype=dtype)
    # Pixels take values 0..16. Center with the training mean and scale every feature by one
    # number, the training set's overall standard deviation: a per-pixel std would divide by
    # ~0 for border pixels that are (almost) always 0 in training and blow up test examples.
    mean = x_tr.mean(0)
    std = (x_tr - mean).std()
    return Split(
        x_train=(x_tr - mean) / std,
        y_train=torch.as_tensor(y_tr, dtype=torch.long),
        x_test=(x_te - mean) / std,
        y_test=torch.as_tensor(y_te, dtype=torch.long),
        n_classes=10,
    )


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True):
    """Yield index tensors that cover ``range(n)`` once, in mini-batches of ``batch_size``.

    The last batch is smaller when ``batch_size`` does not divide ``n``. ``batch_size == n`` gives
    batch gradient descent, ``batch_size == 1`` gives stochastic gradient descent.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)
