"""The capstone's data: token shards prepared once per corpus, each process's slice of every batch, prefetching."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..data import shards
from .config import CapstoneConfig
from .distributed import barrier, world

__all__ = ["Prefetched", "StepBatches", "prepare_data", "shard_dir"]


def shard_dir(cfg: CapstoneConfig) -> Path:
    return Path(cfg.data_dir) if cfg.data_dir is not None else Path(cfg.out_dir) / "data"


def prepare_data(cfg: CapstoneConfig) -> tuple[Path, dict]:
    """Build (or reuse) the token shards for ``cfg``: rank 0 builds, the others wait. Returns (folder, meta)."""
    data_dir = shard_dir(cfg)
    rank, _ = world()
    if rank == 0:
        shards.prepare_corpus(data_dir, source=cfg.source, tokenizer=cfg.tokenizer,
                            vocab_size=cfg.vocab_size, max_bytes=cfg.max_bytes,
                            bpe_sample_bytes=cfg.bpe_sample_bytes)
    barrier()
    return data_dir, json.loads((data_dir / "meta.json").read_text())


class StepBatches:
    """Micro-batches for :class:`~course_lib.train.trainer.Trainer`: this process's share of each step's batch.

    Optimizer step ``s`` uses the batch ``TokenBatches(batch_size)[s]`` (a function of the
    seed and ``s``). Process ``rank`` of ``world`` takes rows ``rank * share`` to
    ``(rank + 1) * share`` of it and serves them as ``accumulation`` micro-batches, each a
    tuple ``(x, y, last)`` where ``last`` marks the step's final micro-batch (DDP
    synchronizes gradients only there). Micro-batch ``k`` belongs to step
    ``k // accumulation``, so a resumed trainer continues with the right batch.
    """

    def __init__(self, tokens: Any, cfg: CapstoneConfig, seq_len: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        if cfg.batch_size % world != 0:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of "
                             f"processes ({world})")
        self.share = cfg.batch_size // world
        self.micro = cfg.micro_batch_size or self.share
        if self.share % self.micro != 0:
            raise ValueError(f"micro_batch_size ({self.micro}) must divide each process's share "
                             f"of the batch ({cfg.batch_size} / {world} = {self.share})")
        self.accumulation = self.share // self.micro
        self.rank = rank
        self.source = shards.TokenBatches(tokens, cfg.batch_size, seq_len, seed=seed)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        if epoch != 0:
            raise ValueError(f"epoch must be 0 (one endless epoch), got {epoch!r}")
        k, cached = start, -1
        while True:
            step, j = divmod(k, self.accumulation)
            if step != cached:  # draw each step's batch once, not once per micro-batch
                x, y = self.source[step]
                cached = step
            lo = self.rank * self.share + j * self.micro
            yield x[lo:lo + self.micro], y[lo:lo + self.micro], j == self.accumulation - 1
            k += 1


def _pinned(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.pin_memory()
    if isinstance(item, tuple):
        return tuple(_pinned(x) for x in item)
    return item


class Prefetched:
    """Any resumable data (``batches(epoch, start)``), with the next ``depth`` batches drawn ahead in a thread.

    The batches and their order are those of ``data``: a thread runs ``data.batches(epoch,
    start)`` and hands its items over through a queue of ``depth`` places, so drawing the next
    batch overlaps the current step. With ``pin_memory`` the thread also copies each tensor
    into page-locked memory, from which ``tensor.to("cuda", non_blocking=True)`` (what the
    trainer does) is an asynchronous copy; from ordinary memory it would wait. Other
    attributes (``accumulation``) are those of ``data``. An error in the thread is raised
    where the batch would have been; a generator that is closed or dropped stops its thread.
    """

    def __init__(self, data: Any, depth: int = 2, pin_memory: bool = False) -> None:
        if not hasattr(data, "batches"):
            raise ValueError(f"data must have a batches(epoch, start) method, got {type(data).__name__}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self.data, self.depth, self.pin_memory = data, depth, pin_memory

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["data"], name)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Any]:
        items: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        done = object()

        def put(entry: tuple[Any, BaseException | None]) -> bool:
            """Queue an entry unless the consumer has gone; False once it has."""
            while not stop.is_set():
                try:
                    items.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self.data.batches(epoch, start):
                    if not put((_pinned(item) if self.pin_memory else item, None)):
                        return
                put((done, None))
            except BaseException as error:  # handed to the consumer, raised there
                put((None, error))

        thread = threading.Thread(target=produce, name="course_lib-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item, error = items.get()
                if error is not None:
                    raise error
                if item is done:
                    return
                yield item
        finally:
            stop.set()
