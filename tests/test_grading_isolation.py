"""Isolation between submissions, and speed: what one notebook does costs only that notebook.

End-to-end runs of the grading command on a tiny exercise: a notebook that kills the grading process
(its parent) in the middle of a batch that runs one notebook at a time, one that does so in every cell
(it cannot be graded: the command says so and exits non-zero), a kernel that crashes (noticed at once,
not at the cell limit), a class graded in two shards and merged, and the bubblewrap sandbox. Under the
former grader the first left every later notebook of its batch without a grade and still exited 0, and
a crash cost a whole cell limit.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from course_grading.__main__ import _parser
from course_grading.procs import free_cores
from course_grading.sandbox import bwrap_available
from test_grading_support import TINY_POINTS, grade_command, read_gradebook, row_of, tiny_exercise, with_cell

KILL_PARENT = "import os, signal\n\nos.kill(os.getppid(), signal.SIGKILL)\n\n"
CRASH = "import os\n\nos._exit(3)\n\n"
FULL = {name: str(points) for name, points in TINY_POINTS.items()}


def _points(rows: list[dict], student: str) -> dict[str, str]:
    row = row_of(rows, student)
    return {name: row[name] for name in TINY_POINTS}


def _source_of(nb, name: str) -> str:
    return next(c.source for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    return root, tiny_exercise(root)


def test_a_notebook_that_kills_its_grading_process_costs_only_itself(tiny, tmp_path):
    """One job, so every notebook goes through the same queue: the honest ones after the killer are
    graded in full, and the killer loses only what depends on the cell that killed."""
    root, exercise = tiny
    folder = tmp_path / "submissions"
    folder.mkdir()
    solution = exercise.solution_notebook()
    nbformat.write(solution, folder / "anna__01_tiny.ipynb")
    killer = with_cell(solution, "steps_to_reach", KILL_PARENT + _source_of(solution, "steps_to_reach"))
    nbformat.write(killer, folder / "killer__01_tiny.ipynb")
    for student in ("zack", "zora"):  # after the killer in the queue
        nbformat.write(solution, folder / f"{student}__01_tiny.ipynb")
    result, rows, reports = grade_command(folder, root / "src", tmp_path / "gradebook.csv", "--jobs", "1",
                                          "--cell-timeout", "30")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for student in ("anna", "zack", "zora"):
        assert _points(rows, student) == FULL, student
    assert _points(rows, "killer") == {"rmsprop_step": "3", "steps_to_reach": "0", "converged_at": "2"}
    report = (reports / "killer.md").read_text()
    assert "killed the grading process. The notebook was run again" in report
    assert "sends a signal to a process" in report


def test_a_notebook_that_cannot_be_graded_is_reported_and_the_command_fails(tiny, tmp_path):
    """A notebook that kills its grading process in every cell runs out of attempts: it is listed as not
    graded, the others are graded, and the exit status says that something went wrong."""
    root, exercise = tiny
    folder = tmp_path / "submissions"
    folder.mkdir()
    solution = exercise.solution_notebook()
    nbformat.write(solution, folder / "anna__01_tiny.ipynb")
    hostile = nbformat.from_dict(solution)
    for cell in hostile.cells:
        if cell.cell_type == "code" and not cell.id.startswith("check-"):
            cell.source = KILL_PARENT + cell.source
    nbformat.write(hostile, folder / "hostile__01_tiny.ipynb")
    result, rows, _ = grade_command(folder, root / "src", tmp_path / "gradebook.csv", "--cell-timeout", "30")
    assert result.returncode == 1
    assert "1 notebook(s) could not be graded" in result.stderr and "hostile__01_tiny.ipynb" in result.stderr
    assert _points(rows, "anna") == FULL
    hostile_row = next(r for r in rows if r["student"] == "hostile")
    assert hostile_row["status"].startswith("not graded: the grading process died 3 times")
    assert hostile_row["total"] == ""


def test_a_crashed_kernel_is_noticed_at_once_not_at_the_cell_limit(tiny, tmp_path):
    """The former grader waited for a dead kernel's reply until the cell limit (here 240 s)."""
    root, exercise = tiny
    folder = tmp_path / "submissions"
    folder.mkdir()
    solution = exercise.solution_notebook()
    crash = with_cell(solution, "converged_at", CRASH + _source_of(solution, "converged_at"))
    nbformat.write(crash, folder / "crash__01_tiny.ipynb")
    started = time.monotonic()
    result, rows, reports = grade_command(folder, root / "src", tmp_path / "gradebook.csv", "--cell-timeout", "240")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert _points(rows, "crash") == {"rmsprop_step": "3", "steps_to_reach": "1", "converged_at": "0"}
    assert "stopped the kernel" in (reports / "crash.md").read_text()
    assert elapsed < 240, elapsed


def test_shards_graded_apart_and_merged_give_the_gradebook_of_one_run(tiny, tmp_path):
    root, exercise = tiny
    folder = tmp_path / "submissions"
    folder.mkdir()
    for student, nb in {"ann": exercise.solution_notebook(), "ben": exercise.student_notebook(),
                        "cem": exercise.solution_notebook()}.items():  # fmt: skip
        nbformat.write(nb, folder / f"{student}__01_tiny.ipynb")
    (folder / "stray.ipynb").write_text("{}")
    whole, rows, _ = grade_command(folder, root / "src", tmp_path / "whole.csv")
    assert whole.returncode == 0, whole.stderr
    parts = []
    for shard in ("1/2", "2/2"):
        out = tmp_path / f"shard{shard[0]}.csv"
        part, part_rows, _ = grade_command(folder, root / "src", out, "--shard", shard)
        assert part.returncode == 0, part.stderr
        parts.append((out, {r["student"] for r in part_rows}))
    first, second = (students for _, students in parts)
    assert not first & second  # every student in one shard; the file without a student in the first
    assert first | second == {"ann", "ben", "cem", ""} and "" in first
    from course_grading.__main__ import main

    assert main(["merge", str(parts[0][0]), str(parts[1][0]), "--out", str(tmp_path / "merged.csv")]) == 0
    merged = read_gradebook(tmp_path / "merged.csv")
    assert merged == rows
    assert (tmp_path / "merged.csv").read_text() == (tmp_path / "whole.csv").read_text()


def test_jobs_default_to_the_free_cores():
    assert _parser().parse_args(["grade", "folder"]).jobs is None  # grade() then uses free_cores()
    import os

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= free_cores() <= expected


SANDBOX_PROBE = """
def steps_to_reach(losses, threshold):
    import os, re, socket, sys
    from pathlib import Path

    seen = getattr(steps_to_reach, "seen", None)
    if seen is None:
        steps_to_reach.seen = seen = within_reach()
    if seen:
        raise RuntimeError("within reach: " + ", ".join(seen))
    return next((i for i, loss in enumerate(losses) if loss < threshold), None)


def within_reach():
    import os, re, socket, sys
    from pathlib import Path

    seen = []
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        seen.append("network")
    except OSError:
        pass
    for place in ("/work", "/home", "/root", "/srv", "/tmp", str(Path.home().parent)):
        for pattern in ("exercises/solutions", "*/exercises/solutions", "*/*/exercises/solutions"):
            try:
                if any(Path(place).glob(pattern)):
                    seen.append(place)
            except OSError:
                pass
    for finder in Path(sys.prefix).glob("lib/python*/site-packages/__editable__*finder.py"):
        for root in set(re.findall(r"'(/[^']+)'", finder.read_text())):
            if (Path(root).parent / "exercises" / "solutions").exists():
                seen.append(root)
    if os.getppid() > 1:
        try:
            os.kill(os.getppid(), 0)
            seen.append("parent")
        except OSError:
            pass
    return seen
"""


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap (bwrap) is not installed or cannot make a sandbox here")
def test_the_bwrap_sandbox_keeps_the_network_the_files_and_the_grader_out_of_reach(tiny, tmp_path):
    """Under --sandbox bwrap a solution still earns full marks, and a function that looks for the network,
    the repository's solutions (also through the editable install's finder) or its parent process finds
    none of them."""
    root, exercise = tiny
    folder = tmp_path / "submissions"
    folder.mkdir()
    solution = exercise.solution_notebook()
    nbformat.write(solution, folder / "anna__01_tiny.ipynb")
    nbformat.write(with_cell(solution, "steps_to_reach", SANDBOX_PROBE), folder / "probe__01_tiny.ipynb")
    result, rows, reports = grade_command(folder, root / "src", tmp_path / "gradebook.csv", "--sandbox", "bwrap")
    assert result.returncode == 0, result.stderr
    assert _points(rows, "anna") == FULL
    assert _points(rows, "probe") == FULL, (reports / "probe.md").read_text()


def test_bad_input_to_the_command_is_named_and_nothing_is_written(tiny, tmp_path, monkeypatch, capsys):
    from course_grading.__main__ import main

    monkeypatch.chdir(tmp_path)  # no exercises/src here: the default falls back to the checkout's
    (tmp_path / "subs").mkdir()
    empty = tmp_path / "no_sources"
    empty.mkdir()
    cases = [
        (["grade", str(tmp_path / "missing")], "the submissions folder"),
        (["grade", "subs", "--exercises", str(empty)], f"no exercise sources (NN_name.md files) in {empty}"),
        (["merge", str(tmp_path / "part0.csv")], "no such gradebook"),
        (["build-exercises", "--src", str(empty), "--out", "out"], "no exercise sources"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
    (tmp_path / "a.csv").write_text("student,exercise,x\nal,01,1\n")
    (tmp_path / "b.csv").write_text("student,exercise,y\nbo,01,1\n")
    with pytest.raises(SystemExit):
        main(["merge", "a.csv", "b.csv", "--out", "merged.csv"])
    assert "other columns" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "no_sources", "subs"]
    # and with no folder named, the checkout's sources are found from anywhere
    assert main(["build-exercises", "--check"]) == 0
