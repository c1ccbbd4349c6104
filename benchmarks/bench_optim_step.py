"""Time one AdamW step and measure its memory: course_lib against torch.optim's implementations.

    python benchmarks/bench_optim_step.py                      # CPU, default settings
    python benchmarks/bench_optim_step.py --device cuda        # adds torch's fused kernel
    python benchmarks/bench_optim_step.py --repeats 60 --out results.json --out results.md
    python benchmarks/bench_optim_step.py --scale 0.02 --repeats 3   # tiny shapes: a check that it runs
    python benchmarks/bench_optim_step.py --busy 1             # with one competing busy process

The parameters have the shapes of a small GPT-2 (6 layers, width 512, 20480-token vocabulary,
context 512): 76 float32 tensors, 29.7M parameters, from 512 values (a LayerNorm) to 10.5M (the
token embedding). Every tensor has a gradient. ``--scale s`` multiplies the width, the vocabulary,
the context and the reference copy's length by ``s`` (so the parameter count by about ``s**2``);
timings at a small scale measure overheads, not bandwidth.

What is measured, per implementation:
* time of one ``step()``: the median (and quartiles) over ``--repeats`` steps. The implementations
  take their steps in turns, in one process, on the same parameters and gradients (each with its
  own state), so that a busy moment of a shared machine hits all of them alike;
* memory, in a fresh process per implementation: on the CPU the bytes of the optimizer's state
  tensors and the growth of the process's peak resident set size (VmHWM) over two steps, which
  adds the step's temporaries; on CUDA ``torch.cuda.max_memory_allocated()`` above the parameters
  and gradients;
* bandwidth: AdamW must read p, g, m, v and write p, m, v, i.e. 7 values (28 bytes in float32) per
  parameter per step. That traffic divided by the step time, next to the bandwidth of a large
  tensor copy (read + write, timed in the same turns as the steps), says how close a step comes
  to the memory's limit. A copy also pays for reading the destination's cache lines before it
  writes them and an in-place update does not, so a single-pass step can exceed 100% of it;
* page faults per step (CPU): fresh pages the kernel had to map and zero for the step's large
  temporaries. They make a step's cost depend on the state of the memory allocator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import course_lib.optim as co  # noqa: E402

# name -> (library, keyword arguments); "course_lib" with foreach=None takes the tiled loop on the
# CPU and the foreach kernels on an accelerator.
IMPLEMENTATIONS: dict[str, tuple[str, dict]] = {
    "course_lib (default)": ("course_lib", {}),
    "course_lib foreach=False": ("course_lib", {"foreach": False}),
    "course_lib foreach=True": ("course_lib", {"foreach": True}),
    "torch foreach=False": ("torch", {"foreach": False}),
    "torch foreach=True": ("torch", {"foreach": True}),
    "torch fused=True": ("torch", {"fused": True}),
}
TORCH_REFERENCES = ("torch foreach=False", "torch foreach=True")
BYTES_PER_PARAM_ACCESS = 7  # AdamW reads p, g, m, v and writes p, m, v


def gpt2_like_shapes(d_model: int = 512, n_layer: int = 6, vocab: int = 20480, context: int = 512) -> list[tuple]:
    """Parameter shapes of a GPT-2-style transformer with tied embeddings."""
    shapes: list[tuple] = [(vocab, d_model), (context, d_model)]
    for _ in range(n_layer):
        shapes += [
            (d_model,), (d_model,),                        # ln_1
            (d_model, 3 * d_model), (3 * d_model,),        # attention qkv
            (d_model, d_model), (d_model,),                # attention output
            (d_model,), (d_model,),                        # ln_2
            (d_model, 4 * d_model), (4 * d_model,),        # mlp up
            (4 * d_model, d_model), (d_model,),            # mlp down
        ]
    return shapes + [(d_model,), (d_model,)]               # ln_f


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux's VmHWM belongs to the running program; ``ru_maxrss`` would also carry the parent's peak
    across fork and exec, which would hide a worker's own growth.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def scaled_shapes(scale: float) -> list[tuple]:
    """:func:`gpt2_like_shapes` with width, vocabulary and context multiplied by ``scale`` (at least 1)."""
    def size(n: int) -> int:
        return max(1, round(n * scale))

    return gpt2_like_shapes(d_model=size(512), vocab=size(20480), context=size(512))


def make_params(device: torch.device, scale: float = 1.0) -> list[torch.Tensor]:
    """The GPT-2-like parameter list, each tensor with a random gradient."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in scaled_shapes(scale):
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return params


def make_optimizer(name: str, params: list[torch.Tensor], tile_size: int | None) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer an implementation's name stands for, and the name of the path it takes."""
    library, kwargs = IMPLEMENTATIONS[name]
    if library == "course_lib":
        opt = co.AdamW(params, lr=1e-3, **kwargs)
        if tile_size:
            opt.tile_size = tile_size
        return opt, opt.implementation(opt.param_groups[0], params[0].device)
    opt = torch.optim.AdamW(params, lr=1e-3, **kwargs)
    return opt, "fused" if kwargs.get("fused") else "foreach" if kwargs.get("foreach") else "loop"


class TensorCopy:
    """The reference for bandwidth: ``dst.copy_(src)`` on a large float32 tensor, as a "step"."""

    def __init__(self, device: torch.device, megabytes: float) -> None:
        self.src = torch.randn(max(1024, int(megabytes * 2**20) // 4), device=device)
        self.dst = torch.empty_like(self.src)
        self.bytes_moved = 2 * self.src.nbytes  # one read and one write

    def step(self) -> None:
        self.dst.copy_(self.src)


def minor_page_faults() -> int:
    """Page faults of this process so far that the kernel served without I/O (fresh pages)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_step(opt: torch.optim.Optimizer | TensorCopy, device: torch.device) -> tuple[float, int]:
    """Seconds and page faults of one step."""
    sync(device)
    faults = minor_page_faults()
    start = time.perf_counter()
    opt.step()
    sync(device)
    return time.perf_counter() - start, minor_page_faults() - faults


def time_interleaved(names: list[str], device: torch.device, steps: int, warmup: int, tile_size: int | None,
                     scale: float = 1.0) -> tuple[dict[str, list[float]], dict[str, list[int]], dict[str, str], float]:
    """Step times of every implementation, taken in turns in one process, and the copy bandwidth.

    All optimizers update the same parameters with the same gradients, each with its own state.
    Round r steps every implementation (and the reference copy) once, starting with a different one
    each round, so that a busy moment of a shared machine is spread over all of them alike.
    """
    params = make_params(device, scale)
    copy = TensorCopy(device, megabytes=(256 if device.type == "cpu" else 1024) * scale)
    runners: dict[str, torch.optim.Optimizer | TensorCopy] = {"copy": copy}
    paths = {}
    for name in names:
        runners[name], paths[name] = make_optimizer(name, params, tile_size)
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    order = list(runners)
    times: dict[str, list[float]] = {name: [] for name in order}
    faults: dict[str, list[int]] = {name: [] for name in order}
    for r in range(steps):
        for name in order[r % len(order):] + order[: r % len(order)]:
            seconds, page_faults = timed_step(runners[name], device)
            times[name].append(seconds)
            faults[name].append(page_faults)
    copy_bandwidth = copy.bytes_moved / statistics.median(times.pop("copy"))
    faults.pop("copy")
    return times, faults, paths, copy_bandwidth


def memory_worker(name: str, device: torch.device, tile_size: int | None, scale: float = 1.0) -> dict:
    """In a fresh process: the state's bytes and how much a step raises peak memory."""
    params = make_params(device, scale)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = peak_rss_bytes()
    opt, _ = make_optimizer(name, params, tile_size)
    for _ in range(2):
        opt.step()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    state_bytes = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    return {"state_bytes": state_bytes, "peak_extra_bytes": peak - base}


def available(name: str, device: torch.device) -> bool:
    """Whether torch supports this implementation here (fused AdamW on the CPU needs torch >= 2.4)."""
    library, kwargs = IMPLEMENTATIONS[name]
    if library == "course_lib" or not kwargs.get("fused"):
        return True
    p = torch.zeros(2, device=device, requires_grad=True)
    p.grad = torch.zeros(2, device=device)
    try:
        torch.optim.AdamW([p], fused=True).step()
    except (RuntimeError, ValueError):
        return False
    return True


def measure_memory(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--memory-worker", name, "--device", args.device, "--scale", str(args.scale)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.tile_size:
        command += ["--tile-size", str(args.tile_size)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(times: dict[str, list[float]], faults: dict[str, list[int]], paths: dict[str, str],
              memory: dict[str, dict], n_params: int, copy_bw: float) -> list[dict]:
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        q1, _, q3 = statistics.quantiles(samples, n=4)
        moved = BYTES_PER_PARAM_ACCESS * 4 * n_params / median
        rows.append({
            "implementation": name,
            "path": paths[name],
            "median_ms": 1e3 * median,
            "iqr_ms": [1e3 * q1, 1e3 * q3],
            "bandwidth_GBps": moved / 1e9,
            "fraction_of_copy_bandwidth": moved / copy_bw,
            "state_MB": memory[name]["state_bytes"] / 2**20,
            "peak_extra_MB": memory[name]["peak_extra_bytes"] / 2**20,
            "page_faults_per_step": statistics.median(faults[name]),
        })
    torch_rows = [r for r in rows if r["implementation"] in TORCH_REFERENCES]
    best_median = min((r["median_ms"] for r in torch_rows), default=None)
    best_q1 = min((r["iqr_ms"][0] for r in torch_rows), default=None)
    for row in rows:
        row["ratio_to_best_torch_loop_or_foreach"] = row["median_ms"] / best_median if best_median else None
        row["ratio_at_lower_quartile"] = row["iqr_ms"][0] / best_q1 if best_q1 else None
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"AdamW step on {report['n_tensors']} float32 tensors, {report['n_params'] / 1e6:.1f}M parameters, "
        f"{report['device_name']}, torch {report['torch']}, {report['threads']} threads "
        f"(load average {report['load_average'][0]:.1f} before, {report['load_average'][1]:.1f} after"
        f"{'; ' + str(report.get('busy_processes')) + ' competing busy process(es)' if report.get('busy_processes') else ''}). "
        f"Median of {report['repeats']} steps each, taken in turns. "
        f"Copy bandwidth (read + write): {report['copy_bandwidth_GBps']:.1f} GB/s.",
        "",
        "| implementation | path | ms/step (median) | IQR ms | x best torch loop/foreach | same at 1st quartile "
        "| GB/s moved | of copy bandwidth | state MB | peak extra MB | page faults/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        ratio, ratio_q1 = r["ratio_to_best_torch_loop_or_foreach"], r["ratio_at_lower_quartile"]
        lines.append(
            f"| {r['implementation']} | {r['path']} | {r['median_ms']:.1f} | {r['iqr_ms'][0]:.1f}-{r['iqr_ms'][1]:.1f} "
            f"| {_ratio(ratio)} | {_ratio(ratio_q1)} | {r['bandwidth_GBps']:.1f} | {100 * r['fraction_of_copy_bandwidth']:.0f}% "
            f"| {r['state_MB']:.0f} | {r['peak_extra_MB']:.0f} | {r['page_faults_per_step']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    """A ratio to the best torch loop/foreach time, or a dash when neither of those was run (--only)."""
    return "-" if value is None else f"{value:.2f}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per implementation (default: 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--tile-size", type=int, default=0, help="course_lib's CPU tile size (default: its own)")
    parser.add_argument("--only", nargs="*", default=None, help="names of implementations to run")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply width, vocabulary, context and the copy by this, in (0, 1] (default: 1)")
    parser.add_argument("--out", action="append", default=[], help="write the table to this .json or .md file")
    parser.add_argument("--busy", type=int, default=0,
                        help="competing processes that spin on a core while the steps are timed (default: 0)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.busy < 0:
        parser.error(f"--busy must be >= 0, got {args.busy}")
    if args.repeats < 2:
        parser.error(f"--repeats must be at least 2 (a median and quartiles need two samples), got {args.repeats}")
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tile_size = args.tile_size or None
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, device, tile_size, args.scale)))
        return

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    names = [n for n in (args.only or IMPLEMENTATIONS) if available(n, device)]
    shapes = scaled_shapes(args.scale)
    n_params = sum(torch.Size(s).numel() for s in shapes)
    memory = {name: measure_memory(name, args) for name in names}
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        times, faults, paths, copy_bw = time_interleaved(names, device, args.repeats, args.warmup, tile_size,
                                                         args.scale)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "n_tensors": len(shapes),
        "n_params": n_params,
        "scale": args.scale,
        "repeats": args.repeats,
        "busy_processes": args.busy,
        "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")],
        "copy_bandwidth_GBps": copy_bw / 1e9,
        "rows": summarize(times, faults, paths, memory, n_params, copy_bw),
    }
    table = markdown(report)
    print(table)
    for path in map(Path, args.out):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n" if path.suffix == ".json" else table)


if __name__ == "__main__":
    main()
