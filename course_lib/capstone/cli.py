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
from .report import merge_results, summary_table
from .run import run_variant


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
    parser.add_argument("--out-dir", help="where the runs and results.json go (required unless --summarize)")
    parser.add_argument("--data-dir", default=None, help="token shards (default: <out-dir>/data)")
    parser.add_argument("--variants", nargs="+", default=[*PAPER_VARIANTS, "control"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override any setting, values in JSON: lr=1e-3 'model={\"n_layers\": 4}'")
    parser.add_argument("--prepare-only", action="store_true", help="build the token shards and stop")
    parser.add_argument("--merge-only", action="store_true", help="only merge finished runs into results.json")
    parser.add_argument("--summarize", metavar="OUT_DIR",
                        help="print the summary table rebuilt from OUT_DIR/results.json, and stop")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        try:
            print(summary_table(args.summarize))
        except ValueError as error:
            parser.error(str(error))
        return 0
    if args.out_dir is None:
        parser.error("--out-dir is required (unless --summarize)")

    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(raw)
        if overrides[key] is None:
            parser.error(f"--set {key}=null would mean the preset's value; leave it out instead"
                         + (" (clip_norm=0 turns clipping off)" if key == "clip_norm" else ""))
    try:
        cfg = capstone_config(args.preset, out_dir=args.out_dir, data_dir=args.data_dir,
                              steps=args.steps, seeds=args.seeds, **overrides)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
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

