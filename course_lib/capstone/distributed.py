"""One process or many (torchrun): rank, world size, barriers, the device of this process."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..train import Trainer
from ..utils import pick_device
from .config import CapstoneConfig

__all__ = ["RankZeroTrainer", "barrier", "device_for", "world"]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def device_for(cfg: CapstoneConfig) -> torch.device:
    """The device of this process: ``cfg.device`` or pick_device(); a bare "cuda" becomes ``cuda:LOCAL_RANK`` under torchrun."""
    device = pick_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


class RankZeroTrainer(Trainer):
    """A Trainer whose checkpoints are written by rank 0 alone, the other ranks waiting for it."""

    def save_checkpoint(self, path: str | Path) -> None:
        if world()[0] == 0:
            super().save_checkpoint(path)
        barrier()
