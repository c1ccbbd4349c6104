"""The instructor's tools for the course's auto-graded exercises (students need none of this).

- :func:`build_exercises` (in :mod:`~course_grading.exercises`): ``exercises/src/NN_name.md`` to
  student and solution notebooks.
- :func:`grade` (in :mod:`~course_grading.grader`): a folder of submitted notebooks to a gradebook
  and a report per student, running each submission under pytest's nbval plugin with the instructor's
  own check cells.
- :mod:`~course_grading.pytest_plugin`: records each check cell's outcome for the grader.

The checks that exercise notebooks call live in the students' library, :mod:`course_lib.checks`.

Command line: ``course-grading build-exercises`` and
``course-grading grade SUBMISSIONS_DIR --out gradebook.csv --report-dir reports/``
(or ``python -m course_grading ...``).
"""

from importlib import import_module

__all__ = ["Exercise", "build_exercises", "load_exercises", "grade"]

_LAZY = {
    "Exercise": ("exercises", "Exercise"),
    "build_exercises": ("exercises", "build_exercises"),
    "load_exercises": ("exercises", "load_exercises"),
    "grade": ("grader", "grade"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    return getattr(import_module(f".{module_name}", __name__), attribute)
