"""Grade a folder of submitted exercise notebooks with nbval; write a gradebook and a report per student.

How a submission is graded:

1. **Who and what.** ``SUBMISSIONS/alice/01_rmsprop.ipynb`` or ``SUBMISSIONS/alice__01_rmsprop.ipynb``
   is Alice's submission of exercise ``01_rmsprop``. The exercise is the one whose name the file
   name starts with, or else whose number it starts with (``01_rmsprop-Copy1.ipynb`` counts).
2. **The instructor's checks.** Outputs are cleared, and each check cell of the exercise (found by
   its tag ``check:NAME`` and id ``check-NAME``, else either, else its call ``checks.NAME(``) is replaced by
   the instructor's copy, so an edited check counts for nothing. A deleted check cell is put back
   after the cell that preceded it in the exercise (or at the end), so a check is never lost.
3. **nbval.** All prepared notebooks run under ``pytest --nbval-lax``, each in a fresh kernel with a
   per-cell timeout; a small plugin records every cell's result as it happens.
4. **Points.** A check cell that runs without error earns its points; an exception, a timeout, a
   dead kernel or a run that never reached it earns zero, and the rest of the notebook still runs.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .exercises import CHECK_TAG_PREFIX, CheckSpec, Exercise, check_tag, load_exercises

__all__ = ["Submission", "CheckResult", "GradedSubmission", "find_submissions", "prepare", "grade"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Submission:
    """One student's notebook for one exercise."""

    student: str
    exercise: Exercise
    path: Path


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``passed``, ``failed``, ``timed out`` or ``not run``."""

    check: CheckSpec
    status: str
    feedback: str = ""

    @property
    def points(self) -> int:
        return self.check.points if self.status == "passed" else 0


@dataclass
class GradedSubmission:
    """A submission with the result of each of its checks and notes on what the grader changed."""

    submission: Submission
    results: list[CheckResult]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Points earned, bonus included."""
        return sum(r.points for r in self.results)


# ----- finding submissions ----------------------------------------------------------------------


def _match_exercise(stem: str, exercises: list[Exercise]) -> Exercise | None:
    for exercise in exercises:
        if stem == exercise.name or stem.startswith(exercise.name):
            return exercise
    number = re.match(r"\d+", stem)
    if number:
        matches = [e for e in exercises if int(e.number) == int(number.group())]
        if len(matches) == 1:
            return matches[0]
    return None


def find_submissions(folder: str | Path, exercises: list[Exercise]) -> tuple[list[Submission], list[str]]:
    """The submissions in ``folder`` and warnings about files that could not be attributed.

    The student is the first folder under ``folder`` (``alice/01_rmsprop.ipynb``), or the part of the
    file name before ``__`` (``alice__01_rmsprop.ipynb``). Hidden folders such as
    ``.ipynb_checkpoints`` are skipped. When a student has several files for one exercise, the one
    named exactly after it (else the first in sorted order) is graded and the others are reported.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"submissions folder {str(folder)!r} is not a directory")
    chosen: dict[tuple[str, str], Submission] = {}
    warnings = []
    for path in sorted(folder.rglob("*.ipynb")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if len(relative.parts) > 1:
            student, stem = relative.parts[0], path.stem
        elif "__" in path.stem:
            student, stem = path.stem.split("__", 1)
        else:
            warnings.append(f"{relative}: no student name (use STUDENT/NN_name.ipynb or STUDENT__NN_name.ipynb)")
            continue
        exercise = _match_exercise(stem, exercises)
        if exercise is None:
            warnings.append(f"{relative}: matches no exercise ({', '.join(e.name for e in exercises)})")
            continue
        key = (student, exercise.name)
        previous = chosen.get(key)
        if previous is None or (stem == exercise.name and previous.path.stem != exercise.name):
            if previous is not None:
                warnings.append(f"{previous.path.relative_to(folder)}: not graded, {relative} is graded instead")
            chosen[key] = Submission(student, exercise, path)
        else:
            warnings.append(f"{relative}: not graded, {previous.path.relative_to(folder)} is graded instead")
    return sorted(chosen.values(), key=lambda s: (s.student, s.exercise.name)), warnings


# ----- preparing a submission -------------------------------------------------------------------


def _locate(cells: list, spec: CheckSpec, claimed: set[int]) -> tuple[int | None, str]:
    """Index of the submission's cell for check ``spec`` and how it was recognised.

    Preference: tag and id (the original cell), the tag alone (a pasted copy keeps it), the id alone
    (the tag was removed), and last the call ``checks.NAME(`` in the source (all metadata lost).
    """
    best: tuple[int, int, str] | None = None
    for index, cell in enumerate(cells):
        if index in claimed or cell.cell_type != "code":
            continue
        tagged = check_tag(spec.name) in cell.metadata.get("tags", [])
        same_id = cell.get("id") == spec.cell_id
        if tagged:
            rank, how = (0 if same_id else 1), "tag"
        elif same_id:
            rank, how = 2, "id"
        elif f"checks.{spec.name}(" in cell.source:
            rank, how = 3, "call"
        else:
            continue
        if best is None or rank < best[0]:
            best = (rank, index, how)
    return (best[1], best[2]) if best else (None, "")


def prepare(
    submission_nb: nbformat.NotebookNode, exercise: Exercise
) -> tuple[nbformat.NotebookNode, dict[int, CheckSpec], list[str]]:
    """The notebook to run: outputs cleared, the instructor's check cells in place.

    Returns the notebook, a map from code-cell index (as nbval numbers cells) to the check that cell
    runs, and notes on what was changed (edited, re-tagged or missing check cells).
    """
    template = exercise.student_notebook()
    originals = {cell.id: cell for cell in template.cells}
    nb = copy.deepcopy(submission_nb)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 0))
    cells = list(nb.cells)
    for index, cell in enumerate(cells):
        cell.setdefault("id", f"submitted-{index}")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    notes = []
    claimed: dict[int, CheckSpec] = {}
    for spec in exercise.checks:
        index, how = _locate(cells, spec, set(claimed))
        if index is None:
            continue
        claimed[index] = spec
        if how != "tag":
            notes.append(f"check {spec.name}: its cell had lost its tag and was recognised by its {how}")
        if cells[index].source.strip() != originals[spec.cell_id].source.strip():
            notes.append(f"check {spec.name}: the cell was edited; the instructor's version was run")
    for index, cell in enumerate(cells):
        if index in claimed:
            cells[index] = copy.deepcopy(originals[claimed[index].cell_id])
            continue
        tags = cell.metadata.get("tags", [])
        if any(t.startswith(CHECK_TAG_PREFIX) for t in tags):
            cell.metadata["tags"] = [t for t in tags if not t.startswith(CHECK_TAG_PREFIX)]
            notes.append(f"cell {index} carried a check tag but is not a check cell; it ran as an ordinary cell")
        if cell.id.startswith("check-"):
            cell.id = f"submitted-{index}"
    present = {spec.name for spec in claimed.values()}
    order = [cell.id for cell in template.cells]
    for spec in exercise.checks:
        if spec.name in present:
            continue
        position = len(cells)
        ids = [cell.id for cell in cells]
        for previous in reversed(order[: order.index(spec.cell_id)]):
            if previous in ids:
                position = ids.index(previous) + 1
                break
        cells.insert(position, copy.deepcopy(originals[spec.cell_id]))
        notes.append(f"check {spec.name}: the cell was missing and was put back")
    seen: set[str] = set()
    for index, cell in enumerate(cells):
        if cell.id in seen:
            cell.id = f"submitted-dup-{index}"
        seen.add(cell.id)
    nb.cells = cells
    checks_at = {}
    code_index = 0
    for cell in cells:
        if cell.cell_type != "code":
            continue
        for spec in exercise.checks:
            if cell.id == spec.cell_id:
                checks_at[code_index] = spec
        code_index += 1
    return nb, checks_at, notes


# ----- running nbval ----------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    library_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (library_root, env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "Agg"  # figures are not graded; skip rendering them
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only nbval and the recorder, whatever else is installed
    return env


def _run_batches(
    notebooks: list[tuple[Path, int]], workdir: Path, cell_timeout: float, jobs: int
) -> tuple[dict, dict[Path, str]]:
    """Run nbval on ``(path, n_code_cells)`` notebooks in ``jobs`` parallel pytest processes.

    Returns ``{(notebook path relative to workdir, cell number): record}`` from the recorder's logs,
    and, for the notebooks of a process that recorded nothing and failed, the end of its output. Each
    process has a generous overall deadline; past it, it is stopped and its unrecorded cells count as
    not run.
    """
    (workdir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    batches: list[list[tuple[Path, int]]] = [[] for _ in range(jobs)]
    for item in sorted(notebooks, key=lambda item: -item[1]):  # longest first, to the lightest batch
        min(batches, key=lambda batch: sum(cells for _, cells in batch)).append(item)
    batches = [batch for batch in batches if batch]
    processes = []
    for number, batch in enumerate(batches):
        log = workdir / f"results-{number}.jsonl"
        log.write_text("", encoding="utf-8")
        plugins = ["-p", "nbval.plugin", "-p", "course_lib.grading.pytest_plugin", "-p", "no:cacheprovider"]
        nbval = ["--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout}"]
        isolated = ["-c", str(workdir / "pytest.ini"), f"--rootdir={workdir}"]  # not the repository's config
        paths = [str(path.relative_to(workdir)) for path, _ in batch]
        command = [sys.executable, "-m", "pytest", *plugins, *nbval, f"--grading-log={log}", *isolated,
                   "--color=no", "-q", *paths]
        deadline = 60 + sum(60 + cells * (cell_timeout + 10) for _, cells in batch)
        output = open(workdir / f"pytest-{number}.txt", "w", encoding="utf-8")
        process = subprocess.Popen(
            command, cwd=workdir, env=_environment(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        processes.append((process, time.monotonic() + deadline, log, output, batch))
    records, failures = {}, {}
    for process, deadline, log, output, batch in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output.close()
        lines = log.read_text(encoding="utf-8").splitlines()
        for line in lines:
            record = json.loads(line)
            records[(record["notebook"], record["cell"])] = record
        if not lines and process.returncode != 0:
            tail = Path(output.name).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            failures.update({path: "\n".join(tail) for path, _ in batch})
    return records, failures


def _feedback(message: str) -> tuple[str, str]:
    """(status, feedback text) from nbval's failure report of a check cell: the check's message, or for
    a timeout the line that says so and where the code was interrupted."""
    text = _ANSI.sub("", message)
    details = text.split("Traceback:", 1)[1].strip() if "Traceback:" in text else text.strip()
    lines = [line.rstrip() for line in details.splitlines()]
    if "Timeout of" in text:
        summary = re.search(r"Timeout of [^\n]*", text)
        head = [summary.group(0).strip() if summary else "timed out", "The code was interrupted here:"]
        return "timed out", "\n".join(head + lines[-10:])
    if len(lines) > 40:
        lines = lines[:5] + ["..."] + lines[-30:]
    return "failed", "\n".join(lines)


# ----- grading ----------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "student"


def grade(
    submissions_dir: str | Path,
    *,
    exercises_dir: str | Path = "exercises/src",
    out: str | Path | None = "gradebook.csv",
    report_dir: str | Path | None = "reports",
    cell_timeout: float = 60.0,
    jobs: int = 1,
    workdir: str | Path | None = None,
) -> tuple[list[GradedSubmission], list[str]]:
    """Grade every submission in ``submissions_dir``; write the gradebook CSV and per-student reports.

    ``cell_timeout`` is nbval's limit per cell in seconds; ``jobs`` runs that many pytest processes
    side by side; ``workdir`` keeps the prepared notebooks and pytest's output there (else a temporary
    folder is used and removed). Returns the graded submissions and the warnings about files that were
    not graded.
    """
    if not cell_timeout > 0:
        raise ValueError(f"cell_timeout must be > 0 seconds, got {cell_timeout!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    exercises = load_exercises(exercises_dir)
    submissions, warnings = find_submissions(submissions_dir, exercises)
    with tempfile.TemporaryDirectory(prefix="grading-") as scratch:
        root = Path(workdir).resolve() if workdir is not None else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        graded: list[GradedSubmission] = []
        to_run: list[tuple[Path, int]] = []
        plans = []
        for number, submission in enumerate(submissions):
            try:
                submitted = nbformat.read(submission.path, as_version=4)
                prepared, checks_at, notes = prepare(submitted, submission.exercise)
            except Exception as error:  # an unreadable file must not stop the others
                reason = f"the notebook could not be read: {error}"
                results = [CheckResult(spec, "not run", reason) for spec in submission.exercise.checks]
                graded.append(GradedSubmission(submission, results, [f"unreadable notebook: {error}"]))
                continue
            path = root / f"{number:03d}_{_slug(submission.student)}" / f"{submission.exercise.name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(prepared, path)
            to_run.append((path, sum(cell.cell_type == "code" for cell in prepared.cells)))
            plans.append((submission, path, checks_at, notes))
        records, failures = _run_batches(to_run, root, cell_timeout, jobs) if to_run else ({}, {})
        for submission, path, checks_at, notes in plans:
            if path in failures:
                notes.append(f"pytest with nbval failed to run: {failures[path]}")
            relative = str(path.relative_to(root))
            results = []
            for cell, spec in sorted(checks_at.items()):
                record = records.get((relative, cell))
                if record is None:
                    results.append(CheckResult(spec, "not run", "the run stopped before this cell"))
                elif record["outcome"] == "passed":
                    results.append(CheckResult(spec, "passed"))
                else:
                    results.append(CheckResult(spec, *_feedback(record["message"])))
            graded.append(GradedSubmission(submission, results, notes))
    graded.sort(key=lambda g: (g.submission.student, g.submission.exercise.name))
    if out is not None:
        write_gradebook(graded, out)
    if report_dir is not None:
        write_reports(graded, report_dir)
    return graded, warnings


def write_gradebook(graded: list[GradedSubmission], path: str | Path) -> None:
    """One row per (student, exercise): points per check (blank where a check belongs to another
    exercise), the total (bonus included) and the maximum without bonus."""
    columns: list[str] = []
    for g in graded:
        columns += [spec.name for spec in g.submission.exercise.checks if spec.name not in columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "exercise", *columns, "total", "max_points"])
        for g in graded:
            points = {r.check.name: r.points for r in g.results}
            exercise = g.submission.exercise
            per_check = [points.get(c, "") for c in columns]
            writer.writerow([g.submission.student, exercise.name, *per_check, g.total, exercise.max_points])


def write_reports(graded: list[GradedSubmission], report_dir: str | Path) -> list[Path]:
    """A markdown report per student, ``REPORT_DIR/STUDENT.md``: a table per exercise and the feedback
    of every check that did not pass."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    by_student: dict[str, list[GradedSubmission]] = {}
    for g in graded:
        by_student.setdefault(g.submission.student, []).append(g)
    written = []
    for student, items in by_student.items():
        lines = [f"# Grading report: {student}", ""]
        for g in items:
            exercise = g.submission.exercise
            bonus = sum(r.points for r in g.results if r.check.bonus)
            score = g.total - bonus
            lines += [f"## {exercise.name}: {exercise.title}", ""]
            lines += [f"**{score} / {exercise.max_points} points**" + (f" (+{bonus} bonus)" if bonus else ""), ""]
            lines += [f"Submitted file: `{g.submission.path.name}`", ""]
            lines += ["| check | points | result |", "|---|---|---|"]
            for r in g.results:
                label = f"{r.check.name} (bonus)" if r.check.bonus else r.check.name
                lines.append(f"| {label} | {r.points} / {r.check.points} | {r.status} |")
            lines.append("")
            if g.notes:
                lines += ["Notes:", "", *[f"- {note}" for note in g.notes], ""]
            for r in g.results:
                if r.status != "passed" and r.feedback:
                    lines += [f"### {r.check.name}: {r.status}", "", "```text", r.feedback, "```", ""]
        path = report_dir / f"{_slug(student)}.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        written.append(path)
    return written
