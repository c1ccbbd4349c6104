"""Command line: ``python -m course_grading {build-exercises,grade,merge} ...`` (``--help`` for details)."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from .exercises import build_exercises
from .grader import grade
from .procs import free_cores
from .reports import merge_gradebooks
from .sandbox import SANDBOXES
from .submissions import parse_shard


_SOURCES_HELP = "exercises/src here, else in the checkout this package comes from"


def _sources(given: str | None, parser: argparse.ArgumentParser) -> Path:
    """The folder of exercise sources: the one given, or the default (see ``_SOURCES_HELP``)."""
    if given is not None:
        candidates = [Path(given)]
    else:
        candidates = [Path("exercises/src"), Path(__file__).resolve().parents[1] / "exercises" / "src"]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("[0-9][0-9]_*.md")):
            return folder
    tried = " or ".join(str(c) for c in candidates)
    parser.error(f"no exercise sources (NN_name.md files) in {tried}; name the folder with --src/--exercises")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_grading", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-exercises", help="make the student and solution notebooks from the exercise sources"
    )
    build.add_argument("--src", default=None, help=f"folder of NN_name.md sources (default: {_SOURCES_HELP})")
    build.add_argument("--out", default=None, help="where the notebooks go (default: the folder above the sources)")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if any notebook is out of date")

    run = commands.add_parser("grade", help="grade a folder of submitted notebooks")
    run.add_argument("submissions", help="folder of STUDENT/NN_name.ipynb or STUDENT__NN_name.ipynb files")
    run.add_argument("--out", default="gradebook.csv", help="gradebook CSV (default: %(default)s)")
    run.add_argument("--report-dir", default="reports", help="one markdown report per student (default: %(default)s)")
    run.add_argument("--exercises", default=None, help=f"exercise sources (default: {_SOURCES_HELP})")
    run.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per cell and per check (default: %(default)s)")
    run.add_argument("--jobs", type=int, default=None,
                     help=f"notebooks graded side by side (default: the free cores, here {free_cores()})")
    run.add_argument("--shard", default=None, metavar="i/N",
                     help="grade only the i-th of N parts of the class (students dealt out in turn); join the parts "
                          "with `merge`")  # fmt: skip
    run.add_argument("--sandbox", choices=SANDBOXES, default="none",
                     help="run every kernel in a bubblewrap sandbox: no network, a read-only view of Python and the "
                          "library, nothing else of the file system (default: %(default)s)")  # fmt: skip
    run.add_argument("--workdir", default=None, help="keep each notebook's folder (its kernel's log) here")

    merge = commands.add_parser("merge", help="join the gradebooks of the shards of one class")
    merge.add_argument("gradebooks", nargs="+", help="the shards' gradebook CSVs")
    merge.add_argument("--out", default="gradebook.csv", help="the joined gradebook (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build-exercises":
        sources = _sources(args.src, parser)
        changed = build_exercises(sources, args.out or sources.parent, check=args.check)
        for path in changed:
            print(f"{'out of date' if args.check else 'wrote'}: {path}")
        if args.check and changed:
            print("run `python -m course_grading build-exercises` to regenerate", file=sys.stderr)
            return 1
        if not changed:
            print("all exercise notebooks are up to date")
        return 0
    if args.command == "merge":
        missing = [path for path in args.gradebooks if not Path(path).is_file()]
        if missing:
            parser.error(f"no such gradebook: {', '.join(missing)}")
        try:
            rows = merge_gradebooks(args.gradebooks, args.out)
        except ValueError as error:  # shards that do not belong together; nothing was written
            parser.error(str(error))
        print(f"merged {len(args.gradebooks)} gradebooks, {rows} rows -> {args.out}")
        return 0
    shard = parse_shard(args.shard) if args.shard else None
    if not Path(args.submissions).is_dir():
        parser.error(f"the submissions folder {args.submissions} does not exist or is not a folder")
    graded, skipped = grade(
        args.submissions,
        exercises_dir=_sources(args.exercises, parser),
        out=args.out,
        report_dir=args.report_dir,
        cell_timeout=args.cell_timeout,
        jobs=args.jobs,
        workdir=args.workdir,
        shard=shard,
        sandbox=args.sandbox,
    )
    totals: dict[str, list[str]] = defaultdict(list)
    for g in graded:
        if g.counted and g.complete:
            exercise = g.submission.exercise
            totals[g.submission.student].append(f"{exercise.name} {g.total}/{exercise.max_points}")
    for student, scores in totals.items():
        print(f"{student}: {', '.join(scores)}")
    failed = [g for g in graded if not g.complete]
    listed = [(s.path, s.reason) for s in skipped] + [(g.submission.path, g.status) for g in graded if not g.counted]
    if listed:
        print("Not graded, because:", file=sys.stderr)
        for path, reason in listed:
            print(f"  {path}: {reason}", file=sys.stderr)
    counted = sum(1 for g in graded if g.counted and g.complete)
    where = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    print(f"graded {counted} submissions of {len(totals)} students{where} -> {args.out}, {args.report_dir}/")
    if failed:
        print(f"error: {len(failed)} notebook(s) could not be graded:", file=sys.stderr)
        for g in failed:
            print(f"  {g.submission.path}: {g.status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
