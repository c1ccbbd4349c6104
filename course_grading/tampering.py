"""A reading of a submission's code for the report: what deserves the instructor's look.

None of this decides a grade (the checks run outside the kernel, see :mod:`.remote`); it names cells
that

- replace something in ``torch``, ``course_lib``, ``math``, ``builtins`` or ``importlib``, or an entry of
  ``sys.modules`` (adding a name of one's own, ``torch.optim.Lion = Lion``, replaces nothing and is not
  listed);
- hook IPython or the interpreter: a custom exception handler, a replaced ``showtraceback``, input or AST
  transformers, event callbacks, ``sys.excepthook``, trace functions, import hooks;
- look at the caller's frames or the garbage collector's objects, signal or kill processes, or mention
  the grader or the solutions;
- refer to a name that the exercise's policy does not allow its functions to call.

A simple reading of the code, not a proof.
"""

from __future__ import annotations

import ast
import sys

import nbformat

from .exercises import Exercise

__all__ = ["tampering", "hooks", "policy_references", "notes"]

_WATCHED = ("torch", "course_lib", "math", "builtins", "importlib")
_HOOK_ATTRIBUTES = {
    "showtraceback": "replaces IPython's showtraceback", "_showtraceback": "replaces IPython's _showtraceback",
    "showsyntaxerror": "replaces IPython's showsyntaxerror", "CustomTB": "replaces IPython's CustomTB",
    "InteractiveTB": "replaces IPython's InteractiveTB", "run_cell": "replaces IPython's run_cell",
    "run_code": "replaces IPython's run_code", "transform_cell": "replaces IPython's transform_cell",
    "user_expressions": "replaces IPython's user_expressions", "excepthook": "replaces sys.excepthook",
    "input_transformers_post": "sets input transformers", "input_transformers_cleanup": "sets input transformers",
    "ast_transformers": "sets AST transformers", "meta_path": "changes the import system (sys.meta_path)",
    "path_hooks": "changes the import system (sys.path_hooks)", "f_locals": "reads a frame's local variables",
}  # fmt: skip
_HOOK_CALLS = {
    "set_custom_exc": "installs a custom exception handler (set_custom_exc)",
    "settrace": "installs a trace function", "setprofile": "installs a profile function",
    "_getframe": "looks at the caller's frames", "currentframe": "looks at the caller's frames",
    "stack": "looks at the caller's frames", "getouterframes": "looks at the caller's frames",
    "get_objects": "searches the garbage collector's objects", "get_referrers": "searches the garbage collector's objects",
    "kill": "sends a signal to a process", "killpg": "sends a signal to a process group",
    "getppid": "looks up its parent process", "_exit": "ends the process abruptly", "fork": "forks the process",
    "signal": "changes a signal handler", "abort": "ends the process abruptly",
}  # fmt: skip
_HOOK_CALL_OWNERS = {"sys", "inspect", "gc", "os", "signal", "threading"}
_TRANSFORMER_LISTS = {"input_transformers_post", "input_transformers_cleanup", "ast_transformers", "meta_path",
                      "path_hooks"}  # fmt: skip
_MENTIONS = {"_course_grading_kernel": "mentions the grader's kernel module", "course_grading": "mentions the grader",
             "solutions": "mentions the solutions", "exercises/src": "mentions the exercise sources"}  # fmt: skip


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _full(dotted: str | None, aliases: dict[str, str]) -> str | None:
    """The module path that ``dotted`` names, after the notebook's imports (``t.allclose`` ->
    ``torch.allclose`` after ``import torch as t``)."""
    if dotted is None:
        return None
    root, _, rest = dotted.partition(".")
    origin = aliases.get(root, root)
    return f"{origin}.{rest}" if rest else origin


def _watched(full: str | None) -> str | None:
    if full is None:
        return None
    if full.split(".")[0] in _WATCHED or full == "sys.modules" or full.startswith("sys.modules."):
        return full
    return None


def _exists(full: str) -> bool:
    """Whether the dotted name exists here (in the grader's own modules); True when unsure."""
    parts = full.split(".")
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is None:
            continue
        value: object = module
        for attribute in parts[i:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return True


def _cells(nb: nbformat.NotebookNode):
    """(cell index, code-cell number, syntax tree, imports so far) for every code cell that parses."""
    aliases: dict[str, str] = {}
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
        yield index, code_index, tree, dict(aliases)


def tampering(nb: nbformat.NotebookNode, skip: set[int] = frozenset()) -> dict[int, list[str]]:
    """``{cell index: [what it replaces]}`` for the code cells (except the code-cell numbers in ``skip``)
    that assign to, delete or ``setattr`` an existing attribute of ``torch``, ``course_lib``, ``math``,
    ``builtins`` or ``importlib``, or an entry of ``sys.modules``, under any alias."""
    found: dict[int, list[str]] = {}
    for index, code_index, tree, aliases in _cells(nb):
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
                    where = _watched(_full(_dotted(node.args[0]), aliases))
                    attribute = node.args[1] if len(node.args) > 1 else None
                    if where and isinstance(attribute, ast.Constant) and isinstance(attribute.value, str):
                        where = f"{where}.{attribute.value}"
                        if node.func.id == "setattr" and not _exists(where):
                            where = None  # a name of the notebook's own, added
                    if where:
                        names.append(where)
            while targets:
                target = targets.pop()
                if isinstance(target, (ast.Tuple, ast.List)):
                    targets.extend(target.elts)
                elif isinstance(target, ast.Starred):
                    targets.append(target.value)
                elif isinstance(target, ast.Attribute):
                    where = _watched(_full(_dotted(target), aliases))
                    if where and (isinstance(node, ast.Delete) or _exists(where)):
                        names.append(where)
                elif isinstance(target, ast.Subscript):
                    where = _watched(_full(_dotted(target.value), aliases))
                    if where:
                        names.append(f"{where}[...]")
        if names:
            found[index] = sorted(set(names))
    return found


def hooks(nb: nbformat.NotebookNode, skip: set[int] = frozenset()) -> dict[int, list[str]]:
    """``{cell index: [what it does]}`` for cells that hook IPython or the interpreter, inspect frames,
    signal processes, or mention the grader or the solutions (see the module's docstring)."""
    found: dict[int, list[str]] = {}
    for index, code_index, tree, aliases in _cells(nb):
        if code_index in skip:
            continue
        seen: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in _HOOK_ATTRIBUTES:
                parent_is_store = isinstance(node.ctx, (ast.Store, ast.Del))
                if parent_is_store or node.attr in ("f_locals",):
                    seen.append(_HOOK_ATTRIBUTES[node.attr])
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name, owner = node.func.attr, _full(_dotted(node.func.value), aliases) or ""
                if name == "set_custom_exc" or (name in _HOOK_CALLS and owner.split(".")[0] in _HOOK_CALL_OWNERS):
                    seen.append(_HOOK_CALLS[name])
                if name in ("append", "insert", "extend") and isinstance(node.func.value, ast.Attribute):
                    if node.func.value.attr in _TRANSFORMER_LISTS:
                        seen.append(_HOOK_ATTRIBUTES[node.func.value.attr])
                if name == "register" and "events" in (_dotted(node.func.value) or ""):
                    seen.append("registers an IPython event callback")
            if isinstance(node, ast.Name) and node.id in aliases and aliases[node.id] in (
                "sys._getframe", "inspect.currentframe", "inspect.stack", "gc.get_objects", "os.kill", "os.getppid"):
                seen.append(_HOOK_CALLS[aliases[node.id].rpartition(".")[2]])  # fmt: skip
            texts = [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []
            texts += [node.id] if isinstance(node, ast.Name) else []
            texts += [node.attr] if isinstance(node, ast.Attribute) else []
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                texts += [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
            for text in texts:
                for mark, what in _MENTIONS.items():
                    if mark in text:
                        seen.append(what)
        if seen:
            found[index] = sorted(set(seen))
    return found


def policy_references(nb: nbformat.NotebookNode, exercise: Exercise, skip: set[int] = frozenset()
                      ) -> dict[int, list[str]]:  # fmt: skip
    """``{cell index: [forbidden names it refers to]}``: names that the policy of a check does not allow its
    function to call (see :mod:`course_lib.checks._policy`), used inside the definition of that function
    (or class). A helper or a demo that compares with the library is fine."""
    from course_lib.checks import policy_for

    from .prepare import check_call

    bodies = {cell.id: cell.source for cell in exercise.student_notebook().cells}
    forbidden: dict[str, set[str]] = {}  # function -> names it may not call
    for spec in exercise.checks:
        function = check_call(bodies[spec.cell_id], spec.name).expression
        forbidden.setdefault(function, set()).update(policy_for(spec.name).forbid)
    if not any(forbidden.values()):
        return {}
    found: dict[int, list[str]] = {}
    for index, code_index, tree, aliases in _cells(nb):
        if code_index in skip:
            continue
        names = set()
        for definition in ast.walk(tree):
            if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            banned = forbidden.get(definition.name)
            if not banned:
                continue
            for node in ast.walk(definition):
                if isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(getattr(node, "ctx", None), ast.Store):
                    dotted = _full(_dotted(node), aliases)
                    if dotted:
                        names |= _forbidden(dotted, banned)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        names |= _forbidden(f"{node.module}.{alias.name}", banned)
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        names |= _forbidden(alias.name, banned)
        if names:
            found[index] = sorted(names)
    return found


def _forbidden(dotted: str, forbidden: set[str]) -> set[str]:
    """The forbidden names that ``dotted`` is, or lies inside, or is defined in (torch.optim.RMSprop is
    defined in the module torch.optim.rmsprop)."""
    hits = {name for name in forbidden if dotted == name or dotted.startswith(name + ".")}
    parts = dotted.split(".")
    module = sys.modules.get(".".join(parts[:-1])) if len(parts) > 1 else None
    value = getattr(module, parts[-1], None) if module is not None else None
    defined = getattr(value, "__module__", None)
    if isinstance(defined, str):
        hits |= {name for name in forbidden if defined == name or defined.startswith(name + ".")}
    return {dotted} if hits else set()


def notes(nb: nbformat.NotebookNode, exercise: Exercise, checks_at: dict) -> list[str]:
    """The report's notes on a prepared notebook (its check cells are the instructor's, and skipped)."""
    out = []
    skip = set(checks_at)
    for index, names in tampering(nb, skip).items():
        out.append(f"cell {index} replaces {', '.join(names)}; the checks do not rely on what a notebook changes "
                   "there (they run outside its kernel), but the cell is worth a look")  # fmt: skip
    for index, what in hooks(nb, skip).items():
        out.append(f"cell {index} {'; '.join(what)}: worth a look")
    for index, names in policy_references(nb, exercise, skip).items():
        out.append(f"cell {index} refers to {', '.join(names)}, which this exercise's functions may not call "
                   "(a check that finds one called fails)")  # fmt: skip
    return out
