"""Grade a folder of submitted exercise notebooks with nbval; write a gradebook and a report per student.

How a submission is graded:

1. **Who and what.** ``SUBMISSIONS/alice/01_rmsprop.ipynb`` or ``SUBMISSIONS/alice__01_rmsprop.ipynb``
   is Alice's submission of exercise ``01_rmsprop``. The exercise is the one whose name the file
   name starts with, or else whose number it starts with (``01_rmsprop-Copy1.ipynb`` counts).
2. **The instructor's checks.** Outputs are cleared, and each check cell of the exercise (found by
   its tag ``check:NAME`` and id ``check-NAME``, else either, else its call ``checks.NAME(``) is replaced by
   the instructor's copy, so an edited check counts for nothing. A deleted check cell is put back
   after the cell that preceded it in the exercise (or at the end), so a check is never lost.
3. **Checks the notebook cannot reach.** In the notebook that runs, each check cell loads the checks
   afresh from the grader's files under a private module name, instead of importing
   ``course_lib.checks``: whatever the student's cells assigned to that module, to
   ``sys.modules`` or to ``course_grading`` has no effect on the check. The checks compare with
   private references to PyTorch's functions and refuse to pass while one they rely on was replaced
   (see :mod:`course_lib.checks._core`). Cells that assign to attributes of ``torch``,
   ``course_lib``, ``math``, ``builtins``, ``importlib`` or ``sys.modules`` are named in the report.
4. **nbval.** All prepared notebooks run under ``pytest --nbval-lax``, each in a fresh kernel with a
   per-cell timeout; the kernel imports torch and the checks before the first cell, so that a slow
   import on a loaded machine does not count against a cell. A small plugin records every cell's
   result as it happens, and whether the kernel was still alive after it.
5. **A cell that kills the kernel.** A cell that cannot be interrupted at the timeout (it ignores
   SIGINT, or is stuck in C code) makes nbval shut the kernel down, and every later cell would fail.
   Such a notebook is run again in a fresh kernel with that cell replaced by one that raises an error
   saying why, so only the checks that depend on it are lost; the report says so.
6. **Points.** A check cell that runs without error earns its points; an exception, a timeout, a
   dead kernel or a run that never reached it earns zero, and the rest of the notebook still runs.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import csv
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .exercises import CHECK_TAG_PREFIX, CheckSpec, Exercise, check_tag, load_exercises

__all__ = ["Submission", "CheckResult", "GradedSubmission", "find_submissions", "prepare", "grade"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CHECKS_IMPORT = "from course_lib import checks"
# the checks that exercise notebooks call, in the students' library (found without importing torch)
_CHECKS_PACKAGE = Path(importlib.util.find_spec("course_lib.checks").submodule_search_locations[0])
# Rounds of "run again without the cell that killed the kernel" per notebook.
MAX_RERUNS = 3


@dataclass(frozen=True)
class Submission:
    """One student's notebook for one exercise."""

    student: str
    exercise: Exercise
    path: Path


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``passed``, ``failed``, ``timed out`` or ``not run``."""

    check: CheckSpec
    status: str
    feedback: str = ""

    @property
    def points(self) -> int:
        return self.check.points if self.status == "passed" else 0


@dataclass
class GradedSubmission:
    """A submission with the result of each of its checks and notes on what the grader changed."""

    submission: Submission
    results: list[CheckResult]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Points earned, bonus included."""
        return sum(r.points for r in self.results)


# ----- finding submissions ----------------------------------------------------------------------


def _match_exercise(stem: str, exercises: list[Exercise]) -> Exercise | None:
    for exercise in exercises:
        if stem == exercise.name or stem.startswith(exercise.name):
            return exercise
    number = re.match(r"\d+", stem)
    if number:
        matches = [e for e in exercises if int(e.number) == int(number.group())]
        if len(matches) == 1:
            return matches[0]
    return None


def find_submissions(folder: str | Path, exercises: list[Exercise]) -> tuple[list[Submission], list[str]]:
    """The submissions in ``folder`` and warnings about files that could not be attributed.

    The student is the first folder under ``folder`` (``alice/01_rmsprop.ipynb``), or the part of the
    file name before ``__`` (``alice__01_rmsprop.ipynb``). Hidden folders such as
    ``.ipynb_checkpoints`` are skipped. When a student has several files for one exercise, the one
    named exactly after it (else the first in sorted order) is graded and the others are reported.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"submissions folder {str(folder)!r} is not a directory")
    chosen: dict[tuple[str, str], Submission] = {}
    warnings = []
    for path in sorted(folder.rglob("*.ipynb")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if len(relative.parts) > 1:
            student, stem = relative.parts[0], path.stem
        elif "__" in path.stem:
            student, stem = path.stem.split("__", 1)
        else:
            warnings.append(f"{relative}: no student name (use STUDENT/NN_name.ipynb or STUDENT__NN_name.ipynb)")
            continue
        exercise = _match_exercise(stem, exercises)
        if exercise is None:
            warnings.append(f"{relative}: matches no exercise ({', '.join(e.name for e in exercises)})")
            continue
        key = (student, exercise.name)
        previous = chosen.get(key)
        if previous is None or (stem == exercise.name and previous.path.stem != exercise.name):
            if previous is not None:
                warnings.append(f"{previous.path.relative_to(folder)}: not graded, {relative} is graded instead")
            chosen[key] = Submission(student, exercise, path)
        else:
            warnings.append(f"{relative}: not graded, {previous.path.relative_to(folder)} is graded instead")
    return sorted(chosen.values(), key=lambda s: (s.student, s.exercise.name)), warnings


# ----- preparing a submission -------------------------------------------------------------------


def _locate(cells: list, spec: CheckSpec, claimed: set[int]) -> tuple[int | None, str]:
    """Index of the submission's cell for check ``spec`` and how it was recognised.

    Preference: tag and id (the original cell), the tag alone (a pasted copy keeps it), the id alone
    (the tag was removed), and last the call ``checks.NAME(`` in the source (all metadata lost).
    """
    best: tuple[int, int, str] | None = None
    for index, cell in enumerate(cells):
        if index in claimed or cell.cell_type != "code":
            continue
        tagged = check_tag(spec.name) in cell.metadata.get("tags", [])
        same_id = cell.get("id") == spec.cell_id
        if tagged:
            rank, how = (0 if same_id else 1), "tag"
        elif same_id:
            rank, how = 2, "id"
        elif f"checks.{spec.name}(" in cell.source:
            rank, how = 3, "call"
        else:
            continue
        if best is None or rank < best[0]:
            best = (rank, index, how)
    return (best[1], best[2]) if best else (None, "")


def prepare(
    submission_nb: nbformat.NotebookNode, exercise: Exercise
) -> tuple[nbformat.NotebookNode, dict[int, CheckSpec], list[str]]:
    """The notebook to run: outputs cleared, the instructor's check cells in place.

    Returns the notebook, a map from code-cell index (as nbval numbers cells) to the check that cell
    runs, and notes on what was changed (edited, re-tagged or missing check cells).
    """
    template = exercise.student_notebook()
    originals = {cell.id: cell for cell in template.cells}
    nb = copy.deepcopy(submission_nb)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 0))
    cells = list(nb.cells)
    for index, cell in enumerate(cells):
        cell.setdefault("id", f"submitted-{index}")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    notes = []
    claimed: dict[int, CheckSpec] = {}
    for spec in exercise.checks:
        index, how = _locate(cells, spec, set(claimed))
        if index is None:
            continue
        claimed[index] = spec
        if how != "tag":
            notes.append(f"check {spec.name}: its cell had lost its tag and was recognised by its {how}")
        if cells[index].source.strip() != originals[spec.cell_id].source.strip():
            notes.append(f"check {spec.name}: the cell was edited; the instructor's version was run")
    for index, cell in enumerate(cells):
        if index in claimed:
            cells[index] = copy.deepcopy(originals[claimed[index].cell_id])
            continue
        tags = cell.metadata.get("tags", [])
        if any(t.startswith(CHECK_TAG_PREFIX) for t in tags):
            cell.metadata["tags"] = [t for t in tags if not t.startswith(CHECK_TAG_PREFIX)]
            notes.append(f"cell {index} carried a check tag but is not a check cell; it ran as an ordinary cell")
        if cell.id.startswith("check-"):
            cell.id = f"submitted-{index}"
    present = {spec.name for spec in claimed.values()}
    order = [cell.id for cell in template.cells]
    for spec in exercise.checks:
        if spec.name in present:
            continue
        position = len(cells)
        ids = [cell.id for cell in cells]
        for previous in reversed(order[: order.index(spec.cell_id)]):
            if previous in ids:
                position = ids.index(previous) + 1
                break
        cells.insert(position, copy.deepcopy(originals[spec.cell_id]))
        notes.append(f"check {spec.name}: the cell was missing and was put back")
    seen: set[str] = set()
    for index, cell in enumerate(cells):
        if cell.id in seen:
            cell.id = f"submitted-dup-{index}"
        seen.add(cell.id)
    nb.cells = cells
    checks_at = {}
    code_index = 0
    for cell in cells:
        if cell.cell_type != "code":
            continue
        for spec in exercise.checks:
            if cell.id == spec.cell_id:
                checks_at[code_index] = spec
        code_index += 1
    return nb, checks_at, notes


def _fresh_checks_source(module_name: str) -> str:
    """Code that binds ``checks`` to the checks package loaded afresh from the grader's files, under the
    private name ``module_name``, and leaves no trace of it in ``sys.modules``."""
    init = str(_CHECKS_PACKAGE / "__init__.py")
    return "\n".join([
        "def _load_grading_checks():  # the grader's own copy, whatever this notebook did to course_lib",
        "    import importlib.util, sys",
        f"    name = {module_name!r}",
        f"    spec = importlib.util.spec_from_file_location(name, {init!r}, "
        f"submodule_search_locations=[{str(_CHECKS_PACKAGE)!r}])",
        "    module = importlib.util.module_from_spec(spec)",
        "    sys.modules[name] = module",
        "    try:",
        "        spec.loader.exec_module(module)",
        "    finally:",
        "        for key in [key for key in sys.modules if key == name or key.startswith(name + '.')]:",
        "            del sys.modules[key]",
        "    return module",
        "",
        "",
        "checks = _load_grading_checks()",
        "del _load_grading_checks",
    ])  # fmt: skip


def isolate_checks(nb: nbformat.NotebookNode, checks_at: dict[int, CheckSpec]) -> nbformat.NotebookNode:
    """A copy of a prepared notebook whose check cells load the checks afresh (each under its own
    private module name) instead of importing ``course_lib.checks``, which the student's cells
    could have replaced."""
    nb = copy.deepcopy(nb)
    token = secrets.token_hex(6)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for index, spec in checks_at.items():
        cell = code[index]
        loader = _fresh_checks_source(f"_grading_checks_{token}_{spec.name}")
        lines = cell.source.split("\n")
        if _CHECKS_IMPORT in (line.strip() for line in lines):
            cell.source = "\n".join(loader if line.strip() == _CHECKS_IMPORT else line for line in lines)
        else:
            cell.source = f"{loader}\n{cell.source}"
    return nb


_WATCHED = ("torch", "course_lib", "math", "builtins", "importlib")


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _resolve(dotted: str | None, aliases: dict[str, str]) -> str | None:
    """The module path that ``dotted`` names (``t.allclose`` -> ``torch.allclose`` after ``import torch
    as t``), if it lies in a watched module or in ``sys.modules``; else None."""
    if dotted is None:
        return None
    root, _, rest = dotted.partition(".")
    origin = aliases.get(root, root)
    full = f"{origin}.{rest}" if rest else origin
    if full.split(".")[0] in _WATCHED or full == "sys.modules" or full.startswith("sys.modules."):
        return full
    return None


def tampering(nb: nbformat.NotebookNode, skip: set[int] = frozenset()) -> dict[int, list[str]]:
    """``{cell index: [what it assigns to]}`` for the code cells (except the code-cell numbers in
    ``skip``) that assign to, delete or ``setattr`` an attribute of ``torch``, ``course_lib``, ``math``,
    ``builtins`` or ``importlib``, or an entry of ``sys.modules``, under any alias they were imported
    as. A simple reading of the code, not a proof: it is a note for the instructor."""
    aliases: dict[str, str] = {}
    found: dict[int, list[str]] = {}
    code_index = -1
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code_index += 1
        source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.split("\n"))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    root = alias.name.split(".")[0]  # `import a.b` binds a; `import a.b as c` binds c to a.b
                    aliases[alias.asname or root] = alias.name if alias.asname else root
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        if code_index in skip:
            continue
        names: list[str] = []
        for node in ast.walk(tree):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = list(node.targets)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
                if node.func.id in ("setattr", "delattr"):
                    where = _resolve(_dotted(node.args[0]), aliases)
                    attribute = node.args[1] if len(node.args) > 1 else None
                    if where and isinstance(attribute, ast.Constant) and isinstance(attribute.value, str):
                        where = f"{where}.{attribute.value}"
                    if where:
                        names.append(where)
            while targets:
                target = targets.pop()
                if isinstance(target, (ast.Tuple, ast.List)):
                    targets.extend(target.elts)
                elif isinstance(target, ast.Starred):
                    targets.append(target.value)
                elif isinstance(target, ast.Attribute):
                    where = _resolve(_dotted(target), aliases)
                    if where:
                        names.append(where)
                elif isinstance(target, ast.Subscript):
                    where = _resolve(_dotted(target.value), aliases)
                    if where:
                        names.append(f"{where}[...]")
        if names:
            found[index] = sorted(set(names))
    return found


# ----- running nbval ----------------------------------------------------------------------------


# Run by every kernel before its first cell, outside the per-cell timeout: torch, the checks, and what
# torch imports on an optimizer's first step (torch._dynamo, sympy: seconds on a loaded machine, in code
# that may not answer an interrupt in time) are loaded before a cell's clock starts. It defines no names.
_STARTUP = """\
def _grading_warm_up():
    try:
        import torch
        import course_lib.checks

        param = torch.zeros(1, requires_grad=True)
        param.grad = torch.zeros(1)
        torch.optim.SGD([param], lr=0.1).step()
    except Exception:  # the notebook's own cells will report it
        pass


_grading_warm_up()
del _grading_warm_up
"""
KERNEL_STARTUP_TIMEOUT = 300  # seconds for a kernel to start and import torch, on a loaded machine


def _environment(workdir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if workdir is not None:  # an IPython profile of our own whose startup file imports torch and the checks
        startup = workdir / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True, exist_ok=True)
        (startup / "00-warm-up.py").write_text(_STARTUP, encoding="utf-8")
        env["IPYTHONDIR"] = str(workdir / "ipython")
    library_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (library_root, env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "Agg"  # figures are not graded; skip rendering them
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only nbval and the recorder, whatever else is installed
    return env


def _run_batches(
    notebooks: list[tuple[Path, int]], workdir: Path, cell_timeout: float, jobs: int, label: str = ""
) -> tuple[dict, dict[Path, str]]:
    """Run nbval on ``(path, n_code_cells)`` notebooks in ``jobs`` parallel pytest processes.

    Returns ``{(notebook path relative to workdir, cell number): record}`` from the recorder's logs,
    and, for the notebooks of a process that recorded nothing and failed, the end of its output. Each
    process has a generous overall deadline; past it, it is stopped and its unrecorded cells count as
    not run. ``label`` prefixes the names of the logs, so that a second round keeps the first's.
    """
    (workdir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    batches: list[list[tuple[Path, int]]] = [[] for _ in range(jobs)]
    for item in sorted(notebooks, key=lambda item: -item[1]):  # longest first, to the lightest batch
        min(batches, key=lambda batch: sum(cells for _, cells in batch)).append(item)
    batches = [batch for batch in batches if batch]
    processes = []
    for number, batch in enumerate(batches):
        log = workdir / f"results-{label}{number}.jsonl"
        log.write_text("", encoding="utf-8")
        plugins = ["-p", "nbval.plugin", "-p", "course_grading.pytest_plugin", "-p", "no:cacheprovider"]
        nbval = ["--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout}",
                 f"--nbval-kernel-startup-timeout={KERNEL_STARTUP_TIMEOUT}"]
        isolated = ["-c", str(workdir / "pytest.ini"), f"--rootdir={workdir}"]  # not the repository's config
        paths = [str(path.relative_to(workdir)) for path, _ in batch]
        command = [sys.executable, "-m", "pytest", *plugins, *nbval, f"--grading-log={log}", *isolated,
                   "--color=no", "-q", *paths]
        deadline = 60 + sum(KERNEL_STARTUP_TIMEOUT + cells * (cell_timeout + 10) for _, cells in batch)
        output = open(workdir / f"pytest-{label}{number}.txt", "w", encoding="utf-8")
        process = subprocess.Popen(
            command, cwd=workdir, env=_environment(workdir), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append((process, time.monotonic() + deadline, log, output, batch))
    records, failures = {}, {}
    for process, deadline, log, output, batch in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output.close()
        lines = log.read_text(encoding="utf-8").splitlines()
        for line in lines:
            record = json.loads(line)
            records[(record["notebook"], record["cell"])] = record
        if not lines and process.returncode != 0:
            tail = Path(output.name).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            failures.update({path: "\n".join(tail) for path, _ in batch})
    return records, failures


def _feedback(message: str) -> tuple[str, str]:
    """(status, feedback text) from nbval's failure report of a check cell: the check's message, or for
    a timeout the line that says so and where the code was interrupted."""
    text = _ANSI.sub("", message)
    details = text.split("Traceback:", 1)[1].strip() if "Traceback:" in text else text.strip()
    lines = [line.rstrip() for line in details.splitlines()]
    if "Timeout of" in text:
        summary = re.search(r"Timeout of [^\n]*", text)
        if "Failed to interrupt kernel" in text:  # no traceback: the cell ignored the interrupt
            head = summary.group(0).strip() if summary else "timed out"
            return "timed out", f"{head}\nThe cell did not stop when interrupted, so the kernel was shut down."
        head = [summary.group(0).strip() if summary else "timed out", "The code was interrupted here:"]
        return "timed out", "\n".join(head + lines[-10:])
    if len(lines) > 40:
        lines = lines[:5] + ["..."] + lines[-30:]
    return "failed", "\n".join(lines)


# ----- grading ----------------------------------------------------------------------------------


_KERNEL_DEAD = "Kernel dead on test start"


@dataclass
class _Plan:
    """One submission on its way through nbval: the notebook that runs, the results so far (by code
    cell), and the cells replaced because they killed the kernel."""

    submission: Submission
    nb: nbformat.NotebookNode
    checks_at: dict[int, CheckSpec]
    notes: list[str]
    folder: Path
    path: Path | None = None
    records: dict[int, dict] = field(default_factory=dict)
    latest: dict[int, dict] = field(default_factory=dict)
    replaced: set[int] = field(default_factory=set)

    @property
    def n_code_cells(self) -> int:
        return sum(cell.cell_type == "code" for cell in self.nb.cells)

    def write(self, attempt: int) -> Path:
        """Write the notebook for run number ``attempt`` (0 is the first) and return its path."""
        folder = self.folder if attempt == 0 else self.folder / f"rerun-{attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{self.submission.exercise.name}.ipynb"
        nbformat.write(self.nb, self.path)
        return self.path

    def absorb(self, records: dict, failures: dict[Path, str], root: Path) -> None:
        """Take this run's records; a replaced cell keeps the record of the run in which it killed the
        kernel."""
        if self.path in failures:
            self.notes.append(f"pytest with nbval failed to run: {failures[self.path]}")
        relative = str(self.path.relative_to(root))
        self.latest = {cell: record for (notebook, cell), record in records.items() if notebook == relative}
        self.records.update({cell: r for cell, r in self.latest.items() if cell not in self.replaced})

    def killer(self) -> int | None:
        """The code cell after which the kernel of the latest run was dead, if cells after it were lost."""
        previous = None
        for cell, record in sorted(self.latest.items()):
            dead_on_start = _KERNEL_DEAD in record.get("message", "")
            if record.get("kernel_alive") is False and not dead_on_start:
                previous = cell
                break
            if dead_on_start:  # no flag recorded: the cell before the first that found the kernel dead
                break
            previous = cell
        else:
            return None
        return previous if previous is not None and previous < self.n_code_cells - 1 else None

    def replace_killer(self, cell_timeout: float, *, last: bool) -> bool:
        """If a cell killed the kernel, replace it with one that raises an error and return True (run
        the notebook again), unless this was the ``last`` run allowed."""
        cell = self.killer()
        if cell is None:
            return False
        index = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"][cell]
        first_line = next((line.strip() for line in self.nb.cells[index].source.splitlines() if line.strip()), "")
        timed_out = "Timeout of" in self.latest[cell].get("message", "")
        what = (
            f"ran past the {cell_timeout:g} s limit and could not be interrupted, so the kernel was shut down"
            if timed_out
            else "stopped the kernel"
        )
        if last:
            self.notes.append(
                f"cell {index} (`{first_line[:60]}`) {what}; the notebook had already been run {MAX_RERUNS + 1} times, "
                "so it was not run again and the checks after that cell earn nothing"
            )
            return False
        self.notes.append(
            f"cell {index} (`{first_line[:60]}`) {what}. The notebook was run again in a fresh kernel with that "
            "cell replaced by one that raises an error, so only the checks that depend on it lose their points"
        )
        message = (
            f"The grader replaced this cell: in an earlier run it {what}, and every later cell failed. "
            "The notebook ran again without it; what this cell defined is missing."
        )
        self.nb.cells[index].source = f"raise RuntimeError({message!r})"
        self.replaced.add(cell)
        return True


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "student"


def grade(
    submissions_dir: str | Path,
    *,
    exercises_dir: str | Path = "exercises/src",
    out: str | Path | None = "gradebook.csv",
    report_dir: str | Path | None = "reports",
    cell_timeout: float = 60.0,
    jobs: int = 1,
    workdir: str | Path | None = None,
) -> tuple[list[GradedSubmission], list[str]]:
    """Grade every submission in ``submissions_dir``; write the gradebook CSV and per-student reports.

    ``cell_timeout`` is nbval's limit per cell in seconds; ``jobs`` runs that many pytest processes
    side by side; ``workdir`` keeps the prepared notebooks and pytest's output there (else a temporary
    folder is used and removed). Returns the graded submissions and the warnings about files that were
    not graded.
    """
    if not cell_timeout > 0:
        raise ValueError(f"cell_timeout must be > 0 seconds, got {cell_timeout!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    exercises = load_exercises(exercises_dir)
    submissions, warnings = find_submissions(submissions_dir, exercises)
    with tempfile.TemporaryDirectory(prefix="grading-") as scratch:
        root = Path(workdir).resolve() if workdir is not None else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        graded: list[GradedSubmission] = []
        plans: list[_Plan] = []
        for number, submission in enumerate(submissions):
            try:
                submitted = nbformat.read(submission.path, as_version=4)
                prepared, checks_at, notes = prepare(submitted, submission.exercise)
            except Exception as error:  # an unreadable file must not stop the others
                reason = f"the notebook could not be read: {error}"
                results = [CheckResult(spec, "not run", reason) for spec in submission.exercise.checks]
                graded.append(GradedSubmission(submission, results, [f"unreadable notebook: {error}"]))
                continue
            for index, names in tampering(prepared, set(checks_at)).items():
                notes.append(
                    f"cell {index} assigns to {', '.join(names)}; the checks do not rely on what a notebook "
                    "changes there, but the cell is worth a look"
                )
            folder = root / f"{number:03d}_{_slug(submission.student)}"
            plans.append(_Plan(submission, isolate_checks(prepared, checks_at), checks_at, notes, folder))
        pending = plans
        for attempt in range(MAX_RERUNS + 1):
            to_run = [(plan.write(attempt), plan.n_code_cells) for plan in pending]
            records, failures = _run_batches(to_run, root, cell_timeout, jobs, f"{attempt}-") if to_run else ({}, {})
            for plan in pending:
                plan.absorb(records, failures, root)
            pending = [plan for plan in pending if plan.replace_killer(cell_timeout, last=attempt == MAX_RERUNS)]
            if not pending:
                break
        for plan in plans:
            results = []
            for cell, spec in sorted(plan.checks_at.items()):
                record = plan.records.get(cell)
                if record is None:
                    results.append(CheckResult(spec, "not run", "the run stopped before this cell"))
                elif record["outcome"] == "passed":
                    results.append(CheckResult(spec, "passed"))
                else:
                    results.append(CheckResult(spec, *_feedback(record["message"])))
            graded.append(GradedSubmission(plan.submission, results, plan.notes))
    graded.sort(key=lambda g: (g.submission.student, g.submission.exercise.name))
    if out is not None:
        write_gradebook(graded, out)
    if report_dir is not None:
        write_reports(graded, report_dir)
    return graded, warnings


def write_gradebook(graded: list[GradedSubmission], path: str | Path) -> None:
    """One row per (student, exercise): points per check (blank where a check belongs to another
    exercise), the total (bonus included) and the maximum without bonus."""
    columns: list[str] = []
    for g in graded:
        columns += [spec.name for spec in g.submission.exercise.checks if spec.name not in columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "exercise", *columns, "total", "max_points"])
        for g in graded:
            points = {r.check.name: r.points for r in g.results}
            exercise = g.submission.exercise
            per_check = [points.get(c, "") for c in columns]
            writer.writerow([g.submission.student, exercise.name, *per_check, g.total, exercise.max_points])


def write_reports(graded: list[GradedSubmission], report_dir: str | Path) -> list[Path]:
    """A markdown report per student, ``REPORT_DIR/STUDENT.md``: a table per exercise and the feedback
    of every check that did not pass."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    by_student: dict[str, list[GradedSubmission]] = {}
    for g in graded:
        by_student.setdefault(g.submission.student, []).append(g)
    written = []
    for student, items in by_student.items():
        lines = [f"# Grading report: {student}", ""]
        for g in items:
            exercise = g.submission.exercise
            bonus = sum(r.points for r in g.results if r.check.bonus)
            score = g.total - bonus
            lines += [f"## {exercise.name}: {exercise.title}", ""]
            lines += [f"**{score} / {exercise.max_points} points**" + (f" (+{bonus} bonus)" if bonus else ""), ""]
            lines += [f"Submitted file: `{g.submission.path.name}`", ""]
            lines += ["| check | points | result |", "|---|---|---|"]
            for r in g.results:
                label = f"{r.check.name} (bonus)" if r.check.bonus else r.check.name
                lines.append(f"| {label} | {r.points} / {r.check.points} | {r.status} |")
            lines.append("")
            if g.notes:
                lines += ["Notes:", "", *[f"- {note}" for note in g.notes], ""]
            for r in g.results:
                if r.status != "passed" and r.feedback:
                    lines += [f"### {r.check.name}: {r.status}", "", "```text", r.feedback, "```", ""]
        path = report_dir / f"{_slug(student)}.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        written.append(path)
    return written
