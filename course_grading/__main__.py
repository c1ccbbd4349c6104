"""Command line: ``python -m course_grading {build-exercises,grade} ...`` (``--help`` for details)."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from .exercises import build_exercises
from .grader import grade


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_grading", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-exercises", help="make the student and solution notebooks from the exercise sources"
    )
    build.add_argument("--src", default="exercises/src", help="folder of NN_name.md sources (default: %(default)s)")
    build.add_argument("--out", default="exercises", help="where the notebooks go (default: %(default)s)")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if any notebook is out of date")

    run = commands.add_parser("grade", help="grade a folder of submitted notebooks with nbval")
    run.add_argument("submissions", help="folder of STUDENT/NN_name.ipynb or STUDENT__NN_name.ipynb files")
    run.add_argument("--out", default="gradebook.csv", help="gradebook CSV (default: %(default)s)")
    run.add_argument("--report-dir", default="reports", help="one markdown report per student (default: %(default)s)")
    run.add_argument("--exercises", default="exercises/src", help="exercise sources (default: %(default)s)")
    run.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per cell (default: %(default)s)")
    run.add_argument("--jobs", type=int, default=1, help="pytest processes run side by side (default: %(default)s)")
    run.add_argument("--workdir", default=None, help="keep the prepared notebooks and pytest's output here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build-exercises":
        changed = build_exercises(args.src, args.out, check=args.check)
        for path in changed:
            print(f"{'out of date' if args.check else 'wrote'}: {path}")
        if args.check and changed:
            print("run `python -m course_grading build-exercises` to regenerate", file=sys.stderr)
            return 1
        if not changed:
            print("all exercise notebooks are up to date")
        return 0
    graded, warnings = grade(
        args.submissions,
        exercises_dir=args.exercises,
        out=args.out,
        report_dir=args.report_dir,
        cell_timeout=args.cell_timeout,
        jobs=args.jobs,
        workdir=args.workdir,
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    totals: dict[str, list[str]] = defaultdict(list)
    for g in graded:
        exercise = g.submission.exercise
        totals[g.submission.student].append(f"{exercise.name} {g.total}/{exercise.max_points}")
    for student, scores in totals.items():
        print(f"{student}: {', '.join(scores)}")
    print(f"graded {len(graded)} submissions of {len(totals)} students -> {args.out}, {args.report_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
