"""One source per exercise; the student notebook and the solution notebook are made from it.

A source, ``exercises/src/NN_name.md``, is a MyST-Markdown notebook (jupytext's ``md:myst``) that runs
as the solution. Three kinds of marks turn it into two notebooks:

- in a code cell, lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are the solution; the
  student notebook gets in their place a stub raising ``NotImplementedError`` with the message
  ``"Exercise: ..."``, which continues with the text after ``# BEGIN SOLUTION:`` or else names the
  enclosing function;
- in a markdown cell, lines between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` are a
  written answer; the student notebook gets "*Write your answer here.*";
- a code cell tagged ``check:NAME`` with ``points: N`` (and optionally ``bonus: true``) in its
  metadata is a graded check; the builder gives it the stable cell id ``check-NAME``, marks it
  read-only and prefixes a comment saying that graders run their own copy.

Every other cell gets the id ``cell-K`` (its position in the source), so both notebooks share their cell
ids, which the grader uses to put a deleted check cell back where it was. After the first markdown cell
the builder adds one of its own (id ``policy``): what the exercise's functions may call, rendered from
the policies declared next to the checks (:mod:`course_lib.checks._policy`). Code cells that import the
checks by their former path (``from course_lib.grading import checks``) get today's,
``from course_lib import checks``.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

__all__ = ["CheckSpec", "Exercise", "load_exercises", "build_exercises", "check_tag", "CHECK_TAG_PREFIX"]

CHECK_TAG_PREFIX = "check:"
_CODE_BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION(?::\s*(?P<message>.*\S))?\s*$")
_CODE_END = re.compile(r"^\s*# END SOLUTION\s*$")
_MD_BEGIN = re.compile(r"^\s*<!-- BEGIN SOLUTION -->\s*$")
_MD_END = re.compile(r"^\s*<!-- END SOLUTION -->\s*$")
_DEF = re.compile(r"^(?P<indent>\s*)(?:async\s+)?(?:def|class)\s+(?P<name>\w+)")
_CHECK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")
_OLD_CHECKS_IMPORT = re.compile(r"^(\s*)from course_lib\.grading import checks\b", re.MULTILINE)
POLICY_CELL_ID = "policy"
# The stub's exception, spelled out here so that the library itself contains no stubs.
_STUB_EXCEPTION = "NotImplementedError"
ANSWER_PLACEHOLDER = "*Write your answer here.*"


def check_tag(name: str) -> str:
    """The tag that marks the check cell of check ``name``."""
    return CHECK_TAG_PREFIX + name


@dataclass(frozen=True)
class CheckSpec:
    """One graded check cell: its name (tag ``check:NAME``, id ``check-NAME``), points, and bonus flag."""

    name: str
    points: int
    bonus: bool

    @property
    def cell_id(self) -> str:
        return f"check-{self.name}"


@dataclass(frozen=True, eq=False)
class Exercise:
    """An exercise source, parsed: its name (the file stem, ``NN_name``), title, and checks in order."""

    name: str
    path: Path
    title: str
    checks: tuple[CheckSpec, ...]
    source: nbformat.NotebookNode

    @property
    def number(self) -> str:
        """The leading number of the name (``"01"`` for ``01_rmsprop``)."""
        return self.name.split("_", 1)[0]

    @property
    def max_points(self) -> int:
        """Points without the bonus checks."""
        return sum(c.points for c in self.checks if not c.bonus)

    def student_notebook(self) -> nbformat.NotebookNode:
        """The notebook students get: solutions replaced by stubs and answer placeholders."""
        return self._render(student=True)

    def solution_notebook(self) -> nbformat.NotebookNode:
        """The notebook with the solutions in place and the markers removed."""
        return self._render(student=False)

    def _render(self, *, student: bool) -> nbformat.NotebookNode:
        nb = copy.deepcopy(self.source)
        nb.nbformat, nb.nbformat_minor = 4, 5
        nb.metadata["jupytext"] = {"formats": "ipynb,md:myst"}
        for index, cell in enumerate(nb.cells):
            spec = _check_of(cell)
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            if spec is not None:
                cell.id = spec.cell_id
                cell.source = check_cell_source(spec, cell.source)
                cell.metadata["editable"] = False
                cell.metadata["deletable"] = False
                continue
            cell.id = f"cell-{index}"
            if cell.cell_type == "code":
                cell.source = _render_code(cell.source, student=student, where=f"{self.path}, cell {index}")
                cell.source = _OLD_CHECKS_IMPORT.sub(r"\1from course_lib import checks", cell.source)
            elif cell.cell_type == "markdown":
                cell.source = _render_markdown(cell.source, student=student, where=f"{self.path}, cell {index}")
        if self.checks:  # what the functions may call, after the introduction
            first = next((i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"), -1)
            policy = nbformat.v4.new_markdown_cell(self.policy_markdown())
            policy.id = POLICY_CELL_ID
            nb.cells.insert(first + 1, policy)
        return nb

    def policy_markdown(self) -> str:
        """What the exercise's functions may call: a table made from the checks' policies."""
        from course_lib.checks import policy_for

        from .prepare import check_call

        bodies = {_check_of(cell).name: cell.source for cell in self.source.cells if _check_of(cell) is not None}
        rows: dict[str, tuple[list[str], list[str]]] = {}
        for spec in self.checks:
            function = check_call(bodies[spec.name], spec.name).expression
            policy = policy_for(spec.name)
            forbid, reasons = rows.setdefault(function, ([], []))
            forbid += [name for name in policy.forbid if name not in forbid]
            if policy.reason and policy.reason not in reasons:
                reasons.append(policy.reason)
        lines = [
            "**What your code may call.** While a check runs your code, what the library already offers for the "
            "task is replaced by a *tripwire*: calling it fails the check, with a message that names it. "
            "Everything else (tensor operations, `torch.linalg`, your own functions in this notebook) is allowed.",
            "",
            "| your code | may not call | why |",
            "|---|---|---|",
        ]
        for function, (forbid, reasons) in rows.items():
            names = ", ".join(f"`{name}`" for name in forbid) or "nothing"
            lines.append(f"| `{function}` | {names} | {'; '.join(reasons)} |")
        return "\n".join(lines)


def check_cell_source(spec: CheckSpec, body: str) -> str:
    """The text of a generated check cell: a comment with the points, the import, then ``body``."""
    points = f"{spec.points} {'bonus ' if spec.bonus else ''}point{'s' if spec.points != 1 else ''}"
    header = f"# Check ({points}). Graders run their own copy of this cell: editing it changes nothing."
    return f"{header}\nfrom course_lib import checks\n\n{body.strip()}"


def _check_of(cell: nbformat.NotebookNode) -> CheckSpec | None:
    tags = [t for t in cell.metadata.get("tags", []) if t.startswith(CHECK_TAG_PREFIX)]
    if not tags:
        return None
    if cell.cell_type != "code" or len(tags) != 1:
        raise ValueError(f"a check cell must be one code cell with one check: tag, got {cell.cell_type} with {tags}")
    name = tags[0][len(CHECK_TAG_PREFIX) :]
    if not _CHECK_NAME.match(name):
        raise ValueError(f"check name must be a Python identifier of at most 51 characters, got {name!r}")
    points = cell.metadata.get("points")
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"check {name!r} needs metadata points: a positive int, got {points!r}")
    bonus = cell.metadata.get("bonus", False)
    if not isinstance(bonus, bool):
        raise ValueError(f"check {name!r}: metadata bonus must be true or false, got {bonus!r}")
    if "BEGIN SOLUTION" in cell.source:
        raise ValueError(f"check {name!r} must not contain solution markers")
    return CheckSpec(name, points, bonus)


def _render_code(source: str, *, student: bool, where: str) -> str:
    out: list[str] = []
    lines = source.split("\n")
    inside = False
    for number, line in enumerate(lines):
        begin = _CODE_BEGIN.match(line)
        if begin:
            if inside:
                raise ValueError(f"{where}: BEGIN SOLUTION inside another solution block (line {number + 1})")
            inside = True
            if student:
                indent = begin["indent"]
                if begin["message"]:
                    message = f"Exercise: {begin['message']}"
                else:
                    message = _default_message(lines[:number], indent)
                out += [f"{indent}# Your code here", f"{indent}raise {_STUB_EXCEPTION}({json.dumps(message)})"]
        elif _CODE_END.match(line):
            if not inside:
                raise ValueError(f"{where}: END SOLUTION without BEGIN SOLUTION (line {number + 1})")
            inside = False
        elif not (inside and student):
            out.append(line)
    if inside:
        raise ValueError(f"{where}: BEGIN SOLUTION without END SOLUTION")
    return "\n".join(out)


def _default_message(before: list[str], indent: str) -> str:
    """``Exercise: implement NAME`` for the innermost def or class enclosing the marker."""
    for line in reversed(before):
        match = _DEF.match(line)
        if match and len(match["indent"]) < len(indent):
            return f"Exercise: implement {match['name']}"
    return "Exercise: write this part"


def _render_markdown(source: str, *, student: bool, where: str) -> str:
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        if _MD_BEGIN.match(line):
            if inside:
                raise ValueError(f"{where}: nested <!-- BEGIN SOLUTION -->")
            inside = True
            if student:
                out.append(ANSWER_PLACEHOLDER)
        elif _MD_END.match(line):
            if not inside:
                raise ValueError(f"{where}: <!-- END SOLUTION --> without a BEGIN")
            inside = False
        elif not (inside and student):
            out.append(line)
    if inside:
        raise ValueError(f"{where}: <!-- BEGIN SOLUTION --> without an END")
    return "\n".join(out)


def _title(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def load_exercises(src_dir: str | Path) -> list[Exercise]:
    """Parse every ``NN_name.md`` in ``src_dir``, sorted by name.

    Raises ``ValueError`` for a malformed source (unbalanced markers, a check cell without points, a
    check name used twice) and ``FileNotFoundError`` when ``src_dir`` holds no sources.
    """
    src_dir = Path(src_dir)
    paths = sorted(p for p in src_dir.glob("*.md") if re.match(r"^\d+_\w+$", p.stem))
    if not paths:
        raise FileNotFoundError(f"no exercise sources (NN_name.md) in {src_dir}")
    exercises, seen = [], {}
    for path in paths:
        source = jupytext.read(path, fmt="md:myst")
        checks = tuple(spec for spec in map(_check_of, source.cells) if spec is not None)
        for spec in checks:
            if spec.name in seen:
                raise ValueError(f"check {spec.name!r} appears in both {seen[spec.name]} and {path.name}")
            seen[spec.name] = path.name
        exercises.append(Exercise(path.stem, path, _title(source, path.stem), checks, source))
    return exercises


def _texts(exercise: Exercise) -> dict[str, str]:
    """Relative output path -> file text, for the four files made from one exercise, written as
    ``jupytext --sync`` writes them (so syncing the pairs changes nothing)."""
    texts = {}
    for folder, nb in (("", exercise.student_notebook()), ("solutions/", exercise.solution_notebook())):
        texts[f"{folder}{exercise.name}.ipynb"] = jupytext.writes(nb, fmt="ipynb").rstrip("\n") + "\n"
        texts[f"{folder}{exercise.name}.md"] = jupytext.writes(nb, fmt="md:myst")
    return texts


def _content(text: str, suffix: str) -> tuple:
    """What a notebook file says, without what depends on the jupytext version that wrote it: cell
    types, sources and metadata (and ids, which only the .ipynb keeps), kernelspec, pairing."""
    nb = jupytext.reads(text, fmt="ipynb" if suffix == ".ipynb" else "md:myst")
    cells = tuple(
        (c.cell_type, c.source, repr(sorted(c.metadata.items())), c.get("id") if suffix == ".ipynb" else None)
        for c in nb.cells
    )
    return cells, repr(nb.metadata.get("kernelspec")), nb.metadata.get("jupytext", {}).get("formats")


def build_exercises(src_dir: str | Path, out_dir: str | Path, *, check: bool = False) -> list[Path]:
    """Write the student (``out_dir/NN_name.ipynb`` + ``.md``) and solution (``out_dir/solutions/...``)
    notebooks of every source in ``src_dir``; return the paths whose content changed (files that differ
    only in the jupytext version recorded in their header are left alone).

    With ``check=True`` nothing is written; the paths returned are those that are missing or out of
    date (an empty list means everything is up to date).
    """
    out_dir = Path(out_dir)
    changed = []
    for exercise in load_exercises(src_dir):
        for relative, text in _texts(exercise).items():
            path = out_dir / relative
            if path.exists() and _content(path.read_text(encoding="utf-8"), path.suffix) == _content(text, path.suffix):
                continue
            changed.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    return changed
