"""The grader's handle on a student's function: checks run here and call it in the kernel.

A check is given a :class:`RemoteFunction` instead of the student's function. Each call the check makes
(``run.call``, ``run.call_each``, ``run.probe``) is sent to the kernel as a user expression; the kernel
calls the student's code under the exercise's policy and answers with plain data (see
:mod:`._kernel_side`), which :func:`decode` turns back into numbers, tensors, lists and dicts, never
into code. The reference values, the comparison and the verdict stay in this process: a kernel can only
return what the student's function computed, or fail.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any, Callable

import torch

from course_lib.checks._core import Remote, StudentRaised
from course_lib.checks._policy import Policy

from .kernel import Kernel

__all__ = ["RemoteFunction", "CallTimedOut", "KernelGone", "decode"]

_DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool)}  # fmt: skip
_MAX_ANSWER = 200_000_000  # characters


class CallTimedOut(BaseException):
    """The check ran past its time limit while the student's code ran (``killed``: the kernel did not stop
    when interrupted and was killed). A BaseException, so that no check catches it."""

    def __init__(self, killed: bool) -> None:
        super().__init__("timed out")
        self.killed = killed


class KernelGone(BaseException):
    """The kernel died while the student's code ran."""


class _Opaque:
    """Stands for an object that does not travel (a module, an optimizer, ...): its type name and repr."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


def _opaque(type_name: str, text: str) -> _Opaque:
    name = "".join(c for c in str(type_name) if c.isalnum() or c == "_")[:80] or "object"
    return type(name, (_Opaque,), {})(str(text)[:300])


def decode(data: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
    """Plain values from the kernel's JSON answer; references are resolved to the parameters and buffers
    of the modules in ``args`` and ``kwargs`` (the grader's own copies)."""
    kwargs = kwargs or {}
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list) or not isinstance(data, dict) or len(data) != 1:
        raise ValueError("malformed answer from the kernel")
    (tag, body), = data.items()
    if tag == "__tensor__":
        dtype_name, shape, values = body
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            return _opaque("Tensor", f"a tensor of dtype {dtype_name}")
        shape = [int(n) for n in shape]
        return torch.tensor(values, dtype=torch.float64 if dtype.is_floating_point else None).to(dtype).reshape(shape)
    if tag == "__tuple__":
        return tuple(decode(v, args, kwargs) for v in body)
    if tag == "__list__":
        return [decode(v, args, kwargs) for v in body]
    if tag == "__dict__":
        return {_key(decode(k, args, kwargs)): decode(v, args, kwargs) for k, v in body}
    if tag == "__object__":
        return _opaque(*body)
    if tag == "__ref__":
        kind, key, name = body
        module = args[int(key)] if kind == "arg" else kwargs[str(key)]
        tensors = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers())
        return tensors[str(name)]
    raise ValueError(f"malformed answer from the kernel: {tag!r}")


def _key(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def _apply(module: torch.nn.Module, state: dict) -> None:
    """What the student's code did to a module in the kernel, done to the grader's copy."""
    params = dict(module.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, data, grad, requires_grad in state["params"]:
            param = params[name]
            param.data = decode(data)
            param.grad = None if grad is None else decode(grad)
            param.requires_grad_(bool(requires_grad))
        buffers = dict(module.named_buffers())
        for name, value in state["buffers"]:
            if name in buffers:
                buffers[name].data = decode(value)
    module.train(bool(state["training"]))


def _grads(args: tuple, kwargs: dict) -> dict:
    """The gradients of the parameters of the modules passed in, which pickling leaves behind."""
    grads = {}
    for where, value in [(f"arg:{i}", a) for i, a in enumerate(args)] + [(f"kwarg:{k}", a) for k, a in kwargs.items()]:
        if isinstance(value, torch.nn.Module):
            grads[where] = {name: p.grad for name, p in value.named_parameters(remove_duplicate=False)
                            if p.grad is not None}  # fmt: skip
    return grads


class RemoteFunction(Remote):
    """The student's object named ``expression`` in the kernel, callable by a check within ``deadline``
    (a ``time.monotonic()`` value)."""

    def __init__(self, kernel: Kernel, expression: str, deadline: float) -> None:
        self.kernel = kernel
        self.expression = expression
        self.__name__ = expression
        self.deadline = deadline

    def _request(self, request: dict) -> dict:
        payload = base64.b64encode(json.dumps({"target": self.expression, **request}).encode()).decode()
        timeout = max(0.5, self.deadline - time.monotonic())
        outcome, text = self.kernel.evaluate(f"__import__('_course_grading_kernel').serve({payload!r})", timeout)
        if outcome.status == "died":
            raise KernelGone()
        if outcome.status in ("timeout", "stuck"):
            raise CallTimedOut(killed=outcome.status == "stuck")
        if text is None or len(text) > _MAX_ANSWER:
            raise StudentRaised(request.get("phase", self.expression), outcome.ename or "GradingError",
                                outcome.evalue or "the kernel did not answer the grader's request")  # fmt: skip
        answer = json.loads(base64.b64decode(text))
        if not isinstance(answer, dict):
            raise ValueError("malformed answer from the kernel")
        if "missing" in answer:
            type_name, message = answer["missing"]
            raise StudentRaised(self.expression, str(type_name), str(message))
        if "raised" in answer:
            raised = answer["raised"]
            index = raised.get("index")
            raise StudentRaised(str(raised.get("phase", "")), str(raised.get("type_name", "")),
                                str(raised.get("message", "")), str(raised.get("where", "") or ""),
                                delegated=str(raised.get("delegated", "") or ""),
                                index=index if isinstance(index, int) else None)  # fmt: skip
        return answer

    def resolve(self) -> tuple[bool, str]:
        """(whether the name is callable in the kernel, its type's name); StudentRaised if it is missing."""
        answer = self._request({"op": "resolve"})
        return bool(answer["ok"]["callable"]), str(answer["ok"]["type"])

    @staticmethod
    def _policy(policy: Policy) -> dict:
        return {"forbid": list(policy.forbid), "reason": policy.reason, "checks": list(policy.checks)}

    def invoke(self, probe: Callable | None, phase: str, args: tuple, kwargs: dict, policy: Policy) -> Any:
        buffer = io.BytesIO()
        torch.save((args, kwargs, _grads(args, kwargs)), buffer)
        request = {"op": "call", "phase": phase, "args": base64.b64encode(buffer.getvalue()).decode(),
                   "probe": f"{probe.__module__}:{probe.__qualname__}" if probe else None, **self._policy(policy)}  # fmt: skip
        answer = self._request(request)
        result = decode(answer["ok"], args, kwargs)
        for where, state in (answer.get("sync") or {}).items():
            kind, _, key = where.partition(":")
            module = args[int(key)] if kind == "arg" else kwargs[key]
            _apply(module, state)
        return result

    def invoke_each(self, phase: str, calls: list[tuple[tuple, dict]], policy: Policy) -> list[Any]:
        buffer = io.BytesIO()
        torch.save((calls, {}, {}), buffer)
        request = {"op": "each", "phase": phase, "args": base64.b64encode(buffer.getvalue()).decode(), "probe": None,
                   **self._policy(policy)}  # fmt: skip
        results = decode(self._request(request)["ok"])
        if not isinstance(results, list) or len(results) != len(calls):
            raise StudentRaised(phase, "GradingError", "the kernel's answer has the wrong length")
        return results
