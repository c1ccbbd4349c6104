"""Which file is whose submission of which exercise, and why the others are not graded.

``SUBMISSIONS/alice/01_rmsprop.ipynb`` or ``SUBMISSIONS/alice__01_rmsprop.ipynb`` is Alice's submission
of exercise ``01_rmsprop``. Copies are recognised the way JupyterLab, Colab, browsers and file managers
name them: ``Copy of 01_rmsprop.ipynb``, ``01_rmsprop-Copy1.ipynb``, ``01_rmsprop (1).ipynb``,
``01_rmsprop - Copy.ipynb``, ``01_rmsprop copy 2.ipynb``. The exercise is the one whose name the
cleaned-up file name starts with, or else whose number it starts with. Every other file in the folder is
listed with the reason it is not graded.

When a student has several files for one exercise, every one of them is graded and the best counts
(:func:`course_grading.reports.choose_copies`): a student who worked in "Copy of ..." and also handed in
the untouched original is graded on the work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .exercises import Exercise

__all__ = ["Submission", "Skipped", "find_submissions", "exercise_stem", "parse_shard", "in_shard"]

_COPY_PREFIX = re.compile(r"^(?:copy\s+of\s+)+", re.IGNORECASE)
_COPY_SUFFIX = re.compile(
    r"(?:\s*-\s*copy\s*\d*|\s+copy(?:\s*\d+)?|\s*\(\d+\)|\s*\[\d+\]|-checkpoint)+$", re.IGNORECASE
)


@dataclass(frozen=True)
class Submission:
    """One student's notebook for one exercise."""

    student: str
    exercise: Exercise
    path: Path


@dataclass(frozen=True)
class Skipped:
    """A file of the submissions folder that is not graded, and why; student and exercise if known."""

    path: Path
    reason: str
    student: str = ""
    exercise: str = ""


def exercise_stem(stem: str) -> str:
    """A file name without the marks of a copy: ``Copy of 01_rmsprop (1)`` -> ``01_rmsprop``."""
    stem = _COPY_PREFIX.sub("", stem.strip())
    return _COPY_SUFFIX.sub("", stem).strip()


def _match_exercise(stem: str, exercises: list[Exercise]) -> Exercise | None:
    clean = exercise_stem(stem).lower()
    for exercise in exercises:
        if clean == exercise.name.lower() or clean.startswith(exercise.name.lower()):
            return exercise
    number = re.match(r"\d+", clean)
    if number:
        matches = [e for e in exercises if int(e.number) == int(number.group())]
        if len(matches) == 1:
            return matches[0]
    return None


def find_submissions(folder: str | Path, exercises: list[Exercise]) -> tuple[list[Submission], list[Skipped]]:
    """The submissions in ``folder`` (every copy) and every other file with the reason it is not graded.

    The student is the first folder under ``folder`` (``alice/01_rmsprop.ipynb``), or the part of the
    file name before ``__`` (``alice__01_rmsprop.ipynb``). Hidden files and folders (such as
    ``.ipynb_checkpoints``) are listed as not graded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"submissions folder {str(folder)!r} is not a directory")
    found: list[Submission] = []
    skipped: list[Skipped] = []
    names = ", ".join(e.name for e in exercises)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(folder)
        student = relative.parts[0] if len(relative.parts) > 1 else ""
        stem = path.stem if path.suffix.lower() == ".ipynb" else path.name
        if not student and "__" in exercise_stem(stem):
            student, stem = exercise_stem(stem).split("__", 1)
        if any(part.startswith(".") for part in relative.parts):
            skipped.append(Skipped(path, "a hidden file or folder (such as .ipynb_checkpoints)", student))
            continue
        if path.is_symlink():
            skipped.append(Skipped(path, "a symbolic link, not a file", student))
            continue
        if path.suffix.lower() != ".ipynb":
            skipped.append(Skipped(path, "not a notebook (.ipynb)", student))
            continue
        if not student:
            reason = "no student name (use STUDENT/NN_name.ipynb or STUDENT__NN_name.ipynb)"
            skipped.append(Skipped(path, reason))
            continue
        exercise = _match_exercise(stem, exercises)
        if exercise is None:
            skipped.append(Skipped(path, f"matches no exercise ({names})", student))
            continue
        found.append(Submission(student, exercise, path))
    found.sort(key=lambda s: (s.student, s.exercise.name, str(s.path)))
    return found, skipped


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``1 <= i <= N``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--shard must be i/N with 1 <= i <= N, got {text!r}")
    return int(match[1]), int(match[2])


def in_shard(student: str, students: list[str], shard: tuple[int, int] | None) -> bool:
    """Whether ``student`` is graded by ``shard``: the class's students in sorted order, dealt out in turn,
    so that a student's notebooks stay together and every shard computes the same split on its own.
    Files without a student belong to shard 1."""
    if shard is None:
        return True
    index, count = shard
    if not student:
        return index == 1
    return sorted(set(students)).index(student) % count == index - 1
