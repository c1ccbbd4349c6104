"""Submissions that try to fake their checks, and cells that kill the kernel.

In-process tests show each attack working against a plain import or a plain ``torch.allclose`` and
failing against what the checks and the grader do; one end-to-end run of the grading command on a
small exercise shows the attacks earning nothing in a real kernel, and a notebook whose uninterruptible
cell killed the kernel keeping the points of every check that does not depend on that cell.
"""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch

import course_grading
from course_lib import checks
from course_lib.checks import CheckFailed
from course_lib.checks._core import Trials
from course_grading.exercises import load_exercises
from course_grading.grader import grade, isolate_checks, prepare, tampering

ROOT = Path(__file__).resolve().parents[1]


def right_rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):
    square_avg = alpha * square_avg + (1 - alpha) * grad**2
    return theta - lr * grad / (square_avg.sqrt() + eps), square_avg


def wrong_rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):  # eps inside the square root
    square_avg = alpha * square_avg + (1 - alpha) * grad**2
    return theta - lr * grad / (square_avg + eps).sqrt(), square_avg


def _always(*args, **kwargs):
    return True


# ----- the comparisons cannot be replaced from outside ------------------------------------------


def test_replacing_torch_allclose_does_not_change_a_comparison(monkeypatch):
    run = Trials("rmsprop_step", wrong_rmsprop_step, seed=0, n=1)
    monkeypatch.setattr(torch, "allclose", _always)
    with pytest.raises(CheckFailed, match="differs from the reference"):
        run.expect_tensor("theta", torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), "")
    monkeypatch.setattr(sys.modules["math"], "isclose", _always)
    with pytest.raises(CheckFailed, match="expected 1, got 0"):
        run.expect_close("ratio", 0.0, 1.0, "")


def test_a_tensor_subclass_cannot_answer_the_comparison_for_itself():
    class Agreeable(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("allclose", "equal", "isclose"):
                return True
            return super().__torch_function__(func, types, args, kwargs or {})

    run = Trials("rmsprop_step", wrong_rmsprop_step, seed=0, n=1)
    got = torch.zeros(3, dtype=torch.float64).as_subclass(Agreeable)
    assert torch.allclose(got, torch.ones(3, dtype=torch.float64))  # the trick works on torch.allclose
    with pytest.raises(CheckFailed, match="differs from the reference"):
        run.expect_tensor("theta", got, torch.ones(3, dtype=torch.float64), "")


@pytest.mark.parametrize("owner, name", [("torch", "allclose"), ("torch", "equal"), ("math", "isclose")])
def test_a_check_refuses_to_run_while_a_comparison_is_replaced(monkeypatch, owner: str, name: str):
    monkeypatch.setattr(sys.modules[owner], name, _always)
    with pytest.raises(CheckFailed, match=f"{owner}.{name} was replaced"):
        checks.rmsprop_step(right_rmsprop_step, seed=0)


def test_a_check_refuses_to_pass_if_the_students_function_replaces_a_comparison(monkeypatch):
    monkeypatch.setattr(torch, "equal", torch.equal)  # restored after the test whatever the function does

    def sneaky(*args, **kwargs):
        torch.equal = _always
        return right_rmsprop_step(*args, **kwargs)

    with pytest.raises(CheckFailed, match="torch.equal was replaced"):
        checks.rmsprop_step(sneaky, seed=0)


def test_an_oracle_replaced_by_notebook_code_is_noticed(monkeypatch):
    class RMSprop(torch.optim.RMSprop):  # as if defined in a notebook cell, agreeing with the student
        pass

    RMSprop.__module__ = "__main__"
    monkeypatch.setattr(torch.optim, "RMSprop", RMSprop)
    with pytest.raises(CheckFailed, match="torch.optim.RMSprop was replaced"):
        checks.rmsprop_step(right_rmsprop_step, seed=0)


# ----- the grader's check cells load the checks afresh ------------------------------------------

@pytest.fixture(scope="module")
def rmsprop_exercise(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    (folder / "01_rmsprop.md").write_text((ROOT / "exercises" / "src" / "01_rmsprop.md").read_text())
    (exercise,) = load_exercises(folder)
    return exercise


def _check_cell(nb, name: str) -> str:
    return next(c.source for c in nb.cells if c.id == f"check-{name}")


def test_replacing_the_checks_module_fools_a_plain_import_but_not_the_graders_check_cell(monkeypatch, rmsprop_exercise):
    fake = types.SimpleNamespace(rmsprop_step=lambda fn, **kwargs: print("\u2713 rmsprop_step passed"))
    monkeypatch.setattr(course_grading, "checks", fake, raising=False)
    monkeypatch.setitem(sys.modules, "course_lib.checks", fake)
    prepared, checks_at, _ = prepare(rmsprop_exercise.student_notebook(), rmsprop_exercise)
    plain = _check_cell(prepared, "rmsprop_step")
    exec(plain, {"rmsprop_step": wrong_rmsprop_step})  # the student's copy of the cell is fooled
    isolated = _check_cell(isolate_checks(prepared, checks_at), "rmsprop_step")
    assert "from course_lib import checks" not in isolated
    before = set(sys.modules)
    with pytest.raises(AssertionError, match="rmsprop_step: theta differs"):  # the fresh module's CheckFailed
        exec(isolated, {"rmsprop_step": wrong_rmsprop_step})
    assert set(sys.modules) == before  # the private copy leaves no name behind
    exec(isolated, {"rmsprop_step": right_rmsprop_step})


def test_tampering_names_assignments_to_torch_and_course_lib_under_any_alias():
    cells = [
        "import torch as t\nimport sys\nfrom course_lib import checks\nimport course_lib.checks",
        "t.allclose = lambda *a, **k: True",
        "checks.rmsprop_step = print",
        "course_lib.checks, x = None, 1",
        "setattr(t.optim, 'RMSprop', object)",
        "sys.modules['course_lib.checks'] = None",
        "model.weight = 3\nsys.stdout = None\nx.allclose = 1",  # not watched
        "%matplotlib inline\nimport math\nmath.isclose = max",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    assert tampering(nb) == {
        1: ["torch.allclose"],
        2: ["course_lib.checks.rmsprop_step"],
        3: ["course_lib.checks"],
        4: ["torch.optim.RMSprop"],
        5: ["sys.modules[...]"],
        7: ["math.isclose"],
    }
    assert tampering(nb, skip={1, 2}).keys() == {3, 4, 5, 7}


def test_no_solution_is_flagged_for_tampering():
    solutions = sorted((ROOT / "exercises" / "solutions").glob("*.ipynb"))
    assert len(solutions) >= 9
    for path in solutions:
        assert tampering(nbformat.read(path, as_version=4)) == {}, path.name


# ----- end to end: attacks and a cell that kills the kernel -------------------------------------

HEADER = "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n---\n\n# Tiny\n\n"


def _cell(source: str, tags: str = "", points: int = 0) -> str:
    meta = f":tags: [{tags}]\n:points: {points}\n\n" if tags else ""
    return f"```{{code-cell}} ipython3\n{meta}{source}\n```\n\n"


TINY = HEADER + "".join([
    _cell("import torch\n\nfrom course_lib import checks"),
    _cell("def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):\n    # BEGIN SOLUTION\n"
          "    square_avg = alpha * square_avg + (1 - alpha) * grad**2\n"
          "    return theta - lr * grad / (square_avg.sqrt() + eps), square_avg\n    # END SOLUTION"),
    _cell("checks.rmsprop_step(rmsprop_step)", "check:rmsprop_step", 3),
    _cell("def converged_at(losses, target, window):\n    # BEGIN SOLUTION\n"
          "    for i in range(window - 1, len(losses)):\n"
          "        if sum(losses[i - window + 1 : i + 1]) / window < target:\n            return i\n"
          "    return None\n    # END SOLUTION"),
    _cell("def steps_to_reach(losses, threshold):\n    # BEGIN SOLUTION\n"
          "    return next((i for i, loss in enumerate(losses) if loss < threshold), None)\n    # END SOLUTION"),
    _cell("checks.steps_to_reach(steps_to_reach)", "check:steps_to_reach", 1),
    _cell("checks.converged_at(converged_at)", "check:converged_at", 2),
])  # fmt: skip
UNINTERRUPTIBLE = "import signal\n\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n\n"


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """One run of the grader (cell timeout 8 s) on three submissions of a tiny exercise."""
    root = tmp_path_factory.mktemp("integrity")
    (root / "src").mkdir()
    (root / "src" / "01_tiny.md").write_text(TINY)
    (exercise,) = load_exercises(root / "src")
    folder = root / "submissions"
    folder.mkdir()

    def cell_defining(nb, name):
        return next(c for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source)

    # alice: a wrong rmsprop_step (eps inside the root), and torch.allclose made to agree with anything
    nb = exercise.solution_notebook()
    cell_defining(nb, "rmsprop_step").source = (
        "def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):\n"
        "    square_avg = alpha * square_avg + (1 - alpha) * grad**2\n"
        "    return theta - lr * grad / (square_avg + eps).sqrt(), square_avg\n\n\n"
        "torch.allclose = lambda *args, **kwargs: True"
    )
    nbformat.write(nb, folder / "alice__01_tiny.ipynb")
    # bob: nothing implemented; a checks module whose every check prints a pass, everywhere it is looked up
    nb = exercise.student_notebook()
    nb.cells[1].source += (
        "\nimport sys, types\nimport course_grading\n\n"
        "fake = types.SimpleNamespace(**{name: lambda *args, **kwargs: print('\u2713 passed')\n"
        "                                for name in ['rmsprop_step', 'steps_to_reach', 'converged_at']})\n"
        "course_lib.checks = sys.modules['course_lib.checks'] = checks = fake"
    )
    nbformat.write(nb, folder / "bob__01_tiny.ipynb")
    # carol: right answers, but the cell that defines converged_at first loops forever, ignoring SIGINT.
    # It comes after the check of rmsprop_step and before that of steps_to_reach.
    nb = exercise.solution_notebook()
    cell_defining(nb, "converged_at").source = UNINTERRUPTIBLE + cell_defining(nb, "converged_at").source
    nbformat.write(nb, folder / "carol__01_tiny.ipynb")

    work = root / "work"
    graded_list, warnings = grade(
        folder, exercises_dir=root / "src", out=root / "gradebook.csv", report_dir=root / "reports",
        cell_timeout=8, jobs=3, workdir=work,
    )  # fmt: skip
    assert warnings == []
    with open(root / "gradebook.csv", newline="") as handle:
        rows = {r["student"]: r for r in csv.DictReader(handle)}
    reports = {student: (root / "reports" / f"{student}.md").read_text() for student in rows}
    return {"rows": rows, "reports": reports, "work": work}


def test_a_replaced_torch_allclose_earns_nothing(graded):
    row, report = graded["rows"]["alice"], graded["reports"]["alice"]
    assert (row["rmsprop_step"], row["total"]) == ("0", "0")
    assert "torch.allclose was replaced by code in this notebook" in report
    assert "cell 2 assigns to torch.allclose" in report


def test_a_replaced_checks_module_earns_nothing(graded):
    row, report = graded["rows"]["bob"], graded["reports"]["bob"]
    assert (row["rmsprop_step"], row["steps_to_reach"], row["converged_at"], row["total"]) == ("0", "0", "0", "0")
    assert report.count("NotImplementedError: Exercise: implement") == 3  # the real checks ran
    assert "cell 1 assigns to course_lib.checks, sys.modules[...]" in report


def test_a_cell_that_kills_the_kernel_costs_only_the_checks_that_depend_on_it(graded):
    row, report = graded["rows"]["carol"], graded["reports"]["carol"]
    # before the cell, and after it but independent of it: full points; what it defines: lost
    assert (row["rmsprop_step"], row["steps_to_reach"], row["converged_at"]) == ("3", "1", "0")
    assert "| converged_at | 0 / 2 | failed |" in report
    assert "NameError: name 'converged_at' is not defined" in report
    assert "ran past the 8 s limit and could not be interrupted, so the kernel was shut down" in report
    assert "run again in a fresh kernel with that cell replaced by one that raises an error" in report
    rerun = nbformat.read(next(graded["work"].glob("*carol/rerun-1/01_tiny.ipynb")), as_version=4)
    assert any(c.source.startswith("raise RuntimeError('The grader replaced this cell") for c in rerun.cells)
    # the first run really lost the kernel: the cells after the loop found it dead
    logs = graded["work"].glob("results-0-*.jsonl")  # the first run's
    first = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    carol = sorted((r["cell"], r["kernel_alive"], r["message"]) for r in first if "carol" in r["notebook"])
    loop = next(cell for cell, alive, _ in carol if alive is False)
    assert all("Kernel dead on test start" in message for cell, _, message in carol if cell > loop)
