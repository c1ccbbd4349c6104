"""The capstone's data: token shards prepared once per corpus, and each process's slice of every batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..data import shards
from .config import CapstoneConfig
from .distributed import barrier, world

__all__ = ["StepBatches", "prepare_data", "shard_dir"]


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
