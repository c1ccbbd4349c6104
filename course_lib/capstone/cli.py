"""The command line, ``python -m course_lib.capstone`` (or under ``torchrun``): run variants x seeds, merge the results."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..utils import pick_device
from .config import PRESETS, capstone_config
from .data import prepare_data
from .distributed import world
from .method import PAPER_VARIANTS, VARIANTS
from .run import merge_results, run_variant


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, ``python -m course_lib.capstone`` (or under ``torchrun``): run variants x seeds, merge the results."""
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.capstone",
        description="Train the capstone's optimizer variants and write <out-dir>/results.json. "
                    "Under torchrun every process trains its slice of each batch (DDP).")
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--data-dir", default=None, help="token shards (default: <out-dir>/data)")
    parser.add_argument("--variants", nargs="+", default=[*PAPER_VARIANTS, "control"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override any setting, values in JSON: lr=1e-3 'model={\"n_layers\": 4}'")
    parser.add_argument("--prepare-only", action="store_true", help="build the token shards and stop")
    parser.add_argument("--merge-only", action="store_true", help="only merge finished runs into results.json")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(raw)
    cfg = capstone_config(args.preset, out_dir=args.out_dir, data_dir=args.data_dir,
                          steps=args.steps, seeds=args.seeds, **overrides)
    if args.merge_only:
        merged = merge_results(cfg.out_dir)
        print(f"merged {len(merged['runs'])} runs into {Path(cfg.out_dir) / 'results.json'}")
        return 0

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        use_cuda = pick_device(cfg.device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # rank 0 may spend long in prepare_data while the others wait in a barrier
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(hours=3))
    try:
        rank, world_size = world()
        if args.prepare_only:
            data_dir, meta = prepare_data(cfg)
            if rank == 0:
                print(f"shards in {data_dir}: {json.dumps(meta['splits'])}")
            return 0
        for variant in args.variants:
            for seed in cfg.seeds:
                result = run_variant(variant, seed, cfg)
                if rank == 0:
                    mfu_text = "n/a" if result["mfu"] is None else f"{result['mfu']:.1%}"
                    print(f"{variant:>16} seed {seed}: val loss {result['val_loss']:.4f}, "
                          f"{result['tokens_per_s']:,.0f} tokens/s, MFU {mfu_text} "
                          f"({world_size} process{'es' if world_size > 1 else ''})", flush=True)
                    merge_results(cfg.out_dir)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0

