"""Grading one notebook: its cells in a fresh kernel, its checks in this process.

The notebook's ordinary cells run in its own kernel, one at a time, each with the cell time limit; the
grader reads each cell's execute reply. A check cell is not run in the kernel: the check runs here, in
the grading process, and calls the student's function through the kernel (:class:`.remote.RemoteFunction`),
so its reference values and its verdict never enter the student's process.

A cell that kills the kernel, or runs past the limit and cannot be interrupted, is noticed at once. The
notebook then goes on in a fresh kernel: the cells before it run again (the checks are not run again)
and the cell itself is replaced by one that raises an error saying why, so only what depends on it is
lost. A cell that killed the grading process itself (:mod:`.supervisor` finds out) is replaced the same
way in the next attempt.
"""

from __future__ import annotations

import io
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat

from course_lib import checks
from course_lib.checks import CheckFailed
from course_lib.checks._core import StudentRaised

from . import tampering
from .exercises import CheckSpec, Exercise
from .kernel import Kernel, KernelError
from .prepare import check_call, code_cells, prepare
from .remote import CallTimedOut, KernelGone, RemoteFunction
from .sandbox import Workspace

__all__ = ["Task", "Settings", "NotebookResult", "run_notebook", "MAX_KERNELS"]

MAX_KERNELS = 4  # kernels one notebook may use: the first and three after cells that killed one


@dataclass
class Task:
    """One notebook to grade; ``killers`` are code cells that killed the grading process in an earlier
    attempt (they are replaced, or, for a check cell, not run)."""

    id: int
    path: str
    student: str
    exercise: str
    killers: list[int] = field(default_factory=list)


@dataclass
class Settings:
    cell_timeout: float = 60.0
    sandbox: str = "none"
    root: str = ""  # where the notebooks' folders go
    keep: bool = False  # keep each notebook's folder (the kernel's log, its files)
    startup_timeout: float = 300.0


@dataclass
class NotebookResult:
    """The outcome of each check (name, status, feedback), notes, and what grading it cost."""

    id: int
    checks: list[dict]
    notes: list[str]
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    kernels: int = 0
    complete: bool = True


def _first_line(source: str) -> str:
    return next((line.strip() for line in source.splitlines() if line.strip()), "")[:60]


class _Run:
    def __init__(self, task: Task, exercise: Exercise, settings: Settings, progress: Callable[..., None]) -> None:
        self.task, self.exercise, self.settings, self.progress = task, exercise, settings, progress
        self.notes: list[str] = []
        self.kernel: Kernel | None = None
        self.kernels = 0
        self.kernel_cpu = 0.0
        self.complete = True

    # ----- kernels ------------------------------------------------------------------------------

    def _fresh_kernel(self, space: Workspace) -> Kernel:
        self._close()
        if self.kernels >= MAX_KERNELS:
            raise KernelError(f"the notebook used up its {MAX_KERNELS} kernels")
        self.kernels += 1
        self.kernel = Kernel(space, sandbox=self.settings.sandbox, startup_timeout=self.settings.startup_timeout)
        try:
            self.kernel.start()
            self.progress(-1, kernel=self.kernel.pid)
            return self.kernel
        except KernelError:
            self.complete = False  # not the notebook's doing: the machine could not start a kernel
            raise

    def _close(self) -> None:
        if self.kernel is not None:
            self.kernel_cpu += self.kernel.close()
            self.kernel = None

    # ----- cells --------------------------------------------------------------------------------

    def _replace(self, sources: list[str], position: list[int], j: int, why: str) -> None:
        """Replace code cell ``j`` by one that raises, and say so."""
        self.notes.append(
            f"cell {position[j]} (`{_first_line(sources[j])}`) {why}. The notebook was run again in a fresh kernel "
            "with that cell replaced by one that raises an error, so only the checks that depend on it lose "
            "their points"
        )
        message = (
            f"The grader replaced this cell: in an earlier run it {why}. The notebook ran again without it; "
            "what this cell defined is missing."
        )
        sources[j] = f"raise RuntimeError({message!r})"

    def _why(self, status: str) -> str:
        if status == "stuck":
            return (f"ran past the {self.settings.cell_timeout:g} s limit and could not be interrupted, so the "
                    "kernel was shut down")  # fmt: skip
        return "stopped the kernel"

    def _judge(self, spec: CheckSpec, source: str) -> dict:
        timeout = self.settings.cell_timeout
        call = check_call(source, spec.name)
        remote = RemoteFunction(self.kernel, call.expression, time.monotonic() + timeout)
        printed = io.StringIO()
        try:
            with redirect_stdout(printed):
                try:
                    callable_, kind = remote.resolve()
                except StudentRaised as error:
                    return {"status": "failed", "feedback": f"{error.type_name}: {error.message}"}
                if not callable_:
                    return {"status": "failed", "feedback": f"\u2717 check {spec.name} failed\nexpected your function, "
                                                            f"but {call.expression} is a {kind}"}  # fmt: skip
                getattr(checks, spec.name)(remote, **call.kwargs)
            return {"status": "passed", "feedback": printed.getvalue().strip()}
        except CheckFailed as error:
            return {"status": "failed", "feedback": "\n".join(error._render_traceback_())}
        except CallTimedOut as error:
            text = f"Timeout of {timeout:g} seconds exceeded while the check ran your code."
            if error.killed:
                text += "\nThe code did not stop when interrupted, so the kernel was shut down."
            return {"status": "timed out", "feedback": text}
        except KernelGone:
            return {"status": "failed", "feedback": "The kernel died while the check ran your code (a crash, or code "
                                                    "that ends the process), so this check earns nothing."}  # fmt: skip
        except Exception as error:  # what the student's code returned broke the check's comparison
            return {"status": "failed",
                    "feedback": f"The check could not use what your code returned: {type(error).__name__}: {error}"}

    # ----- the notebook -------------------------------------------------------------------------

    def grade(self) -> NotebookResult:
        task, settings = self.task, self.settings
        path = Path(task.path)
        try:
            text = path.read_text(encoding="utf-8")
            nb, checks_at, notes = prepare(nbformat.reads(text, as_version=4), self.exercise)
        except Exception as error:  # an unreadable file must not stop the others
            reason = f"the notebook could not be read: {error}"
            results = [{"name": s.name, "status": "not run", "feedback": reason} for s in self.exercise.checks]
            return NotebookResult(task.id, results, [f"unreadable notebook: {error}"])
        self.notes += notes + tampering.notes(nb, self.exercise, checks_at)
        cells = code_cells(nb)
        sources = [cell.source for cell in cells]
        position = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
        results: dict[int, dict] = {}
        for j in task.killers:
            if j in checks_at:
                results[j] = {"status": "failed", "feedback": "While this check ran your code, the code killed the "
                                                              "grading process; the check was not run again."}  # fmt: skip
                self.notes.append(f"check {checks_at[j].name}: the code it called killed the grading process")
            elif j < len(sources):
                self._replace(sources, position, j, "killed the grading process")
        space = Workspace(Path(settings.root) / f"{task.id:05d}")
        space.create(path.name, text)
        i = 0
        try:
            while i < len(cells):
                if self.kernel is None or not self.kernel.alive():
                    self._fresh_kernel(space)
                    if not self._replay(sources, position, checks_at, i):
                        continue
                self.progress(i)
                if i in checks_at:
                    if i not in results:
                        results[i] = self._judge(checks_at[i], sources[i])
                else:
                    outcome = self.kernel.run(sources[i], settings.cell_timeout)
                    if outcome.status in ("died", "stuck"):
                        self._replace(sources, position, i, self._why(outcome.status))
                    elif outcome.status == "timeout":
                        self.notes.append(f"cell {position[i]} (`{_first_line(sources[i])}`) ran past the "
                                          f"{settings.cell_timeout:g} s limit and was interrupted")  # fmt: skip
                i += 1
            self._inspect_hooks()
        except KernelError as error:
            self.notes.append(f"{error}; the checks after cell {position[i] if i < len(position) else '-'} were not run")
        finally:
            self._close()
            if not settings.keep:
                space.remove()
        out = []
        for j, spec in sorted(checks_at.items()):
            out.append({"name": spec.name, **results.get(j, {"status": "not run", "feedback": "the run stopped before "
                                                                                             "this check"})})  # fmt: skip
        return NotebookResult(task.id, out, self.notes, kernels=self.kernels, complete=self.complete)

    def _replay(self, sources: list[str], position: list[int], checks_at: dict, upto: int) -> bool:
        """Run the ordinary cells before ``upto`` in the fresh kernel; False if one of them killed it."""
        for j in range(upto):
            if j in checks_at:
                continue
            self.progress(j)
            outcome = self.kernel.run(sources[j], self.settings.cell_timeout)
            if outcome.status in ("died", "stuck"):
                self._replace(sources, position, j, self._why(outcome.status))
                return False
        return True

    def _inspect_hooks(self) -> None:
        import json

        if self.kernel is None or not self.kernel.alive():
            return
        outcome, text = self.kernel.evaluate("__import__('_course_grading_kernel').hooks()", 30)
        try:
            found = json.loads(text) if text else []
        except ValueError:
            found = []
        if outcome.status != "ok" or not isinstance(found, list):
            self.notes.append("the kernel did not answer the grader's question about its hooks")
        elif found:
            self.notes.append("when the notebook had run, its kernel had " + "; ".join(map(str, found[:10])) +
                              " (none of these can change a grade, which is decided outside the kernel)")  # fmt: skip


def run_notebook(task: Task, exercise: Exercise, settings: Settings,
                 progress: Callable[..., None] = lambda cell, kernel=None: None) -> NotebookResult:  # fmt: skip
    """Grade one notebook (see the module's docstring). ``progress(cell)`` is called before each code cell
    runs, and ``progress(-1, kernel=pid)`` when a kernel starts."""
    started, cpu = time.monotonic(), time.process_time()
    run = _Run(task, exercise, settings, progress)
    result = run.grade()
    result.wall_seconds = time.monotonic() - started
    result.cpu_seconds = run.kernel_cpu + time.process_time() - cpu
    return result
