"""The instructor's tools for the course's auto-graded exercises (students need none of this).

- :func:`build_exercises` (in :mod:`~course_grading.exercises`): ``exercises/src/NN_name.md`` to
  student and solution notebooks, with what each exercise's functions may call.
- :func:`grade` (in :mod:`~course_grading.grader`): a folder of submitted notebooks to a gradebook and a
  report per student. Each notebook runs in a fresh kernel of its own (:mod:`~course_grading.runner`,
  :mod:`~course_grading.kernel`, :mod:`~course_grading.sandbox`), in grading processes watched by a
  supervisor (:mod:`~course_grading.supervisor`); its checks run in the grading process and call the
  student's code through the kernel (:mod:`~course_grading.remote`).
- :func:`merge_gradebooks` (in :mod:`~course_grading.reports`): join the gradebooks of a class graded in
  shards.

The checks that exercise notebooks call live in the students' library, :mod:`course_lib.checks`.

Command line: ``course-grading build-exercises``,
``course-grading grade SUBMISSIONS_DIR --out gradebook.csv --report-dir reports/`` and
``course-grading merge SHARD.csv ... --out gradebook.csv`` (or ``python -m course_grading ...``).
"""

from importlib import import_module

__all__ = ["Exercise", "build_exercises", "load_exercises", "grade", "merge_gradebooks"]

_LAZY = {
    "Exercise": ("exercises", "Exercise"),
    "build_exercises": ("exercises", "build_exercises"),
    "load_exercises": ("exercises", "load_exercises"),
    "grade": ("grader", "grade"),
    "merge_gradebooks": ("reports", "merge_gradebooks"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    return getattr(import_module(f".{module_name}", __name__), attribute)
