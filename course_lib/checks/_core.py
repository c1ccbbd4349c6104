"""What every check shares: random trials, calling the student's code safely, and clear feedback.

A check calls the student's function on freshly drawn random inputs, compares what comes back with an
independent reference (``torch.optim`` or a closed form), and either prints one line saying it passed
or raises :class:`CheckFailed` with what was expected, what came back and on which input. Inputs are
drawn from a new seed on every run, so a hard-coded answer cannot pass; the seed is printed on failure
so the same inputs can be drawn again with ``seed=...``.

A check runs in the student's kernel, after the student's code. So that code cannot change a verdict
by replacing a public function (``torch.allclose = lambda *a, **k: True``), the comparisons here use
references taken from PyTorch's C bindings, whose attributes cannot be reassigned, and plain float
arithmetic instead of ``math.isclose``; and every check refuses to start or to pass while a function
it relies on (a comparison, an oracle in ``torch.optim`` or ``course_lib``) has been replaced by one
defined in the notebook.
"""

from __future__ import annotations

import math
import secrets
import sys
import traceback
import types
from typing import Any, Callable, Iterator, Mapping

import torch

__all__ = ["DTYPE", "CheckFailed", "Trials", "describe", "passed"]

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
    ``__main__``) that sits in ``torch``, ``torch.optim``, ``torch.optim.lr_scheduler``,
    ``torch.nn.functional``, ``torch.linalg``, ``math`` or a module of ``course_lib``, or in the class
    of an optimizer or scheduler there.
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
        for name, value in list(namespace.items()):
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
        """Call the student's ``fn``; an exception it raises becomes feedback naming the input.

        ``inputs`` is :func:`describe`'s text. ``KeyboardInterrupt`` (a timeout, the stop button)
        is not caught.
        """
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # the student's code may raise anything
            frames = traceback.extract_tb(error.__traceback__)[1:]
            where = ""
            if frames:
                where = f"\nIt was raised at line {frames[-1].lineno}: {(frames[-1].line or '').strip()}"
            raise self.fail(f"{name} raised {type(error).__name__}: {error}{where}\non input\n{inputs}") from None

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
