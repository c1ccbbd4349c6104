"""The notebook that runs: a submission with the instructor's check cells in place.

Outputs are cleared, and each check cell of the exercise (found by its tag ``check:NAME`` and id
``check-NAME``, else either, else its call ``checks.NAME(``) is replaced by the instructor's copy, so an
edited check counts for nothing. A deleted check cell is put back after the cell that preceded it in the
exercise (or at the end), so a check is never lost. :func:`check_call` reads what a check cell asks
for: the check's name and the expression that names the student's function.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass

import nbformat

from .exercises import CHECK_TAG_PREFIX, CheckSpec, Exercise, check_tag

__all__ = ["prepare", "check_call", "CheckCall", "code_cells"]


@dataclass(frozen=True)
class CheckCall:
    """What a check cell runs: ``checks.NAME(EXPRESSION, **kwargs)``."""

    name: str
    expression: str
    kwargs: dict


def check_call(source: str, name: str) -> CheckCall:
    """The call ``checks.NAME(...)`` in an instructor's check cell: the expression of its first argument
    (the student's function or class, evaluated in the kernel) and its keyword arguments (literals)."""
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks" and node.args):  # fmt: skip
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            return CheckCall(name, ast.unparse(node.args[0]), kwargs)
    raise ValueError(f"the check cell of {name} does not call checks.{name}(...): {source!r}")


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


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
