"""``make gpu-check``: is the capstone fast on this machine? Short runs, a step-time breakdown, the paper's shape.

    python benchmarks/gpu_check.py [--out benchmarks/results] [--cpu]

On a GPU (about 5 minutes on one H100, most of it compiling):

1. the device: name, the data sheet's dense bf16 peak, and the best rate of one large bf16
   matrix product measured here;
2. a shortened ``gpu`` preset (the same 24.7M-parameter model and 64 x 512 tokens per step,
   300 steps, 8 MB of the offline corpus) for ``adamw`` and ``layer_adaptive``, seed 0, through
   :func:`course_lib.capstone.run_variant`: tokens/s over whole steps (data included), MFU,
   validation loss;
3. the step-time breakdown of the same model (:func:`course_lib.capstone.bench.step_breakdown`):
   data, forward and backward, clipping, optimizer step;
4. a probe of the paper's shape (12 layers, width 768, context 1024, GPT-2's 50257 ids, micro-
   batches of 16 sequences) on random tokens: tokens/s, MFU, memory.

It writes ``<out>/gpu_check-<device>.json`` and prints a summary. Without a GPU (or with
``--cpu``) the same steps run on the CPU with small sizes, in about a minute, and the record says
that the GPU figures were not measured. Speeds are recorded, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from course_lib.capstone import capstone_config, environment, peak_bf16_tflops, run_variant
from course_lib.capstone.bench import matmul_tflops, step_breakdown

# On a GPU: the shortened gpu preset, the paper's shape. On a CPU: the same steps, small.
GPU_PLAN = {
    "runs": dict(preset="gpu", steps=300, eval_every=100, eval_batches=4, probe_every=100,
                 checkpoint_every=None, max_bytes=8_000_000, bpe_sample_bytes=1_000_000),
    "breakdown": dict(steps=20, warmup=5),
    "paper": dict(preset="paper", batch_size=32, micro_batch_size=16, steps=10, warmup=4, vocab=50257),
}
CPU_PLAN = {
    "runs": dict(preset="smoke", steps=20, eval_every=10, eval_batches=1, probe_every=10,
                 checkpoint_every=None),
    "breakdown": dict(steps=5, warmup=2),
    "paper": dict(preset="paper", batch_size=4, micro_batch_size=2, steps=3, warmup=1, vocab=50257,
                  model={"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "d_ff": 176,
                         "max_seq_len": 32}),
}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _stage(label: str, record: dict[str, Any], started: float) -> None:
    record.setdefault("stage_seconds", {})[label] = round(time.perf_counter() - started, 1)
    print(f"[gpu-check] {label}: {time.perf_counter() - started:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="folder for gpu_check-<device>.json")
    parser.add_argument("--cpu", action="store_true", help="run the CPU plan even if a GPU is present")
    parser.add_argument("--work-dir", default=None, help="runs and data (default: a temporary folder)")
    args = parser.parse_args(argv)

    on_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if on_gpu else "cpu")
    plan = GPU_PLAN if on_gpu else CPU_PLAN
    if not on_gpu:
        os.environ["COURSE_DEVICE"] = "cpu"
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    begun = time.perf_counter()
    env = environment(device)
    device_name = torch.cuda.get_device_name(device) if on_gpu else None
    record: dict[str, Any] = {
        "format": "course_lib.gpu_check/1",
        "gpu_measured": on_gpu,
        "note": ("GPU figures measured on this device" if on_gpu else
                 "no GPU: the GPU figures are NOT measured; this record checks the plumbing on the CPU "
                 "(small sizes, no torch.compile), its speeds say nothing about a GPU"),
        "device_name": device_name or "cpu",
        "environment": env,
        "peak_bf16_tflops": peak_bf16_tflops(device_name),
    }

    started = time.perf_counter()
    record["measured_matmul_tflops"] = (matmul_tflops(device) if on_gpu
                                        else matmul_tflops(device, n=256, dtype=torch.float32, repeats=3))
    record["measured_matmul_dtype"] = "bfloat16" if on_gpu else "float32 (CPU, n=256)"
    _stage("matmul", record, started)

    # 2. the shortened gpu preset (smoke on a CPU), two variants, seed 0
    started = time.perf_counter()
    run_settings = dict(plan["runs"])
    cfg = capstone_config(run_settings.pop("preset"), out_dir=str(work / "runs"), data_dir=str(work / "data"),
                          seeds=[0], log_evals=on_gpu, **run_settings)
    runs = {}
    for variant in ("adamw", "layer_adaptive"):
        r = run_variant(variant, 0, cfg)
        runs[variant] = {k: r[k] for k in ("val_loss", "tokens_per_s", "mfu", "steps", "tokens", "params",
                                           "precision", "compiled", "seconds")}
        print(f"[gpu-check] {variant}: val loss {r['val_loss']:.4f}, {r['tokens_per_s']:,.0f} tokens/s, "
              f"MFU {'n/a' if r['mfu'] is None else format(r['mfu'], '.1%')}", flush=True)
    record["runs"] = {"preset": cfg.preset, "settings": run_settings, "results": runs}
    _stage("runs", record, started)

    # 3. the step-time breakdown of the same model and batches
    started = time.perf_counter()
    record["breakdown"] = step_breakdown(cfg, "adamw", **plan["breakdown"])
    _stage("breakdown", record, started)

    # 4. the paper's shape, on random tokens
    started = time.perf_counter()
    paper = dict(plan["paper"])
    vocab = paper.pop("vocab")
    timing = {"steps": paper.pop("steps"), "warmup": paper.pop("warmup")}
    paper_cfg = capstone_config(paper.pop("preset"), out_dir=str(work / "paper"), seeds=[0], **paper)
    record["paper_probe"] = step_breakdown(paper_cfg, "adamw", random_tokens=vocab, **timing)
    _stage("paper probe", record, started)
    record["total_seconds"] = round(time.perf_counter() - begun, 1)
    record.update(status_page(record))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check-{_slug(device_name or 'cpu')}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=lambda v: None if isinstance(v, float) and not
                              math.isfinite(v) else str(v)))
    os.replace(tmp, path)
    print(summary(record))
    print(f"[gpu-check] written to {path}")
    return 0


def status_page(record: dict[str, Any]) -> dict[str, Any]:
    """What the book's status page shows of this record: a title, the machine, the date, a table."""
    env = record["environment"]
    gpu = record["gpu_measured"]
    rows = [{"what": f"{record['runs']['preset']} preset, {variant}", "tokens/s": f"{r['tokens_per_s']:,.0f}",
             "MFU": _pct(r["mfu"]), "time": f"{r['seconds']:.1f} s, {r['steps']} steps",
             "val loss": f"{r['val_loss']:.4f} after {r['steps']} steps"}
            for variant, r in record["runs"]["results"].items()]
    for label, name in (("breakdown", "step breakdown"), ("paper_probe", "paper-shape probe")):
        b, m = record[label], record[label]["model"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in b["parts_ms"].items())
        rows.append({"what": f"{name} ({m['n_layers']} layers x {m['d_model']}, vocab {m['vocab_size']})",
                     "tokens/s": f"{b['whole_step']['tokens_per_s']:,.0f}", "MFU": _pct(b["whole_step"]["mfu"]),
                     "time": f"{b['whole_step']['ms']:.1f} ms a step (parts, ms: {parts})", "val loss": "-"})
    return {
        "title": f"make gpu-check on {record['device_name']}" + ("" if gpu else ": GPU figures NOT measured"),
        "date": time.strftime("%Y-%m-%d"),
        "machine": (f"{record['device_name'] if gpu else env['device_name'] + ' CPU'}, torch {env['torch']}, "
                    f"CUDA {env['cuda'] or 'none'}, commit {str(env['commit'])[:10]}"
                    + (" (uncommitted changes)" if env.get("dirty") else "")),
        "command": "make gpu-check",
        "table": rows,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary(record: dict[str, Any]) -> str:
    """A few lines: the device, each run's speed and loss, the breakdown, the paper probe."""
    lines = [f"gpu-check on {record['device_name']}: {record['note']}"]
    peak = record["peak_bf16_tflops"]
    lines.append(f"  matmul: {record['measured_matmul_tflops']:.1f} TFLOP/s measured "
                 f"({record['measured_matmul_dtype']})"
                 + (f", data-sheet dense bf16 peak {peak:g}" if peak else ""))
    for variant, r in record["runs"]["results"].items():
        lines.append(f"  {record['runs']['preset']} preset, {variant}: {r['tokens_per_s']:,.0f} tokens/s, "
                     f"MFU {_pct(r['mfu'])}, val loss {r['val_loss']:.4f} after {r['steps']} steps")
    for label in ("breakdown", "paper_probe"):
        b = record[label]
        m = b["model"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in b["parts_ms"].items())
        lines.append(f"  {label} ({m['n_layers']} layers x {m['d_model']}, vocab {m['vocab_size']}, "
                     f"{b['tokens_per_step']:,} tokens/step): whole step {b['whole_step']['ms']:.1f} ms = "
                     f"{b['whole_step']['tokens_per_s']:,.0f} tokens/s, MFU {_pct(b['whole_step']['mfu'])}; "
                     f"parts (ms, synchronized): {parts}"
                     + (f"; peak memory {b['peak_memory_gb']:.1f} GiB" if b["peak_memory_gb"] else ""))
    lines.append(f"  total {record['total_seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
