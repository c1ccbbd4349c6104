"""Auto-graded exercises: the checks their notebooks call, the builder that makes student and solution
notebooks from one source, and the instructor's grading command.

- :mod:`course_lib.grading.checks`: ``checks.rmsprop_step(rmsprop_step)`` and friends.
- :func:`build_exercises` (in :mod:`~course_lib.grading.exercises`): ``exercises/src/NN_name.md`` to
  student and solution notebooks.
- :func:`grade` (in :mod:`~course_lib.grading.grader`): a folder of submitted notebooks to a gradebook
  and a report per student, running each submission under pytest's nbval plugin with the instructor's
  own check cells.

Command line: ``python -m course_lib.grading build-exercises`` and
``python -m course_lib.grading grade SUBMISSIONS_DIR --out gradebook.csv --report-dir reports/``.

Everything loads on first use: notebooks pay only for the checks (torch), the grading command only for
the builder and the grader (jupytext, nbformat).
"""

from importlib import import_module

__all__ = ["checks", "CheckFailed", "Exercise", "build_exercises", "load_exercises", "grade"]

_LAZY = {
    "checks": ("checks", None),
    "CheckFailed": ("checks", "CheckFailed"),
    "Exercise": ("exercises", "Exercise"),
    "build_exercises": ("exercises", "build_exercises"),
    "load_exercises": ("exercises", "load_exercises"),
    "grade": ("grader", "grade"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = import_module(f".{module_name}", __name__)
    return module if attribute is None else getattr(module, attribute)
