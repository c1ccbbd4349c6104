"""What the grader installs in a student's kernel: a server that calls the student's code for a check.

This file is not imported by the grader. Its source is executed in each kernel before the first cell
(an IPython startup file) and becomes the module ``_course_grading_kernel``. It

- warms the kernel up (torch, the checks, an optimizer step) outside any cell's time limit;
- keeps the repository out of the kernel's imports (an editable install's finder is removed);
- answers the grader's requests, which arrive as user expressions (never as cell code, so the
  notebook's input transformers do not see them): ``serve(payload)`` calls the student's function,
  or runs one of the checks' probes on it, under the exercise's delegation policy, and returns the
  result as JSON (tensors as lists of numbers, the student's exceptions as data);
- lists the hooks a notebook installed (``hooks()``), for the report.

Nothing here decides a grade: the check, its reference values and its verdict stay in the grader's
process, which only reads plain data from this side.
"""

import base64
import importlib
import io
import json
import sys

_LIMIT = 10_000_000  # numbers in one answer


def start():
    """Run once when the kernel starts."""
    _hide_the_repository()
    try:
        import torch

        import course_lib.checks  # noqa: F401  (the probes and the policies)

        param = torch.zeros(1, requires_grad=True)
        param.grad = torch.zeros(1)
        torch.optim.SGD([param], lr=0.1).step()  # imports what an optimizer's first step needs
    except Exception:  # the notebook's own cells will report it
        pass


def _hide_the_repository():
    """Take an editable install's way into the repository out of this kernel's imports.

    setuptools' editable installs put a finder class (and, for namespace packages, a path hook) from a
    module named ``__editable__...`` on the import machinery; older ones put the repository itself on
    ``sys.path``. Either would make ``import course_grading`` work and lead to ``exercises/solutions/``.
    """
    import os

    def editable(obj):
        return str(getattr(obj, "__module__", None) or "").startswith("__editable__")

    def a_repository(entry):
        return any(os.path.isdir(os.path.join(entry or ".", *parts)) for parts in (("course_grading",),
                                                                                 ("exercises", "solutions")))

    sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
    sys.path[:] = [entry for entry in sys.path if not a_repository(entry)]
    sys.path_importer_cache.clear()
    for name in [m for m in sys.modules if m.split(".")[0] == "course_grading" or m.startswith("__editable__")]:
        del sys.modules[name]


class _Encoder:
    """Plain data from what the student's code returned; tensors that are parameters or buffers of a
    module passed in become references, so that identities survive the trip."""

    def __init__(self, refs):
        self.refs = refs
        self.count = 0

    def __call__(self, value, depth=0):
        import torch

        if depth > 40:
            raise ValueError("the answer is nested too deeply")
        self.count += 1
        if value is None or isinstance(value, (bool, str)):
            return value if not isinstance(value, str) else str(value)[:100_000]
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, torch.Tensor):
            if id(value) in self.refs:
                return {"__ref__": self.refs[id(value)]}
            with torch._C.DisableTorchFunctionSubclass():
                tensor = value.detach()
            tensor = tensor.as_subclass(torch.Tensor) if type(tensor) is not torch.Tensor else tensor
            if tensor.is_complex() or tensor.layout != torch.strided or tensor.numel() > _LIMIT:
                return self.opaque(value)
            self.count += tensor.numel()
            data = tensor.cpu().reshape(-1).tolist()
            return {"__tensor__": [str(tensor.dtype).replace("torch.", ""), list(tensor.shape), data]}
        if isinstance(value, tuple):
            return {"__tuple__": [self(v, depth + 1) for v in value]}
        if isinstance(value, list):
            return {"__list__": [self(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            return {"__dict__": [[self(k, depth + 1), self(v, depth + 1)] for k, v in value.items()]}
        return self.opaque(value)

    @staticmethod
    def opaque(value):
        try:
            text = repr(value)[:300]
        except Exception:
            text = "(no repr)"
        return {"__object__": [type(value).__name__, text]}


def _references(args, kwargs):
    """id of every parameter and buffer of the modules passed in -> where the grader finds its own."""
    import torch

    refs = {}
    places = [("arg", i, a) for i, a in enumerate(args)] + [("kwarg", k, a) for k, a in kwargs.items()]
    for kind, key, value in places:
        if isinstance(value, torch.nn.Module):
            for name, tensor in [*value.named_parameters(remove_duplicate=False), *value.named_buffers()]:
                refs.setdefault(id(tensor), [kind, key, name])
    return refs


def _module_state(module, encode):
    """What a call may have changed in a module passed in: its parameters (values, dtypes, gradients,
    requires_grad), buffers and train/eval mode."""
    params = [[name, encode(p.detach()), None if p.grad is None else encode(p.grad.detach()), bool(p.requires_grad)]
              for name, p in module.named_parameters(remove_duplicate=False)]  # fmt: skip
    buffers = [[name, encode(b.detach())] for name, b in module.named_buffers()]
    return {"params": params, "buffers": buffers, "training": bool(module.training)}


def _resolve_probe(name):
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith("course_lib.checks."):
        raise ValueError(f"not a probe of the checks: {name}")
    value = importlib.import_module(module_name)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def _reply(answer):
    return base64.b64encode(json.dumps(answer).encode()).decode()


def serve(payload):
    """Answer one request of the grader (see the module's docstring)."""
    import torch

    from course_lib.checks._core import Student, StudentRaised
    from course_lib.checks._policy import Policy

    request = json.loads(base64.b64decode(payload))
    shell = sys.modules["IPython"].get_ipython()
    try:
        target = eval(request["target"], shell.user_ns)
    except Exception as error:
        return _reply({"missing": [type(error).__name__, str(error)[:1000]]})
    if request["op"] == "resolve":
        return _reply({"ok": {"callable": callable(target), "type": type(target).__name__}})
    args, kwargs, grads = torch.load(io.BytesIO(base64.b64decode(request["args"])), weights_only=False)
    for where, named in grads.items():  # pickling leaves a parameter's gradient behind
        kind, _, key = where.partition(":")
        module = args[int(key)] if kind == "arg" else kwargs[key]
        params = dict(module.named_parameters(remove_duplicate=False))
        for name, grad in named.items():
            params[name].grad = grad
    student = Student(Policy(tuple(request["checks"]), tuple(request["forbid"]), request["reason"]))
    refs = _references(args, kwargs)
    encode = _Encoder(refs)
    try:
        if request["op"] == "each":
            results = []
            for index, (a, k) in enumerate(args):
                try:
                    results.append(student(request["phase"], target, *a, **k))
                except StudentRaised as error:
                    error.index = index
                    raise
            answer = {"ok": encode(results)}
        elif request["probe"]:
            answer = {"ok": encode(_resolve_probe(request["probe"])(target, student, *args, **kwargs))}
        else:
            answer = {"ok": encode(student(request["phase"], target, *args, **kwargs))}
            sync = {}
            for kind, key, value in [("arg", i, a) for i, a in enumerate(args)] + [("kwarg", k, a) for k, a in kwargs.items()]:
                if isinstance(value, torch.nn.Module):
                    sync[f"{kind}:{key}"] = _module_state(value, encode)
            answer["sync"] = sync
    except StudentRaised as error:
        answer = {"raised": error.to_dict()}
    except Exception as error:  # the probe itself failed on what the student's code left behind
        answer = {"raised": {"phase": request["phase"], "type_name": type(error).__name__,
                             "message": str(error)[:2000], "where": "", "delegated": "", "index": None}}  # fmt: skip
    if encode.count > _LIMIT:
        answer = {"raised": {"phase": request["phase"], "type_name": "ValueError", "message": "the answer is too large",
                             "where": "", "delegated": "", "index": None}}  # fmt: skip
    return _reply(answer)


def hooks():
    """The hooks this kernel has that can hide errors or rewrite code (for the report); JSON text."""
    found = []
    shell = sys.modules["IPython"].get_ipython()
    if shell.custom_exceptions:
        found.append("a custom exception handler (set_custom_exc)")
    for name in ("showtraceback", "showsyntaxerror", "_showtraceback", "run_cell", "run_code", "transform_cell"):
        bound = getattr(shell, name, None)
        module = getattr(getattr(bound, "__func__", bound), "__module__", "") or ""
        if not module.startswith(("IPython.", "ipykernel.")):
            found.append(f"a replaced {name}")
    manager = shell.input_transformer_manager
    added = [t for t in [*getattr(shell, "input_transformers_post", []), *manager.cleanup_transforms,
                         *manager.line_transforms, *getattr(manager, "token_transformers", [])]
             if not (getattr(t, "__module__", "") or "").startswith("IPython.")]  # fmt: skip
    if added:
        found.append(f"input transformers ({', '.join(getattr(t, '__name__', type(t).__name__) for t in added)})")
    if shell.ast_transformers:
        found.append(f"AST transformers ({len(shell.ast_transformers)})")
    if sys.excepthook is not sys.__excepthook__ and type(sys.excepthook).__module__ == "__main__":
        found.append("a replaced sys.excepthook")
    if sys.gettrace() is not None or sys.getprofile() is not None:
        found.append("a trace or profile function")
    callbacks = {event: [c for c in shell.events.callbacks[event] if getattr(c, "__module__", "") == "__main__"]
                 for event in shell.events.callbacks}  # fmt: skip
    for event, registered in callbacks.items():
        if registered:
            found.append(f"a callback on the {event} event")
    if "_course_grading_kernel" in vars(shell.user_module) or any(
        getattr(v, "__name__", "") == "_course_grading_kernel" for v in list(shell.user_ns.values())
    ):
        found.append("a reference to the grader's kernel module")
    return json.dumps(found)
