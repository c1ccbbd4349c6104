"""Batches: one protocol for resumable data, and the ways the course makes batches.

Everything the :class:`~course_lib.train.Trainer` trains on offers ``batches(epoch, start)``
(the :class:`Batches` protocol): it yields batch ``start``, ``start + 1``, ... of epoch ``epoch``,
in an order fixed by the epoch (and a seed) alone, so a resumed run sees exactly the batches an
uninterrupted run would have seen. Implementations: :class:`SeededBatches` (a map-style dataset),
:class:`~course_lib.data.shards.TokenBatches` (token windows, one endless epoch) and the capstone's
per-process slices of them. :func:`epoch_batches` also accepts any re-iterable (a list, a
``DataLoader``). :func:`batches` is the plainest form: index tensors for one pass over ``n`` examples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import TensorDataset, default_collate

__all__ = ["Batches", "SeededBatches", "batches", "epoch_batches"]


@runtime_checkable
class Batches(Protocol):
    """Resumable data: ``batches(epoch, start)`` yields batches ``start, start + 1, ...`` of that epoch.

    The order depends on ``epoch`` (and the object's own seed) alone, never on a global random
    state, so skipping the consumed batches after a restart costs nothing and changes nothing.
    """

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]: ...


class SeededBatches:
    """Batches of a map-style dataset in an order fixed by ``(seed, epoch)``: resumable data.

    ``batches(epoch, start)`` yields batches ``start, start + 1, ...`` of epoch ``epoch``. The
    permutation of epoch ``e`` comes from a generator seeded with ``seed + e`` (as torch's
    ``DistributedSampler`` does), never from the global RNG, so skipping the consumed
    batches costs nothing and changes nothing.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) < 1:
            raise ValueError("dataset must hold at least one example")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The example indices of epoch ``epoch``, in the order they are served."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        order = self.order(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if isinstance(self.dataset, TensorDataset):
                yield tuple(t[idx] for t in self.dataset.tensors)
            else:
                yield self.collate_fn([self.dataset[i] for i in idx.tolist()])


def epoch_batches(data: Any, epoch: int, start: int = 0) -> Iterator[Any]:
    """Batches of ``data`` for one epoch from batch ``start`` on.

    ``data`` either has ``batches(epoch, start)`` (resumable, e.g. :class:`SeededBatches`) or
    is any re-iterable (a list, a ``DataLoader``): then the first ``start`` batches are read
    and dropped, which resumes exactly only if every pass yields the same order.
    """
    if hasattr(data, "batches"):
        return iter(data.batches(epoch, start))
    return itertools.islice(iter(data), start, None)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True):
    """Yield index tensors that cover ``range(n)`` once, in mini-batches of ``batch_size``.

    The last batch is smaller when ``batch_size`` does not divide ``n``. ``batch_size == n`` gives
    batch gradient descent, ``batch_size == 1`` gives stochastic gradient descent.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)
