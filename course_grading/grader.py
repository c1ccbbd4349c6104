"""Grade a folder of submitted exercise notebooks: a gradebook and a report per student.

:func:`grade` ties the steps together, each in a module of its own:

1. :mod:`.submissions`: whose file is which exercise (copies included), and why any other file is not
   graded; ``shard`` keeps one part of the class.
2. :mod:`.prepare`: the instructor's check cells put in place of the submitted ones.
3. :mod:`.supervisor` and :mod:`.worker`: grading processes side by side, one notebook at a time each;
   a notebook that brings its grading process down costs only itself.
4. :mod:`.runner`, :mod:`.kernel` and :mod:`.sandbox`: each notebook in a fresh kernel of its own, in a
   folder that holds only the submission, with a copy of the library and no solutions; its ordinary
   cells run there, its checks run in the grading process and call the student's code through the
   kernel (:mod:`.remote`), so no result is decided where the student's code runs.
5. :mod:`.tampering`: notes for the instructor on cells worth a look.
6. :mod:`.reports`: the gradebook, the reports, and the merge of shards.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .exercises import load_exercises
from .prepare import prepare
from .procs import free_cores
from .reports import CheckResult, GradedSubmission, choose_copies, write_gradebook, write_reports
from .runner import Settings, Task
from .sandbox import SANDBOXES, bwrap_available
from .submissions import Skipped, Submission, find_submissions, in_shard
from .supervisor import supervise
from .tampering import tampering

__all__ = ["grade", "Submission", "Skipped", "CheckResult", "GradedSubmission", "find_submissions", "prepare",
           "tampering"]  # fmt: skip


def _weight(path: Path) -> float:
    """How long a notebook may take, roughly: its number of code cells (the queue runs the longest first)."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        return float(sum(1 for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"))
    except (OSError, ValueError, AttributeError):
        return 0.0


def grade(
    submissions_dir: str | Path,
    *,
    exercises_dir: str | Path = "exercises/src",
    out: str | Path | None = "gradebook.csv",
    report_dir: str | Path | None = "reports",
    cell_timeout: float = 60.0,
    jobs: int | None = None,
    workdir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    sandbox: str = "none",
) -> tuple[list[GradedSubmission], list[Skipped]]:
    """Grade every submission in ``submissions_dir``; write the gradebook CSV and per-student reports.

    ``cell_timeout`` is the limit per cell (and per check) in seconds; ``jobs`` the number of notebooks
    graded side by side (default: the free cores); ``workdir`` keeps each notebook's folder there (else
    a temporary folder is used and removed); ``shard=(i, N)`` grades the i-th of N parts of the class;
    ``sandbox="bwrap"`` runs every kernel in a bubblewrap sandbox. Returns the graded submissions (a
    notebook the grader could not finish has ``complete=False``) and the files that were not graded.
    """
    if not cell_timeout > 0:
        raise ValueError(f"cell_timeout must be > 0 seconds, got {cell_timeout!r}")
    if jobs is None:
        jobs = free_cores()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    if sandbox not in SANDBOXES:
        raise ValueError(f"sandbox must be one of {SANDBOXES}, got {sandbox!r}")
    if sandbox == "bwrap" and not bwrap_available():
        raise RuntimeError("--sandbox bwrap: bubblewrap is missing or cannot create a sandbox here "
                           "(Debian/Ubuntu: apt-get install bubblewrap; it needs unprivileged user namespaces)")
    folder = Path(submissions_dir)
    exercises = load_exercises(exercises_dir)
    submissions, skipped = find_submissions(folder, exercises)
    students = [s.student for s in submissions] + [s.student for s in skipped if s.student]
    submissions = [s for s in submissions if in_shard(s.student, students, shard)]
    skipped = [s for s in skipped if in_shard(s.student, students, shard)]
    tasks = [Task(i, str(s.path.resolve()), s.student, s.exercise.name) for i, s in enumerate(submissions)]
    with tempfile.TemporaryDirectory(prefix="grading-") as scratch:
        root = Path(workdir).resolve() if workdir is not None else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        settings = Settings(cell_timeout=float(cell_timeout), sandbox=sandbox, root=str(root / "notebooks"),
                            keep=workdir is not None)  # fmt: skip
        results = supervise(tasks, exercises_dir=str(Path(exercises_dir).resolve()), settings=settings, jobs=jobs,
                            log=root / "workers.log", weights={t.id: _weight(Path(t.path)) for t in tasks}) if tasks else {}  # fmt: skip
    graded = []
    for task, submission in zip(tasks, submissions):
        result = results[task.id]
        by_name = {r["name"]: r for r in result.checks}
        checks = [CheckResult(spec, by_name[spec.name]["status"], by_name[spec.name]["feedback"])
                  if spec.name in by_name else CheckResult(spec, "not run", "")
                  for spec in submission.exercise.checks]  # fmt: skip
        graded.append(GradedSubmission(submission, checks, list(result.notes), complete=result.complete,
                                       cpu_seconds=result.cpu_seconds, wall_seconds=result.wall_seconds))  # fmt: skip
    choose_copies(graded)
    graded.sort(key=lambda g: (g.submission.student, g.submission.exercise.name, not g.counted, str(g.submission.path)))
    if out is not None:
        write_gradebook(graded, out, skipped=skipped, exercises=exercises, folder=folder)
    if report_dir is not None:
        write_reports(graded, report_dir, skipped=skipped, folder=folder)
    return graded, skipped
