"""What an exercise allows your code to call, and the tripwires that enforce it.

Where the task is to implement X yourself, calling a library's X is not a solution. Each check module
declares, next to its checks, a :class:`Policy`: the names your function must not call. While a check
runs your code, those names are replaced by *tripwires*: a call to one of them fails the check with a
message naming it. Anything else (tensor operations, ``torch.linalg``, your own functions from the
notebook) stays allowed.

A name in a policy is a dotted path to a class or a function, or ``package.module.*`` for everything a
module defines. A class forbids the functions of the module named after it too (``torch.optim.RMSprop``
forbids ``torch.optim.rmsprop.rmsprop``, its functional form). A tripwire catches a call however the
name was reached: a class is disarmed in place (its methods, ``__init__`` included, so that an alias, a
subclass or an instance made earlier trips too), a Python function has its code swapped, and a package
that is not imported yet cannot be imported during the call.
"""

from __future__ import annotations

import importlib.abc
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

__all__ = ["Policy", "DelegationError", "policy", "policy_for", "tripwires", "POLICIES"]


@dataclass(frozen=True)
class Policy:
    """The checks it applies to, the names their functions must not call, and why."""

    checks: tuple[str, ...]
    forbid: tuple[str, ...]
    reason: str = ""

    def describe(self) -> str:
        """One sentence for the student notebook."""
        names = ", ".join(f"`{name}`" for name in self.forbid)
        return f"may not call {names}: {self.reason}" if self.forbid else "may call anything"


POLICIES: dict[str, Policy] = {}


def policy(*checks: str, forbid: tuple[str, ...] = (), reason: str = "") -> Policy:
    """Declare (and register) the policy of ``checks``."""
    declared = Policy(tuple(checks), tuple(forbid), reason)
    for check in checks:
        POLICIES[check] = declared
    return declared


def policy_for(check: str) -> Policy:
    """The policy of ``check`` (nothing forbidden when none was declared)."""
    return POLICIES.get(check) or Policy((check,), ())


class DelegationError(Exception):
    """Raised by a tripwire: the student's code called something its exercise does not allow."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not allowed here")
        self.name = name


_HITS: list[list[str]] = []  # one list per active tripwires() block


def _tripped(name: str) -> None:
    if _HITS:
        _HITS[-1].append(name)
    raise DelegationError(name)


def _tripwire(name: str) -> types.FunctionType:
    def tripwire(*args, **kwargs):
        _tripped(name)

    tripwire.__qualname__ = tripwire.__name__ = f"tripwire[{name}]"
    return tripwire


def _tripwire_code(name: str) -> types.CodeType:
    """A code object that trips, for swapping into a function; it imports this module by name, since it
    runs with the globals of the function it replaces."""
    namespace: dict = {}
    exec(
        f"def tripwire(*args, **kwargs):\n    import course_lib.checks._policy as policy\n    policy._tripped({name!r})\n",
        namespace,
    )
    return namespace["tripwire"].__code__


# Methods left alone on a disarmed class: what printing, copying or comparing an instance needs.
_KEEP = {"__repr__", "__str__", "__getstate__", "__setstate__", "__init_subclass__", "__class_getitem__",
         "__eq__", "__hash__", "__reduce__", "__reduce_ex__", "__sizeof__", "__dir__", "__format__"}  # fmt: skip


class _ImportGuard(importlib.abc.MetaPathFinder):
    """Refuses to import the forbidden modules that were not imported before the call."""

    def __init__(self, modules: dict[str, str]) -> None:
        self.modules = modules  # module name -> the forbidden name it stands for

    def find_spec(self, fullname, path=None, target=None):
        for module, name in self.modules.items():
            if fullname == module or fullname.startswith(module + "."):
                _tripped(name)
        return None


def _lookup(dotted: str) -> tuple[object | None, str | None]:
    """(object, None) for a dotted name whose module is imported, else (None, module to guard)."""
    dotted = dotted[:-2] if dotted.endswith(".*") else dotted
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is None:
            continue
        value: object = module
        for j, attribute in enumerate(parts[i:], start=i):
            value = getattr(value, attribute, None)
            if value is None:
                return None, ".".join(parts[: j + 1])
        return value, None
    return None, parts[0]


class _Patches:
    """Reversible assignments."""

    def __init__(self) -> None:
        self.undo: list = []

    def setattr(self, owner: object, name: str, value: object) -> None:
        if isinstance(owner, type) and name in owner.__dict__:
            old = owner.__dict__[name]
            self.undo.append(lambda: setattr(owner, name, old))
        elif isinstance(owner, type):
            self.undo.append(lambda: delattr(owner, name))
        else:
            old = getattr(owner, name)
            self.undo.append(lambda: setattr(owner, name, old))
        setattr(owner, name, value)

    def setitem(self, mapping: dict, key: str, value: object) -> None:
        old = mapping[key]
        self.undo.append(lambda: mapping.__setitem__(key, old))
        mapping[key] = value

    def code(self, function: types.FunctionType, code: types.CodeType) -> None:
        old = function.__code__
        self.undo.append(lambda: setattr(function, "__code__", old))
        function.__code__ = code

    def restore(self) -> None:
        while self.undo:
            self.undo.pop()()


def _user_namespaces() -> list[dict]:
    """The notebook's globals, where ``from module import name`` put its own binding."""
    spaces = []
    main = sys.modules.get("__main__")
    if main is not None:
        spaces.append(vars(main))
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and all(shell.user_ns is not space for space in spaces):
        spaces.append(shell.user_ns)
    return spaces


def _disarm(value: object, name: str, patches: _Patches, done: set[int]) -> None:
    if id(value) in done:
        return
    done.add(id(value))
    if isinstance(value, types.ModuleType):
        for attribute, member in list(vars(value).items()):
            if getattr(member, "__module__", None) == value.__name__ and isinstance(member, (type, types.FunctionType)):
                _disarm(member, f"{name}.{attribute}", patches, done)
        return
    if isinstance(value, type):
        for attribute, member in list(vars(value).items()):
            if attribute in _KEEP or not isinstance(member, (types.FunctionType, staticmethod, classmethod)):
                continue
            wire = _tripwire(name)
            if isinstance(member, staticmethod):
                wire = staticmethod(wire)
            elif isinstance(member, classmethod):
                wire = classmethod(wire)
            patches.setattr(value, attribute, wire)
        if "__init__" not in vars(value):
            patches.setattr(value, "__init__", _tripwire(name))
        module = sys.modules.get(value.__module__)
        if module is not None and value.__module__.rsplit(".", 1)[-1].lstrip("_").lower() == value.__name__.lower():
            for attribute, member in list(vars(module).items()):  # its functional form
                if isinstance(member, types.FunctionType) and member.__module__ == module.__name__:
                    _disarm(member, name, patches, done)
        return
    if isinstance(value, types.FunctionType) and not value.__code__.co_freevars:
        patches.code(value, _tripwire_code(name))
        return
    # a wrapper with a closure, or a builtin: rebind it where it is found by name
    wire = _tripwire(name)
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    owners = [vars(module)] if module is not None else []
    owners += [vars(m) for m in (sys.modules.get(name.rpartition(".")[0]),) if m is not None]
    for space in owners + _user_namespaces():
        for key, member in list(space.items()):
            if member is value:
                patches.setitem(space, key, wire)


@contextmanager
def tripwires(forbid: tuple[str, ...] | list[str]) -> Iterator[list[str]]:
    """Replace the names in ``forbid`` by tripwires for the duration of the block; yields the list of
    names that tripped (a student's ``except`` cannot hide a call: the list remembers it)."""
    hits: list[str] = []
    patches = _Patches()
    guard = None
    _HITS.append(hits)
    try:
        done: set[int] = set()
        missing: dict[str, str] = {}
        for name in forbid:
            value, module = _lookup(name)
            if value is not None:
                _disarm(value, name, patches, done)
            elif module is not None:
                missing[module] = name
        if missing:
            guard = _ImportGuard(missing)
            sys.meta_path.insert(0, guard)
        yield hits
    finally:
        if guard is not None and guard in sys.meta_path:
            sys.meta_path.remove(guard)
        patches.restore()
        _HITS.remove(hits)
