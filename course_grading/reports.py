"""What grading produces: the gradebook (CSV), a report per student, and the merge of shards.

The gradebook has one row per graded submission, with a column for every check of every exercise (so
that the gradebooks of shards have the same columns), ``total`` (bonus included), ``max_points``
(without bonus), the submitted ``file`` and its ``status``: ``graded``, ``not counted`` (another copy of
the same exercise by the same student scored higher), or ``not graded: <reason>``. Every file of the
submissions folder appears: the files that were not graded are rows too, with the reason.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from .exercises import CheckSpec, Exercise
from .submissions import Skipped, Submission

__all__ = ["CheckResult", "GradedSubmission", "choose_copies", "write_gradebook", "write_reports",
           "merge_gradebooks", "COLUMNS_AFTER"]  # fmt: skip

COLUMNS_AFTER = ("total", "max_points", "file", "status")


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
    """A submission with the result of each of its checks and notes on what the grader changed or saw.

    ``complete`` is False when the grader could not grade the notebook (it is then reported as not
    graded); ``counted`` is False for a copy that another copy of the same exercise beat.
    """

    submission: Submission
    results: list[CheckResult]
    notes: list[str] = field(default_factory=list)
    complete: bool = True
    counted: bool = True
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def total(self) -> int:
        """Points earned, bonus included."""
        return sum(r.points for r in self.results)

    @property
    def status(self) -> str:
        if not self.complete:
            reason = next((n[len("not graded: "):] for n in self.notes if n.startswith("not graded: ")),
                          "the grader could not finish it")  # fmt: skip
            return f"not graded: {reason.splitlines()[0] if reason else ''}"
        return "graded" if self.counted else "not counted"


def choose_copies(graded: list[GradedSubmission]) -> None:
    """Where a student handed in several files for one exercise, count the best (the most points; on a
    tie the file named exactly after the exercise, then the first by name); note it on the others."""
    groups: dict[tuple[str, str], list[GradedSubmission]] = {}
    for g in graded:
        groups.setdefault((g.submission.student, g.submission.exercise.name), []).append(g)
    for items in groups.values():
        if len(items) < 2:
            continue

        def rank(g: GradedSubmission) -> tuple:
            exact = g.submission.path.stem == g.submission.exercise.name or (
                g.submission.path.stem.split("__", 1)[-1] == g.submission.exercise.name)
            return (not g.complete, -g.total, not exact, str(g.submission.path))  # fmt: skip

        best, *others = sorted(items, key=rank)
        for g in others:
            g.counted = False
            g.notes.append(f"not counted: {best.submission.path.name} is another copy of this exercise and scored "
                           f"{best.total} (this one {g.total})")  # fmt: skip
        best.notes.append(f"{len(others)} other cop{'y' if len(others) == 1 else 'ies'} of this exercise "
                          f"({', '.join(g.submission.path.name for g in others)}) scored no more and "
                          f"{'does' if len(others) == 1 else 'do'} not count")  # fmt: skip


def _columns(exercises: list[Exercise]) -> list[str]:
    return [spec.name for exercise in exercises for spec in exercise.checks]


def _order(row: dict) -> tuple:
    """Graded rows by student and exercise, then the files that were not graded."""
    return (row["status"].startswith("not graded") and not row["total"], row["student"], row["exercise"], row["file"])


def _relative(path: Path, folder: Path | None) -> str:
    try:
        return str(path.relative_to(folder)) if folder is not None else path.name
    except ValueError:
        return path.name


def gradebook_rows(graded: list[GradedSubmission], skipped: list[Skipped], exercises: list[Exercise],
                   folder: Path | None = None) -> tuple[list[str], list[dict]]:  # fmt: skip
    columns = ["student", "exercise", *_columns(exercises), *COLUMNS_AFTER]
    rows = []
    for g in graded:
        exercise = g.submission.exercise
        row = dict.fromkeys(columns, "")
        row.update(student=g.submission.student, exercise=exercise.name, max_points=exercise.max_points,
                   file=_relative(g.submission.path, folder), status=g.status)  # fmt: skip
        if g.complete and g.counted:
            row.update({r.check.name: r.points for r in g.results}, total=g.total)
        rows.append(row)
    for s in skipped:
        row = dict.fromkeys(columns, "")
        row.update(student=s.student, exercise=s.exercise, file=_relative(s.path, folder),
                   status=f"not graded: {s.reason}")  # fmt: skip
        rows.append(row)
    return columns, sorted(rows, key=lambda r: _order({k: str(v) for k, v in r.items()}))


def write_gradebook(graded: list[GradedSubmission], path: str | Path, *, skipped: list[Skipped] = (),
                    exercises: list[Exercise] | None = None, folder: Path | None = None) -> None:  # fmt: skip
    """The gradebook CSV (see the module's docstring). ``exercises`` gives the columns (all exercises,
    so that shards agree); by default, those of the graded submissions."""
    if exercises is None:
        exercises = list({g.submission.exercise.name: g.submission.exercise for g in graded}.values())
    columns, rows = gradebook_rows(graded, list(skipped), exercises, folder)
    _write(path, columns, rows)


def _write(path: str | Path, columns: list[str], rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def merge_gradebooks(paths: list[str | Path], out: str | Path) -> int:
    """Join the gradebooks of the shards of one class into ``out``; return the number of rows. The shards
    must have the same columns (they do when graded with the same exercises)."""
    columns: list[str] | None = None
    rows: list[dict] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if columns is None:
                columns = list(reader.fieldnames or [])
            elif list(reader.fieldnames or []) != columns:
                raise ValueError(f"{path} has other columns than {paths[0]}: were the shards graded with the same "
                                 "exercises?")  # fmt: skip
            rows += list(reader)
    if columns is None:
        raise ValueError("no gradebooks to merge")
    seen, unique = set(), []
    for row in rows:
        key = tuple(row.get(c, "") for c in columns)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    graded = [(r["student"], r["exercise"], r["file"]) for r in unique if not r["status"].startswith("not graded")]
    if len(graded) != len(set(graded)):
        raise ValueError("a submission appears in two shards: were they graded with the same --shard count?")
    _write(out, columns, sorted(unique, key=_order))
    return len(unique)


def write_reports(graded: list[GradedSubmission], report_dir: str | Path, *, skipped: list[Skipped] = (),
                  folder: Path | None = None) -> list[Path]:  # fmt: skip
    """A markdown report per student, ``REPORT_DIR/STUDENT.md``: a table per exercise, the notes, the
    feedback of every check that did not pass, and the student's files that were not graded; and
    ``REPORT_DIR/not_graded.md`` listing every file that was not graded."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    by_student: dict[str, list[GradedSubmission]] = {}
    for g in graded:
        by_student.setdefault(g.submission.student, []).append(g)
    skipped_by_student: dict[str, list[Skipped]] = {}
    for s in skipped:
        if s.student:
            skipped_by_student.setdefault(s.student, []).append(s)
            by_student.setdefault(s.student, [])
    written = []
    for student, items in sorted(by_student.items()):
        lines = [f"# Grading report: {student}", ""]
        for g in sorted(items, key=lambda g: (g.submission.exercise.name, not g.counted, str(g.submission.path))):
            lines += _exercise_section(g)
        extra = skipped_by_student.get(student, [])
        if extra:
            lines += ["## Files not graded", ""]
            lines += [f"- `{_relative(s.path, folder)}`: {s.reason}" for s in extra] + [""]
        path = report_dir / f"{_slug(student)}.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        written.append(path)
    lines = ["# Files not graded", ""]
    lines += [f"- `{_relative(s.path, folder)}`: {s.reason}" for s in skipped] or ["Every file was graded."]
    lines += [f"- `{_relative(g.submission.path, folder)}`: {g.status}" for g in graded if not g.complete]
    (report_dir / "not_graded.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


def _exercise_section(g: GradedSubmission) -> list[str]:
    exercise = g.submission.exercise
    bonus = sum(r.points for r in g.results if r.check.bonus)
    lines = [f"## {exercise.name}: {exercise.title}", ""]
    if not g.complete:
        lines += [f"**Not graded**: {g.status[len('not graded: '):]}", ""]
    elif not g.counted:
        lines += [f"**Not counted** ({g.total} points): another copy scored higher.", ""]
    else:
        score = g.total - bonus
        lines += [f"**{score} / {exercise.max_points} points**" + (f" (+{bonus} bonus)" if bonus else ""), ""]
    lines += [f"Submitted file: `{g.submission.path.name}`", ""]
    if g.results:
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
    return lines


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "student"
