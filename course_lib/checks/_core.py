"""What every check shares: random trials, calling the student's code safely, and clear feedback.

A check calls the student's function on freshly drawn random inputs, compares what comes back with an
independent reference (``torch.optim`` or a closed form), and either prints one line saying it passed
or raises :class:`CheckFailed` with what was expected, what came back and on which input. Inputs are
drawn from a new seed on every run, so a hard-coded answer cannot pass; the seed is printed on failure
so the same inputs can be drawn again with ``seed=...``.

Every call of the student's code goes through :meth:`Trials.call` (a function called with arguments)
or :meth:`Trials.probe` (a small scenario, defined next to its check, that drives a class or an object
of the student's and returns what it observed). Both run the student's code under the exercise's
delegation policy (:mod:`course_lib.checks._policy`). When a grader passes a :class:`Remote` handle
instead of the function itself, the check runs in the grader's own process and these two methods send
the call to the student's kernel and bring back plain values: the reference, the comparison and the
verdict never enter the process that runs the student's code.

In a student's own notebook the check runs in the notebook's process. So that code there cannot
change a verdict by replacing a public function (``torch.allclose = lambda *a, **k: True``), the
comparisons use references taken from PyTorch's C bindings, whose attributes cannot be reassigned, and
plain float arithmetic instead of ``math.isclose``; and every check refuses to start or to pass while a
function it relies on (a comparison, an oracle in ``torch.optim`` or ``course_lib``) has been replaced
by one defined in the notebook. Adding a name of one's own to ``torch.optim`` (registering a class) is
not replacing one.
"""

from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
import sys
import traceback
import types
from typing import Any, Callable, Iterator, Mapping

import torch

from ._policy import DelegationError, Policy, policy_for, tripwires

__all__ = ["DTYPE", "CheckFailed", "Remote", "Student", "StudentRaised", "Trials", "describe", "passed"]

DTYPE = torch.float64

# Private references to the comparisons, from C-level namespaces whose attributes are read-only:
# ``torch.allclose = ...`` in a notebook rebinds the public name, not these, even when this module is
# loaded after that line ran (the grader loads the checks afresh in every check cell).
_FUNCTIONS = torch._C._VariableFunctions
_TENSOR_BASE = torch._C.TensorBase
_ALLCLOSE = _FUNCTIONS.allclose
_NO_SUBCLASS_OVERRIDES = torch._C.DisableTorchFunctionSubclass  # a Tensor subclass cannot answer for itself
_INF = float("inf")


def _isclose(a: float, b: float, rel_tol: float, abs_tol: float) -> bool:
    """``math.isclose`` in plain float arithmetic, which no assignment in a notebook can change."""
    if a == b:
        return True
    if a != a or b != b or a in (_INF, -_INF) or b in (_INF, -_INF):  # nan, or an infinity unequal to b
        return False
    diff = a - b if a > b else b - a
    return diff <= rel_tol * (b if b > 0 else -b) or diff <= rel_tol * (a if a > 0 else -a) or diff <= abs_tol


def _tensors_close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> bool:
    with _NO_SUBCLASS_OVERRIDES():
        return bool(_ALLCLOSE(got, expected, rtol=rtol, atol=atol))


def _replaced() -> list[str]:
    """Public functions the checks rely on that are no longer the originals.

    Exact for the comparisons (``torch.allclose``, ``torch.equal``, ``torch.isclose``, the same methods
    of ``torch.Tensor``, ``math.isclose``); for the oracles, anything defined in the notebook (module
    ``__main__``) that took the place of a name that ``torch``, ``torch.optim``,
    ``torch.optim.lr_scheduler``, ``torch.nn.functional``, ``torch.linalg``, ``math`` or a module of
    ``course_lib`` had when the checks were imported, or of a method of an optimizer or scheduler there.
    A name the notebook added (``torch.optim.Lion = Lion``) replaces nothing and is not listed.
    """
    found = []
    for name in ("allclose", "equal", "isclose"):
        if getattr(torch, name, None) is not getattr(_FUNCTIONS, name):
            found.append(f"torch.{name}")
        if getattr(torch.Tensor, name, None) is not getattr(_TENSOR_BASE, name):
            found.append(f"torch.Tensor.{name}")
    isclose = getattr(math, "isclose", None)
    if not (type(isclose) is types.BuiltinFunctionType and isclose.__name__ == "isclose" and isclose.__self__ is math):
        found.append("math.isclose")
    for label, namespace in _namespaces():
        original = _ORIGINAL_NAMES.get(label)
        for name, value in list(namespace.items()):
            if original is not None and name not in original:
                continue  # added by the notebook: it replaces nothing the checks use
            if getattr(value, "__module__", None) == "__main__" and f"{label}.{name}" not in found:
                found.append(f"{label}.{name}")
    return found


def _namespaces() -> Iterator[tuple[str, dict]]:
    modules = [torch, torch.optim, torch.optim.lr_scheduler, torch.nn.functional, torch.linalg, math]
    modules += [
        module
        for name, module in list(sys.modules.items())
        if name.split(".")[0] == "course_lib" and isinstance(module, types.ModuleType)
    ]
    for module in modules:
        yield module.__name__, vars(module)
    yield "torch.Tensor", dict(vars(torch.Tensor))
    for module in (torch.optim, torch.optim.lr_scheduler):
        for name, value in list(vars(module).items()):
            if isinstance(value, type) and value.__module__.startswith("torch."):
                yield f"{module.__name__}.{name}", dict(vars(value))


_ORIGINAL_NAMES: dict[str, frozenset[str]] = {label: frozenset(space) for label, space in _namespaces()}


def _require_originals(check: str) -> None:
    """Raise :class:`CheckFailed` if code in the notebook replaced a function the checks rely on."""
    replaced = _replaced()
    if replaced:
        were = "was" if len(replaced) == 1 else "were"
        raise CheckFailed(
            check,
            f"{', '.join(replaced)} {were} replaced by code in this notebook. The checks compare your "
            "functions with PyTorch's own and cannot be trusted while that is so: remove the assignment "
            "and restart the kernel.",
        )


class CheckFailed(AssertionError):
    """A check found a difference between the student's code and the reference.

    The message says what was expected, what came back, and on which input. In Jupyter only the
    message is shown, not a traceback through the grading code.
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback.
        return [f"\u2717 check {self.check} failed", *self.message.splitlines()]


def describe(**inputs: Any) -> str:
    """The inputs of a call, one per line; tensors are written out (they are small)."""
    return "\n".join(
        f"  {name} = {_format_tensor(value) if isinstance(value, torch.Tensor) else repr(value)}"
        for name, value in inputs.items()
    )


def _format_tensor(value: torch.Tensor) -> str:
    values = value.detach().to(DTYPE).flatten().tolist()
    shown = ", ".join(f"{v:.6g}" for v in values[:12])
    more = ", ..." if len(values) > 12 else ""
    return f"tensor([{shown}{more}], shape={tuple(value.shape)}, dtype={value.dtype})"


def passed(check: str, detail: str) -> None:
    """Print the one line that says a check passed, unless a function the checks rely on was replaced
    while the check ran (then raise :class:`CheckFailed`)."""
    _require_originals(check)
    print(f"\u2713 {check} passed: {detail}")


class StudentRaised(Exception):
    """An exception from the student's code, as a check reports it: during which ``phase`` (the function
    or method called), its type's name, its message, and where it was raised; or, with ``delegated``, the
    forbidden name it called. ``index`` numbers the call in :meth:`Trials.call_each`."""

    def __init__(self, phase: str, type_name: str, message: str, where: str = "", *,
                 delegated: str = "", index: int | None = None) -> None:  # fmt: skip
        super().__init__(f"{phase} raised {type_name}: {message}")
        self.phase, self.type_name, self.message, self.where = phase, type_name, message, where
        self.delegated, self.index = delegated, index

    @classmethod
    def from_exception(cls, phase: str, error: BaseException) -> "StudentRaised":
        frames = traceback.extract_tb(error.__traceback__)[1:]  # the first is Student.__call__
        where = f"\nIt was raised at line {frames[-1].lineno}: {(frames[-1].line or '').strip()}" if frames else ""
        try:
            message = str(error)
        except Exception:  # a student's exception whose __str__ fails
            message = "(its message could not be shown)"
        return cls(phase, type(error).__name__, message[:2000], where)

    def to_dict(self) -> dict:
        return {"phase": self.phase, "type_name": self.type_name, "message": self.message, "where": self.where,
                "delegated": self.delegated, "index": self.index}  # fmt: skip


class Student:
    """Calls the student's code under an exercise's policy: ``student(phase, fn, *args, **kwargs)``.

    A tripwire that fires, even one whose error the student's code caught, or an exception of the
    student's, becomes :class:`StudentRaised`. ``KeyboardInterrupt`` passes through.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, phase: str, fn: Callable, *args, **kwargs) -> Any:
        with tripwires(self.policy.forbid) as hits:
            try:
                result = fn(*args, **kwargs)
            except Exception as error:  # the student's code may raise anything
                if hits or isinstance(error, DelegationError):
                    raise StudentRaised(phase, "DelegationError", "", delegated=(hits or [error.name])[0]) from None
                raise StudentRaised.from_exception(phase, error) from None
            if hits:
                raise StudentRaised(phase, "DelegationError", "", delegated=hits[0])
        return result


class Remote(ABC):
    """Base of a grader's handle on a function or class that lives in another process (the student's
    kernel). A check given one sends each call there (:meth:`invoke`) and keeps everything else, the
    reference values and the verdict, in its own process. The grader implements it
    (:class:`course_grading.remote.RemoteFunction`); the checks need only this interface."""

    __name__ = "your_function"

    def __call__(self, *args, **kwargs) -> Any:
        return self.invoke(None, self.__name__, args, kwargs, policy_for(""))

    @abstractmethod
    def invoke(self, probe: Callable | None, phase: str, args: tuple, kwargs: dict, policy: Policy) -> Any:
        """``fn(*args, **kwargs)``, or ``probe(fn, student, *args, **kwargs)``, run where ``fn`` lives;
        raise :class:`StudentRaised` for an exception of the student's code."""

    @abstractmethod
    def invoke_each(self, phase: str, calls: list[tuple[tuple, dict]], policy: Policy) -> list[Any]:
        """``[fn(*args, **kwargs) for args, kwargs in calls]`` in one round trip."""


class Trials:
    """Random draws and feedback for one run of one check.

    ``Trials("rmsprop_step", fn, seed=None, n=5)`` iterates over trial numbers ``0..n-1``. The seed is
    fresh on every run unless given; its methods draw hyperparameters and tensors from one generator,
    so the seed reproduces the whole run, and every failure message ends with the call that does so.
    """

    def __init__(self, check: str, fn: Callable, seed: int | None, n: int) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or a non-negative int, got {seed!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"trials must be a positive int, got {n!r}")
        _require_originals(check)
        self.check = check
        self.fn_name = getattr(fn, "__name__", "your_function")
        self.seed = secrets.randbelow(2**31) if seed is None else seed
        self.n = n
        self.generator = torch.Generator().manual_seed(self.seed)
        self.policy: Policy = policy_for(check)
        if not callable(fn):
            raise self.fail(f"expected your function, but got a {type(fn).__name__}: {fn!r:.200}")

    def __iter__(self):
        return iter(range(self.n))

    # ----- random draws -------------------------------------------------------------------------

    def uniform(self, low: float, high: float) -> float:
        """A float drawn uniformly from ``[low, high]``."""
        return low + (high - low) * torch.rand((), generator=self.generator, dtype=DTYPE).item()

    def log_uniform(self, low: float, high: float) -> float:
        """A float whose logarithm is uniform: each order of magnitude in ``[low, high]`` equally likely."""
        return math.exp(self.uniform(math.log(low), math.log(high)))

    def integer(self, low: int, high: int) -> int:
        """An int drawn uniformly from ``low..high`` (both included)."""
        return int(torch.randint(low, high + 1, (), generator=self.generator).item())

    def normal(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        """A float64 tensor of standard normal draws times ``scale``."""
        return scale * torch.randn(shape, generator=self.generator, dtype=DTYPE)

    def mixed_scale(self, *shape: int, low: float = 1e-3, high: float = 10.0) -> torch.Tensor:
        """Normal draws whose magnitudes span ``[low, high]`` entry by entry (log-uniform scale)."""
        log_scale = math.log(low) + (math.log(high) - math.log(low)) * torch.rand(
            shape, generator=self.generator, dtype=DTYPE
        )
        return torch.randn(shape, generator=self.generator, dtype=DTYPE) * log_scale.exp()

    def shape(self) -> tuple[int, ...]:
        """A small tensor shape: a vector of 3 to 8 entries or a matrix with 2 to 4 rows and columns."""
        if self.integer(0, 1):
            return (self.integer(3, 8),)
        return (self.integer(2, 4), self.integer(2, 4))

    # ----- feedback -----------------------------------------------------------------------------

    def fail(self, message: str) -> CheckFailed:
        """A :class:`CheckFailed` whose message ends with the seed and the call that reproduces the run."""
        return CheckFailed(
            self.check,
            f"{message}\n(random seed {self.seed}: checks.{self.check}({self.fn_name}, seed={self.seed}) "
            "draws the same inputs again)",
        )

    def call(self, fn: Callable, name: str, inputs: str, *args, **kwargs) -> Any:
        """Call the student's ``fn(*args, **kwargs)``; an exception it raises, or a call to something its
        exercise does not allow, becomes feedback naming the input.

        ``inputs`` is :func:`describe`'s text. ``KeyboardInterrupt`` (a timeout, the stop button)
        is not caught.
        """
        return self._invoke(None, fn, name, inputs, args, kwargs)

    def call_each(self, fn: Callable, name: str, calls: list[tuple[str, tuple, dict]]) -> list[Any]:
        """``[fn(*args, **kwargs) for (inputs, args, kwargs) in calls]``, in order, in one go (one round
        trip when ``fn`` lives in another process). Inputs must not depend on earlier results."""
        if not isinstance(fn, Remote):
            return [self.call(fn, name, inputs, *args, **kwargs) for inputs, args, kwargs in calls]
        try:
            return fn.invoke_each(name, [(args, kwargs) for _, args, kwargs in calls], self.policy)
        except StudentRaised as error:
            index = error.index if error.index is not None else 0
            raise self._raised(error, calls[index][0]) from None

    def probe(self, probe: Callable, fn: Callable, name: str, inputs: str, *args, **kwargs) -> Any:
        """Run ``probe(fn, student, *args, **kwargs)`` next to the student's code and return what it
        observed: plain values (numbers, strings, tensors, lists, tuples and dicts of them).

        A probe is a module-level function of a check module that drives the student's class or object
        through a scenario; it calls the student's code only as ``student(phase, callable, *args)``, so
        that an exception names its phase and the exercise's policy applies. Arguments must be picklable.
        """
        return self._invoke(probe, fn, name, inputs, args, kwargs)

    def _invoke(self, probe: Callable | None, fn: Callable, name: str, inputs: str, args: tuple, kwargs: dict) -> Any:
        try:
            if isinstance(fn, Remote):
                return fn.invoke(probe, name, args, kwargs, self.policy)
            student = Student(self.policy)
            return student(name, fn, *args, **kwargs) if probe is None else probe(fn, student, *args, **kwargs)
        except StudentRaised as error:
            raise self._raised(error, inputs) from None

    def reraise(self, error: dict, inputs: str) -> CheckFailed:
        """The failure for an exception of the student's that a probe caught and returned as
        ``StudentRaised.to_dict()`` (so that what was observed before it can be compared first)."""
        fields = {key: str(error.get(key) or "") for key in ("phase", "type_name", "message", "where", "delegated")}
        delegated = fields.pop("delegated")
        return self._raised(StudentRaised(**fields, delegated=delegated), inputs)

    def _raised(self, error: StudentRaised, inputs: str) -> CheckFailed:
        if error.delegated:
            return self.fail(
                f"{error.phase} called {error.delegated}, which this exercise does not allow: "
                f"{self.policy.reason or 'write it yourself'}. (While a check runs, {', '.join(self.policy.forbid)} "
                f"are replaced by tripwires.)\non input\n{inputs}"
            )
        return self.fail(f"{error.phase} raised {error.type_name}: {error.message}{error.where}\non input\n{inputs}")

    def expect_tuple(self, result: Any, names: tuple[str, ...], fn_name: str) -> tuple:
        """Check that ``result`` is a tuple (or list) of ``len(names)`` values; return it as a tuple."""
        if not isinstance(result, (tuple, list)) or len(result) != len(names):
            got = f"a {type(result).__name__}"
            if isinstance(result, (tuple, list)):
                got += f" of length {len(result)}"
            raise self.fail(f"{fn_name} should return a tuple ({', '.join(names)}), but it returned {got}.")
        return tuple(result)

    def expect_tensor(
        self,
        what: str,
        got: Any,
        expected: torch.Tensor,
        inputs: str,
        *,
        rtol: float = 1e-9,
        atol: float = 1e-12,
        hints: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Check that ``got`` is a tensor of ``expected``'s shape and dtype, equal within tolerance.

        On a mismatch the message shows the entry with the largest difference, both tensors and the
        inputs. ``hints`` maps advice to the result a known mistake would give; when ``got`` matches
        one of them, its advice is added.
        """
        if not isinstance(got, torch.Tensor):
            raise self.fail(f"{what} should be a torch.Tensor, but it is a {type(got).__name__}: {got!r:.200}")
        with _NO_SUBCLASS_OVERRIDES():
            got = got.detach()  # a plain tensor: a subclass's __torch_function__ does not take part
        if tuple(got.shape) != tuple(expected.shape):
            shapes = f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
            raise self.fail(f"{what} has {shapes}, on input\n{inputs}")
        if got.dtype != expected.dtype:
            raise self.fail(
                f"{what} has dtype {got.dtype}, expected {expected.dtype} (the dtype of the inputs): build new "
                "tensors from the inputs (torch.zeros_like, arithmetic on them) rather than with a default dtype."
            )
        if _tensors_close(got, expected, rtol, atol):
            return
        error = (got - expected).abs().nan_to_num(nan=math.inf).flatten()
        worst = int(error.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), expected.shape))
        message = (
            f"{what} differs from the reference at index {index}: expected "
            f"{expected.flatten()[worst].item():.10g}, got {got.flatten()[worst].item():.10g}.\n"
            f"  expected {what} = {_format_tensor(expected)}\n"
            f"  returned {what} = {_format_tensor(got)}\n"
            f"on input\n{inputs}"
        )
        for advice, mistaken in (hints or {}).items():
            if _tensors_close(got, mistaken, rtol, atol):
                message += f"\nHint: {advice}"
                break
        raise self.fail(message)

    def expect_close(
        self,
        what: str,
        got: Any,
        expected: float,
        inputs: str,
        *,
        rtol: float = 1e-9,
        atol: float = 1e-12,
        hints: Mapping[str, float] | None = None,
    ) -> None:
        """Check that ``got`` is a real number within tolerance of ``expected`` (hints as above)."""
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            with _NO_SUBCLASS_OVERRIDES():
                got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise self.fail(f"{what} should be a number, but it is a {type(got).__name__}: {got!r:.200}")
        got = float(got)  # a plain float: a subclass's comparison operators do not take part
        if _isclose(got, expected, rtol, atol):
            return
        message = f"{what}: expected {expected:.10g}, got {got:.10g}, on input\n{inputs}"
        for advice, mistaken in (hints or {}).items():
            if _isclose(got, mistaken, rtol, atol):
                message += f"\nHint: {advice}"
                break
        raise self.fail(message)
