"""Helpers for the grading tests (no tests here): runnable copies of the exercises, a tiny exercise,
and the grading command.

The exercise sources may lag behind the library's layout (an import path that moved); the tests grade
notebooks built by the real builder from copies of the sources whose import lines are brought up to
date, so that a solution notebook runs end to end.
"""

from __future__ import annotations

import atexit
import csv
import functools
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from course_grading.exercises import build_exercises, load_exercises

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "exercises" / "src"

# Import paths that moved when the library was reorganised (old -> new), for the copies of the sources.
_MOVED = [
    (r"\bfrom course_lib\.grading import checks\b", "from course_lib import checks"),
    (r"\bfrom course_lib\.optim import layer_adaptive\b", "from course_lib.capstone import method as layer_adaptive"),
    (r"\bfrom course_lib\.recipes import mlp\b", "from course_lib.models.mlp import mlp"),
    (r"\bcourse_lib\.plotting\b", "course_lib.viz.plotting"),
    (r"\bcourse_lib\.lr_finder\b", "course_lib.train.lr_finder"),
    (r"\bcourse_lib\.trainer\b", "course_lib.train.trainer"),
    (r"\bcourse_lib\.widgets\b", "course_lib.viz.widgets"),
]


def _scratch(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.lru_cache(maxsize=None)
def runnable_exercises() -> Path:
    """A folder with ``src/`` (the sources, imports brought up to date), and the student notebooks and
    ``solutions/`` built from them by the builder."""
    folder = _scratch("exercises-")
    (folder / "src").mkdir()
    for source in sorted(SOURCES.glob("*.md")):
        text = source.read_text(encoding="utf-8")
        for old, new in _MOVED:
            text = re.sub(old, new, text)
        (folder / "src" / source.name).write_text(text, encoding="utf-8")
    build_exercises(folder / "src", folder)
    return folder


def student_notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(runnable_exercises() / f"{name}.ipynb", as_version=4)


def solution_notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(runnable_exercises() / "solutions" / f"{name}.ipynb", as_version=4)


# ----- a tiny exercise of three real checks, fast to grade ----------------------------------------

_HEADER = "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n---\n\n# Tiny\n\nThree tasks.\n\n"


def _cell(source: str, tags: str = "", points: int = 0) -> str:
    meta = f":tags: [{tags}]\n:points: {points}\n\n" if tags else ""
    return f"```{{code-cell}} ipython3\n{meta}{source}\n```\n\n"


RMSPROP_STEP = (
    "def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):\n"
    "    # BEGIN SOLUTION\n"
    "    square_avg = alpha * square_avg + (1 - alpha) * grad**2\n"
    "    return theta - lr * grad / (square_avg.sqrt() + eps), square_avg\n"
    "    # END SOLUTION"
)
TINY = _HEADER + "".join([
    _cell("import torch\n\nfrom course_lib import checks"),
    _cell(RMSPROP_STEP),
    _cell("checks.rmsprop_step(rmsprop_step)", "check:rmsprop_step", 3),
    _cell("def converged_at(losses, target, window):\n    # BEGIN SOLUTION\n"
          "    for i in range(window - 1, len(losses)):\n"
          "        if sum(losses[i - window + 1 : i + 1]) / window < target:\n            return i\n"
          "    return None\n    # END SOLUTION"),
    _cell("def steps_to_reach(losses, threshold):\n    # BEGIN SOLUTION\n"
          "    return next((i for i, loss in enumerate(losses) if loss < threshold), None)\n    # END SOLUTION"),
    _cell("checks.steps_to_reach(steps_to_reach)", "check:steps_to_reach", 1),
    _cell("checks.converged_at(converged_at)", "check:converged_at", 2),
])  # fmt: skip
TINY_POINTS = {"rmsprop_step": 3, "steps_to_reach": 1, "converged_at": 2}


def tiny_exercise(folder: Path):
    """Write the tiny exercise's source into ``folder/src``; return the parsed exercise."""
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "src" / "01_tiny.md").write_text(TINY, encoding="utf-8")
    (exercise,) = load_exercises(folder / "src")
    return exercise


def with_cell(nb: nbformat.NotebookNode, defining: str, source: str) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose code cell that defines ``defining`` is replaced by ``source``."""
    nb = nbformat.from_dict(nb)
    cell = next(c for c in nb.cells if c.cell_type == "code" and f"def {defining}(" in c.source)
    cell.source = source
    return nb


# ----- the command ---------------------------------------------------------------------------------


def grade_command(submissions: Path, exercises: Path, out: Path, *options: str, timeout: float = 1800):
    """Run ``python -m course_grading grade``; return (completed process, gradebook rows by (student,
    exercise, file), reports folder)."""
    reports = out.parent / f"{out.stem}-reports"
    command = [sys.executable, "-m", "course_grading", "grade", str(submissions), "--exercises", str(exercises),
               "--out", str(out), "--report-dir", str(reports), *options]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    rows = read_gradebook(out) if out.exists() else []
    return result, rows, reports


def read_gradebook(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def row_of(rows: list[dict], student: str, exercise: str | None = None) -> dict:
    """The counted row of a student (and exercise)."""
    found = [r for r in rows if r["student"] == student and r["status"] == "graded"
             and (exercise is None or r["exercise"] == exercise)]  # fmt: skip
    assert len(found) == 1, (student, exercise, rows)
    return found[0]
