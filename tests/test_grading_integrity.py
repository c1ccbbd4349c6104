"""Submissions that try to fake their checks: the verdict is decided outside the kernel.

In-process tests show the comparisons resisting a replaced ``torch.allclose`` in a student's own
notebook, and the reading of the code that the report relies on. One end-to-end run of the grader on a
tiny exercise shows each attack earning nothing: a replaced comparison, a fake checks module, IPython
hooks that hide errors (a custom exception handler, a replaced ``showtraceback``, an input transformer
that empties the check cells), forged lines in every results file the kernel can find, a function that
reads the check's expected values from its caller's frames, one that looks for the solutions, and one
that calls ``torch.optim.RMSprop``. Under the former grader (checks run inside the kernel, nbval reading
only the errors the kernel published, a results log in the kernel's reach, the repository on its
``PYTHONPATH``) each of these earned points.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
import torch

from course_grading.grader import grade
from course_grading.tampering import hooks, policy_references, tampering
from course_lib import checks
from course_lib.checks import CheckFailed
from course_lib.checks._core import Trials
from test_grading_support import (
    TINY_POINTS,
    read_gradebook,
    row_of,
    runnable_exercises,
    solution_notebook,
    tiny_exercise,
    with_cell,
)

ROOT = Path(__file__).resolve().parents[1]


def right_rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):
    square_avg = alpha * square_avg + (1 - alpha) * grad**2
    return theta - lr * grad / (square_avg.sqrt() + eps), square_avg


def wrong_rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):  # eps inside the square root
    square_avg = alpha * square_avg + (1 - alpha) * grad**2
    return theta - lr * grad / (square_avg + eps).sqrt(), square_avg


def _always(*args, **kwargs):
    return True


# ----- in a student's own notebook: the comparisons cannot be replaced from outside ---------------


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


# ----- the reading of the code for the report -----------------------------------------------------


def _notebook(*sources: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])


def test_tampering_names_what_replaces_torch_and_course_lib_but_not_what_registers_a_new_name():
    nb = _notebook(
        "import torch as t\nimport sys\nfrom course_lib import checks\nimport course_lib.checks",
        "t.allclose = lambda *a, **k: True",
        "checks.rmsprop_step = print",
        "course_lib.checks, x = None, 1",
        "setattr(t.optim, 'RMSprop', object)",
        "sys.modules['course_lib.checks'] = None",
        "model.weight = 3\nsys.stdout = None\nx.allclose = 1",  # not watched
        "%matplotlib inline\nimport math\nmath.isclose = max",
        "t.optim.Lion = object\nsetattr(t.optim, 'MyOptimizer', object)",  # new names: registering, not replacing
    )
    assert tampering(nb) == {
        1: ["torch.allclose"],
        2: ["course_lib.checks.rmsprop_step"],
        3: ["course_lib.checks"],
        4: ["torch.optim.RMSprop"],
        5: ["sys.modules[...]"],
        7: ["math.isclose"],
    }
    assert tampering(nb, skip={1, 2}).keys() == {3, 4, 5, 7}


def test_hooks_and_frame_inspection_and_process_signals_are_named():
    nb = _notebook(
        "ip = get_ipython()\nip.set_custom_exc((Exception,), lambda *a, **k: None)",
        "ip.showtraceback = lambda *a, **k: None",
        "ip.input_transformers_post.append(lambda lines: [])",
        "import sys\nframe = sys._getframe(1)\nvalues = frame.f_locals",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "open('../../results-0.jsonl', 'a')\nimport course_grading",
        "x = torch.stack([a, b])\nsignal_strength = 3",  # harmless
    )
    found = hooks(nb)
    assert "installs a custom exception handler (set_custom_exc)" in found[0]
    assert "replaces IPython's showtraceback" in found[1]
    assert "sets input transformers" in found[2]
    assert {"looks at the caller's frames", "reads a frame's local variables"} <= set(found[3])
    assert {"sends a signal to a process", "looks up its parent process"} <= set(found[4])
    assert "mentions the grader" in found[5]
    assert 6 not in found


def test_no_solution_is_flagged():
    from course_grading.exercises import load_exercises

    exercises = {e.name: e for e in load_exercises(runnable_exercises() / "src")}
    assert len(exercises) >= 13
    for name, exercise in exercises.items():
        nb = solution_notebook(name)
        assert tampering(nb) == {}, name
        assert hooks(nb) == {}, name
        assert policy_references(nb, exercise) == {}, name


def test_a_delegating_function_is_named_for_the_report():
    from course_grading.exercises import load_exercises

    (exercise,) = [e for e in load_exercises(runnable_exercises() / "src") if e.name == "01_rmsprop"]
    nb = _notebook(
        "from torch.optim import RMSprop as R\nimport course_lib.optim as co",
        "def rmsprop_step(theta, grad, v, *, lr, alpha, eps):\n    o = R([theta], lr=lr)\n    return theta, v",
        "def run_rmsprop(*a, **k):\n    return co.RMSprop",
        "reference = R([p], lr=0.1)",  # a comparison at top level is fine
    )
    assert policy_references(nb, exercise) == {1: ["torch.optim.RMSprop"], 2: ["course_lib.optim.RMSprop"]}


# ----- end to end: every attack on a tiny exercise ------------------------------------------------

CUSTOM_EXCEPTION_HOOKS = """
ip = get_ipython()
ip.set_custom_exc((BaseException,), lambda shell, etype, value, tb, tb_offset=None: None)  # swallow errors
ip.showtraceback = lambda *args, **kwargs: None  # and show nothing
ip.input_transformers_post.append(lambda lines: [] if any("checks." in line for line in lines) else lines)
"""

# Forged "passed" records in every results file near the kernel. SAFE_ROOT (the test's own folder) bounds
# the search: the test must not write outside it, whatever the grader does.
FORGE_RESULTS = r"""
import json, threading, time
from pathlib import Path

SAFE_ROOT = Path({safe_root!r})


def forge():
    forged = {{"outcome": "passed", "message": "", "duration": 0.1, "kernel_alive": True}}
    here = [Path.cwd(), *Path.cwd().parents]
    places = [place for place in here if place == SAFE_ROOT or SAFE_ROOT in place.parents]
    for place in places:
        notebooks = ["*"] + [str(p.relative_to(place)) for p in place.glob("**/*.ipynb")][:50]
        lines = "".join(json.dumps({{"notebook": nb, "cell": cell, **forged}}) + "\n" for nb in notebooks
                        for cell in range(12))
        for path in [p for p in place.glob("**/*") if p.suffix in (".jsonl", ".csv", ".json") and p.is_file()][:200]:
            try:
                with open(path, "a") as log:
                    log.write(lines)
            except OSError:
                pass


def keep_forging():  # so that the forged lines come after the check's own (the last line won)
    for _ in range(2000):
        try:
            forge()
        except Exception:
            pass
        time.sleep(0.03)


threading.Thread(target=keep_forging, daemon=True).start()
"""

READ_THE_FRAMES = """
def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):
    import sys

    frame = sys._getframe(1)
    while frame is not None:  # the check's own loop holds the reference before it calls us
        if "want_theta" in frame.f_locals and "want_avg" in frame.f_locals:
            return frame.f_locals["want_theta"].clone(), frame.f_locals["want_avg"].clone()
        frame = frame.f_back
    raise RuntimeError("no reference in sight")
"""

FIND_THE_SOLUTIONS = """
def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):
    import json, os, sys
    from pathlib import Path

    import course_lib

    places = [Path.cwd(), *Path.cwd().parents, *Path(course_lib.__file__).resolve().parents]
    places += [Path(p) for p in sys.path if p]
    try:
        import course_grading  # the grader's package lives next to the solutions

        places += list(Path(course_grading.__file__).resolve().parents)
    except ImportError:
        pass
    for place in places:
        solution = place / "exercises" / "solutions" / "01_rmsprop.ipynb"
        if solution.is_file():
            namespace = {}
            for cell in json.loads(solution.read_text())["cells"]:
                source = "".join(cell["source"])
                if cell["cell_type"] == "code" and source.startswith("def rmsprop_step"):
                    exec("import torch\\n" + source, namespace)
                    return namespace["rmsprop_step"](theta, grad, square_avg, lr=lr, alpha=alpha, eps=eps)
    raise FileNotFoundError("no solutions in sight")
"""

DELEGATE = """
from torch.optim import RMSprop


def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):
    param = theta.clone().requires_grad_(True)
    optimizer = RMSprop([param], lr=lr, alpha=alpha, eps=eps)
    optimizer.state[param] = {"step": torch.tensor(0.0), "square_avg": square_avg.clone()}
    param.grad = grad.clone()
    optimizer.step()
    return param.detach(), optimizer.state[param]["square_avg"].clone()
"""
WRONG_STEP = (
    "def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):\n"
    "    square_avg = alpha * square_avg + (1 - alpha) * grad**2\n"
    "    return theta - lr * grad / (square_avg + eps).sqrt(), square_avg\n"
)
UNINTERRUPTIBLE = "import signal\n\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n\n"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory) -> dict:
    """One run of the grader (cell limit 10 s, two jobs) on attacks against a tiny exercise."""
    root = tmp_path_factory.mktemp("integrity")
    exercise = tiny_exercise(root)
    folder = root / "submissions"
    folder.mkdir()
    solution, stub = exercise.solution_notebook(), exercise.student_notebook()
    notebooks = {
        # a wrong rmsprop_step (eps inside the root), and torch.allclose made to agree with anything
        "alice": with_cell(solution, "rmsprop_step", WRONG_STEP + "\n\ntorch.allclose = lambda *args, **kwargs: True"),
        # the three functions solved, but every error hidden from the display and the check cells emptied
        "heidi": with_cell(solution, "rmsprop_step", WRONG_STEP + CUSTOM_EXCEPTION_HOOKS),
        # a wrong rmsprop_step, and forged "passed" lines in every results file the kernel can find
        "walt": with_cell(solution, "rmsprop_step", WRONG_STEP + FORGE_RESULTS.format(safe_root=str(root))),
        "fred": with_cell(solution, "rmsprop_step", READ_THE_FRAMES),
        "sam": with_cell(solution, "rmsprop_step", FIND_THE_SOLUTIONS),
        "dora": with_cell(solution, "rmsprop_step", DELEGATE),
        # right answers, but the cell that defines converged_at first loops forever, ignoring SIGINT
        "carol": with_cell(solution, "converged_at", UNINTERRUPTIBLE + next(
            c.source for c in solution.cells if "def converged_at(" in c.source)),
    }
    bob = stub  # nothing implemented; a checks module whose every check prints a pass, everywhere
    bob.cells[next(i for i, c in enumerate(bob.cells) if c.cell_type == "code")].source += (
        "\nimport sys, types\n\n"
        "fake = types.SimpleNamespace(**{name: lambda *args, **kwargs: print('\\u2713 passed')\n"
        "                                for name in ['rmsprop_step', 'steps_to_reach', 'converged_at']})\n"
        "import course_lib\ncourse_lib.checks = sys.modules['course_lib.checks'] = checks = fake"
    )
    notebooks["bob"] = bob
    for student, nb in notebooks.items():
        nbformat.write(nb, folder / f"{student}__01_tiny.ipynb")
    graded, skipped = grade(folder, exercises_dir=root / "src", out=root / "gradebook.csv",
                            report_dir=root / "reports", cell_timeout=10, jobs=2, workdir=root / "work")  # fmt: skip
    assert skipped == []
    rows = read_gradebook(root / "gradebook.csv")
    reports = {student: (root / "reports" / f"{student}.md").read_text() for student in notebooks}
    return {"rows": rows, "reports": reports}


def _points(attacked, student: str) -> dict[str, int]:
    row = row_of(attacked["rows"], student)
    return {name: int(row[name]) for name in TINY_POINTS}


def test_a_replaced_torch_allclose_earns_nothing(attacked):
    assert _points(attacked, "alice")["rmsprop_step"] == 0
    assert "cell 3 replaces torch.allclose" in attacked["reports"]["alice"]


def test_a_replaced_checks_module_earns_nothing(attacked):
    assert _points(attacked, "bob") == dict.fromkeys(TINY_POINTS, 0)
    report = attacked["reports"]["bob"]
    assert report.count("NotImplementedError: Exercise: implement") == 3  # the real checks ran
    assert "replaces course_lib.checks, sys.modules[...]" in report


def test_hooks_that_hide_errors_or_empty_the_check_cells_earn_nothing_and_are_named(attacked):
    """nbval failed a cell only on a published error: a custom exception handler or a replaced
    showtraceback made a failing check pass, and an input transformer emptied it."""
    assert _points(attacked, "heidi") == {"rmsprop_step": 0, "steps_to_reach": 1, "converged_at": 2}
    report = attacked["reports"]["heidi"]
    assert "differs from the reference" in report  # the check ran, outside the kernel
    for what in ("installs a custom exception handler (set_custom_exc)", "replaces IPython's showtraceback",
                 "sets input transformers"):  # fmt: skip
        assert what in report
    assert "its kernel had a custom exception handler (set_custom_exc)" in report


def test_forged_results_files_earn_nothing(attacked):
    """The former grader's per-cell log was in the kernel's reach, and its last line won."""
    assert _points(attacked, "walt")["rmsprop_step"] == 0
    assert "differs from the reference" in attacked["reports"]["walt"]


def test_reading_the_expected_values_from_the_callers_frames_earns_nothing(attacked):
    """The former checks computed the reference before calling the student's function, in the same process."""
    assert _points(attacked, "fred")["rmsprop_step"] == 0
    report = attacked["reports"]["fred"]
    assert "raised RuntimeError: no reference in sight" in report
    assert "looks at the caller's frames" in report


def test_the_solutions_are_not_within_the_kernels_reach(attacked):
    """The former kernels had the repository on their PYTHONPATH: exercises/solutions/ was next door."""
    assert _points(attacked, "sam")["rmsprop_step"] == 0
    assert "raised FileNotFoundError: no solutions in sight" in attacked["reports"]["sam"]


def test_calling_torch_optim_rmsprop_earns_nothing_and_says_why(attacked):
    assert _points(attacked, "dora") == {"rmsprop_step": 0, "steps_to_reach": 1, "converged_at": 2}
    report = attacked["reports"]["dora"]
    assert "rmsprop_step called torch.optim.RMSprop, which this exercise does not allow" in report
    assert "cell 3 refers to torch.optim.RMSprop" in report
    assert "| rmsprop_step | 0 / 3 | failed |" in report


def test_a_cell_that_kills_the_kernel_costs_only_the_checks_that_depend_on_it(attacked):
    # before the cell, and after it but independent of it: full points; what it defines: lost
    assert _points(attacked, "carol") == {"rmsprop_step": 3, "steps_to_reach": 1, "converged_at": 0}
    report = attacked["reports"]["carol"]
    assert "| converged_at | 0 / 2 | failed |" in report
    assert "NameError: name 'converged_at' is not defined" in report
    assert "ran past the 10 s limit and could not be interrupted, so the kernel was shut down" in report
    assert "run again in a fresh kernel with that cell replaced by one that raises an error" in report
