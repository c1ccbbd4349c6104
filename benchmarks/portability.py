"""Run every lesson and exercise solution on each numeric path this machine offers; list failed claims.

A lesson's claims about its own runs (``course_lib.claims.claim``) must hold on every machine a student
uses, not only on the one that builds the book. This script executes each notebook once per *path*:

* each ATen CPU kernel set the CPU supports (``ATEN_CPU_CAPABILITY=default``, ``avx2``, ``avx512`` on
  x86; ``default`` and the native set on ARM), one thread, as ``make test`` runs them;
* the native kernels with two threads (a laptop's setting: the lessons use at most two);
* the GPU, where one is present (``COURSE_DEVICE`` unset, so lessons that use a GPU use it).

Claims are recorded, not raised (``COURSE_CLAIMS=warn`` with ``COURSE_CLAIMS_LOG``), so one run lists
every claim that fails on every path, not just the first one per notebook; any other error in a cell
is listed too. The result goes to ``benchmarks/results/portability.json`` (the book's status page
shows it) and a summary is printed.

    python benchmarks/portability.py                      # every path, every notebook (make test-portability)
    python benchmarks/portability.py --paths default avx2 --notebooks lessons/05_large_batch.ipynb
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "portability.json"
CAPABILITY_ORDER = ["default", "avx2", "avx512"]  # x86 ladder; on ARM only "default" is below the native set


def probe() -> dict:
    """This machine's native ATen CPU capability, CUDA device, CPU model and torch version."""
    code = ("import json, torch; print(json.dumps({'native': torch.backends.cpu.get_cpu_capability().lower(), "
            "'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
            "'torch': torch.__version__}))")
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    info = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info.update(cpu=cpu, cores=os.cpu_count(), machine=platform.machine(), python=platform.python_version())
    return info


def available_paths(info: dict) -> list[dict]:
    """The numeric paths to try here, each a name and the environment that selects it."""
    native = info["native"]
    if native in CAPABILITY_ORDER:
        capabilities = CAPABILITY_ORDER[: CAPABILITY_ORDER.index(native) + 1]
    else:  # e.g. ARM's sve256: the portable kernels and the native ones
        capabilities = ["default", native]
    paths = [{"name": cap, "env": {"ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": "1", "COURSE_DEVICE": "cpu"}}
             for cap in capabilities]
    paths.append({"name": f"{native}, 2 threads", "env": {"OMP_NUM_THREADS": "2", "COURSE_DEVICE": "cpu"}})
    if info["cuda"]:
        paths.append({"name": "cuda", "env": {"OMP_NUM_THREADS": "1"}})
    return paths


def default_notebooks() -> list[Path]:
    return sorted((ROOT / "lessons").glob("*.ipynb")) + sorted((ROOT / "exercises" / "solutions").glob("*.ipynb"))


def run_notebook(path: str, env_update: dict, timeout: int) -> dict:
    """Execute one notebook (errors allowed, so every cell runs); its claims and its cell errors."""
    import nbformat
    from nbclient import NotebookClient

    rel = str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else str(path)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "claims.jsonl"
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env.update(env_update, COURSE_CLAIMS="warn", COURSE_CLAIMS_LOG=str(log), COURSE_NOTEBOOK=rel,
                   PYTHONHASHSEED="0", MPLBACKEND="Agg")
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                                resources={"metadata": {"path": str(Path(path).parent)}})
        start = time.perf_counter()
        crashed = None
        try:
            client.execute(env=env)
        except Exception as exc:  # a dead kernel or a timeout: report it, go on with the other notebooks
            crashed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        seconds = time.perf_counter() - start
        claims = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    errors = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append({"cell": index, "error": f"{out['ename']}: {out['evalue']}"[:300]})
    if crashed:
        errors.append({"cell": None, "error": crashed[:300]})
    return {"notebook": rel, "seconds": round(seconds, 1), "claims": len(claims),
            "failed": [{"claim": c["claim"], "measured": c["measured"]} for c in claims if not c["holds"]],
            "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="*", help="names of the paths to run (default: every path found here)")
    parser.add_argument("--notebooks", nargs="*", type=Path, help="notebooks to run (default: lessons and solutions)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads at a time: notebooks run at once times each one's threads")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON record")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")

    info = probe()
    paths = available_paths(info)
    if args.paths:
        unknown = set(args.paths) - {p["name"] for p in paths}
        if unknown:
            parser.error(f"unknown path(s) {sorted(unknown)}; this machine offers {[p['name'] for p in paths]}")
        paths = [p for p in paths if p["name"] in args.paths]
    notebooks = [p.resolve() for p in (args.notebooks or default_notebooks())]
    missing = [str(p) for p in notebooks if not p.exists()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")

    print(f"machine: {info['cpu']}, {info['cores']} cores, native kernels {info['native']}, "
          f"GPU {info['cuda'] or 'none'}, torch {info['torch']}")
    print(f"paths: {', '.join(p['name'] for p in paths)}; {len(notebooks)} notebooks, up to {args.workers} "
          "threads at a time")
    results = []
    for path in paths:
        start = time.perf_counter()
        # Notebooks of a path with several threads each run fewer at a time: more threads than cores
        # make every OpenMP region wait for a descheduled thread (several times slower, measured).
        workers = max(1, args.workers // int(path["env"].get("OMP_NUM_THREADS", "1")))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            runs = list(pool.map(run_notebook, [str(nb) for nb in notebooks], [path["env"]] * len(notebooks),
                                 [args.timeout] * len(notebooks)))
        wall = time.perf_counter() - start
        failed = sum(len(r["failed"]) for r in runs)
        errors = sum(len(r["errors"]) for r in runs)
        print(f"\n[{path['name']}] {sum(r['claims'] for r in runs)} claims checked, {failed} failed, "
              f"{errors} other errors, {wall:.0f} s")
        for r in runs:
            for f in r["failed"]:
                print(f"  FAILED {r['notebook']}: {f['claim']}  ({f['measured']})")
            for e in r["errors"]:
                if not e["error"].startswith("ClaimFailed"):
                    print(f"  ERROR  {r['notebook']} cell {e['cell']}: {e['error']}")
        results.append({"path": path["name"], "env": path["env"], "wall_s": round(wall, 1), "notebooks": runs})

    failures = [f"{p['path']}: {r['notebook']}: {f['claim']} ({f['measured']})"
                for p in results for r in p["notebooks"] for f in r["failed"]]
    failures += [f"{p['path']}: {r['notebook']} cell {e['cell']}: {e['error']}"
                 for p in results for r in p["notebooks"] for e in r["errors"]]
    record = {
        "title": "Portability of the lessons' claims",
        "date": datetime.date.today().isoformat(),
        "machine": f"{info['cpu']}, {info['cores']} cores ({info['machine']}), native ATen kernels "
                   f"{info['native']}, GPU {info['cuda'] or 'none'}, torch {info['torch']}, Python {info['python']}",
        "command": "make test-portability",
        # what the book's status page shows: one row per path, and every failure in the note
        "table": [{"path": p["path"], "notebooks": len(p["notebooks"]),
                   "claims checked": sum(r["claims"] for r in p["notebooks"]),
                   "claims failed": sum(len(r["failed"]) for r in p["notebooks"]),
                   "other errors": sum(len(r["errors"]) for r in p["notebooks"]),
                   "wall time (s)": round(p["wall_s"])} for p in results],
        "note": ("Every claim held on every path." if not failures else
                 "Failures: " + "; ".join(failures[:20]) + (f"; and {len(failures) - 20} more" if len(failures) > 20 else "")),
        "paths": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    total_failed = sum(len(r["failed"]) + len(r["errors"]) for p in results for r in p["notebooks"])
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}; "
          f"{'every claim held on every path' if not total_failed else f'{total_failed} failures'}")
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
