"""How fast the grader grades a class: notebooks per minute and CPU seconds per notebook.

    python benchmarks/bench_grading.py                          # 40 students x 13 exercises
    python benchmarks/bench_grading.py --students 4 --out benchmarks/results/grading_cpu.json

It builds the exercises from their sources, makes a class in a temporary folder (each student hands in
every exercise: solved, half done, or untouched, drawn with a fixed seed), grades it with the default
options (``--jobs`` the free cores, 60 s per cell), and reports the wall time, notebooks per minute, and
the CPU seconds per notebook (the kernels, the grading processes and the supervisor, all together,
divided by the number of notebooks).

It also runs each solved notebook once on its own, in a plain kernel with its check cells as they are
(the student's view of the notebook), and reports what grading costs *beyond the notebook's own cells*:
the grader's CPU per solved notebook minus that plain run's. The target is at most 3 s.

Note: the exercise sources may import paths that the library has moved; the benchmark grades copies whose
import lines are brought up to date (the mapping is ``tests/test_grading_support.py``'s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import nbformat  # noqa: E402

from course_grading.grader import grade  # noqa: E402
from course_grading.kernel import Kernel  # noqa: E402
from course_grading.procs import free_cores  # noqa: E402
from course_grading.sandbox import Workspace  # noqa: E402

TARGET_OVERHEAD = 3.0  # CPU seconds a solved notebook may cost beyond its own cells


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def half_done(solution: nbformat.NotebookNode, student: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The solution with its first solved function put back as the stub (its checks then fail)."""
    nb = nbformat.from_dict(solution)
    stubs = {c.id: c.source for c in student.cells}
    for cell in nb.cells:
        if cell.cell_type == "code" and "NotImplementedError(" in stubs.get(cell.id, ""):
            cell.source = stubs[cell.id]
            break
    return nb


def make_class(exercises: Path, folder: Path, students: int, seed: int) -> dict[Path, str]:
    """``students`` folders of 13 notebooks: solved (60%), half done (25%), untouched (15%); the kind of each."""
    rng = random.Random(seed)
    kinds: dict[Path, str] = {}
    names = sorted(p.stem for p in (exercises / "solutions").glob("*.ipynb"))
    for s in range(students):
        student = folder / f"student{s:03d}"
        student.mkdir(parents=True)
        for name in names:
            solution = nbformat.read(exercises / "solutions" / f"{name}.ipynb", as_version=4)
            stub = nbformat.read(exercises / f"{name}.ipynb", as_version=4)
            kind = rng.choices(["solved", "half done", "untouched"], weights=[60, 25, 15])[0]
            nb = {"solved": solution, "half done": half_done(solution, stub), "untouched": stub}[kind]
            nbformat.write(nb, student / f"{name}.ipynb")
            kinds[(student / f"{name}.ipynb").resolve()] = kind
    return kinds


def plain_run_cpu(notebook: Path, root: Path, cell_timeout: float) -> float:
    """CPU seconds of a plain kernel running the notebook top to bottom (its check cells too)."""
    space = Workspace(root / f"plain-{notebook.stem}")
    space.create(notebook.name, notebook.read_text(encoding="utf-8"))
    nb = nbformat.read(notebook, as_version=4)
    with Kernel(space, grading=False) as kernel:
        for cell in nb.cells:
            if cell.cell_type == "code":
                kernel.run(cell.source, cell_timeout)
    space.remove()
    return kernel.cpu_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None, help="default: the grader's (the free cores)")
    parser.add_argument("--out", default=None, help="write the result as JSON (benchmarks/results/grading_*.json)")
    args = parser.parse_args(argv)

    from test_grading_support import runnable_exercises

    exercises = runnable_exercises()
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as scratch:
        scratch = Path(scratch)
        kind_of = make_class(exercises, scratch / "class", args.students, args.seed)
        kinds = {kind: sum(1 for k in kind_of.values() if k == kind) for kind in ("solved", "half done", "untouched")}
        load_before = os.getloadavg()[0]
        cpu, started = _cpu(), time.monotonic()
        graded, _ = grade(scratch / "class", exercises_dir=exercises / "src", out=scratch / "gradebook.csv",
                          report_dir=scratch / "reports", jobs=args.jobs)  # fmt: skip
        wall, cpu = time.monotonic() - started, _cpu() - cpu
        load_after = os.getloadavg()[0]
        n = len(graded)
        solved = [g for g in graded if kind_of[g.submission.path.resolve()] == "solved"]
        graded_cpu = {g.submission.exercise.name: [] for g in solved}
        for g in solved:
            graded_cpu[g.submission.exercise.name].append(g.cpu_seconds)
        plain = {name: plain_run_cpu(exercises / "solutions" / f"{name}.ipynb", scratch, 120.0) for name in graded_cpu}
    per_exercise = []
    for name in sorted(graded_cpu):
        mean = sum(graded_cpu[name]) / len(graded_cpu[name])
        per_exercise.append({"exercise": name, "graded CPU s (solved)": f"{mean:.1f}",
                             "plain run CPU s": f"{plain[name]:.1f}",
                             "overhead CPU s": f"{mean - plain[name]:.1f}".replace("-0.0", "0.0")})  # fmt: skip
    overhead = sum(float(r["overhead CPU s"]) for r in per_exercise) / max(1, len(per_exercise))
    jobs = args.jobs or free_cores()
    summary = {
        "notebooks": n, "students": args.students, "jobs": jobs, "wall s": round(wall, 1),
        "notebooks per minute": round(60 * n / wall, 2), "CPU s per notebook": round(cpu / n, 2),
        "overhead CPU s per solved notebook": round(overhead, 2), "kinds": kinds,
        "load average before/after": [round(load_before, 2), round(load_after, 2)],
    }  # fmt: skip
    verdict = "met" if overhead <= TARGET_OVERHEAD else "not met"
    record = {
        "title": "Grading a class (course_grading grade, default options)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores ({free_cores()} free to "
                   f"this process), Python {platform.python_version()}, load average {load_before:.1f} before the run",
        "date": datetime.date.today().isoformat(),
        "command": f"python benchmarks/bench_grading.py --students {args.students}",
        "note": (f"{n} notebooks ({args.students} students x 13 exercises: {kinds['solved']} solved, "
                 f"{kinds['half done']} half done, {kinds['untouched']} untouched) graded with {jobs} jobs in "
                 f"{wall / 60:.1f} min: **{summary['notebooks per minute']} notebooks per minute, "
                 f"{summary['CPU s per notebook']} CPU seconds per notebook** (kernels, grading processes and "
                 "supervisor together). The table compares each solved notebook's CPU when graded with a plain "
                 "run of the same notebook in a kernel of its own (its check cells included)."),
        "table": per_exercise,
        "target": (f"Target: a solved notebook costs at most {TARGET_OVERHEAD:g} CPU seconds beyond its own cells. "
                   f"This run: {overhead:.1f} s on average over the exercises: **{verdict}**."),
        "summary": summary,
    }  # fmt: skip
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
