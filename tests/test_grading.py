"""Exercises and their grading: the checks, their policies, the notebook builder, and the grader.

The checks are tested in-process against the solutions and against plausible wrong answers (and the
same wrong answers once more through a kernel, as the grader calls them); the grader is tested end to
end once, on a batch of submissions run by the real command with its default options.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import math
import shutil
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib import checks
from course_grading.__main__ import main
from course_lib.checks import CheckFailed
from course_lib.checks._core import Trials
from course_lib.checks.ablation import reference_converged_at, reference_schedule_lrs
from course_lib.checks.large_batch import lars_reference_local_lr
from course_lib.checks.lion import lion_reference
from course_lib.checks.schedule import reference_lrs
from course_lib.schedules import WarmupCosineLR
from course_grading.exercises import POLICY_CELL_ID, build_exercises, check_tag, load_exercises
from course_grading.grader import find_submissions, prepare
from test_grading_support import grade_command, row_of, runnable_exercises, solution_notebook, student_notebook

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
SOURCES = EXERCISES / "src"
ALL = {e.name: e for e in load_exercises(SOURCES)}
SEEDS = (0, 1, 2)


# ----- helpers ----------------------------------------------------------------------------------


def definitions_source(name: str) -> str:
    """The top-level functions, classes and imports of the solution notebook of exercise ``name`` (no demo
    runs), as one block of code."""
    keep = []
    for cell in solution_notebook(name).cells:
        if cell.cell_type != "code" or cell.id.startswith("check-"):
            continue
        tree = ast.parse("\n".join(line for line in cell.source.split("\n") if not line.lstrip().startswith(("%", "!"))))
        keep += [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))]
    return ast.unparse(ast.Module(body=keep, type_ignores=[]))


def definitions(name: str) -> dict:
    """The functions and classes that the solution notebook of exercise ``name`` defines, with its imports."""
    namespace: dict = {}
    exec(compile(definitions_source(name), f"<{name}>", "exec"), namespace)
    return namespace


def run_check(check: str, fn, seed: int) -> str:
    """Run ``checks.<check>(fn, seed=seed)``; return what it printed."""
    out = io.StringIO()
    with redirect_stdout(out):
        getattr(checks, check)(fn, seed=seed)
    return out.getvalue()


def failure(check: str, fn, seed: int) -> str:
    """The message of the CheckFailed that ``checks.<check>(fn, seed=seed)`` must raise."""
    with pytest.raises(CheckFailed) as info:
        run_check(check, fn, seed)
    return str(info.value)


# ----- the checks pass the solutions ------------------------------------------------------------

SOLVED = [(e.name, spec.name) for e in ALL.values() for spec in e.checks]
CHECKED_FUNCTION = {  # check -> the name its cell passes to it
    "adam_step_uncorrected": "adam_step",
    "lion_optimizer": "Lion",
    "snapshot_model": "Snapshot",
    "snapshot_optimizer": "Snapshot",
    "eps_scheduler": "EpsScheduler",
}


@pytest.mark.parametrize("exercise, check", SOLVED, ids=[c for _, c in SOLVED])
def test_solution_passes_its_check(exercise: str, check: str):
    fn = definitions(exercise)[CHECKED_FUNCTION.get(check, check)]
    for seed in SEEDS:
        assert run_check(check, fn, seed).startswith(f"\u2713 {check} passed")


def test_every_check_cell_calls_its_check_on_the_function_tested_here():
    for exercise in ALL.values():
        cells = {c.id: c.source for c in exercise.student_notebook().cells}
        for spec in exercise.checks:
            call = f"checks.{spec.name}({CHECKED_FUNCTION.get(spec.name, spec.name)})"
            assert call in cells[spec.cell_id], (exercise.name, spec.name)


# ----- plausible wrong answers fail the check meant to catch them -------------------------------


def _rmsprop(theta, grad, v, *, lr, alpha, eps, eps_inside=False, swap=False, unsquared=False, old_v=False):
    new_v = (1 - alpha) * v + alpha * grad**2 if swap else alpha * v + (1 - alpha) * (grad if unsquared else grad**2)
    denom = (new_v + eps).sqrt() if eps_inside else (v if old_v else new_v).sqrt() + eps
    return theta - lr * grad / denom, new_v


def _adam(theta, grad, m, v, t, *, lr, beta1, beta2, eps, bias_correction=True, mistake=""):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    if not bias_correction or mistake == "no correction":
        return theta - lr * m / (v.sqrt() + eps), m, v
    step = t + 1 if mistake == "t+1" else t
    b1, b2 = 1 - beta1**step, 1 - beta2**step
    if mistake == "eps inside":
        return theta - lr * (m / b1) / (v / b2 + eps).sqrt(), m, v
    if mistake == "eps before correction":
        return theta - lr * (m / b1) / ((v.sqrt() + eps) / math.sqrt(b2)), m, v
    return theta - lr * (m / b1) / ((v / b2).sqrt() + eps), m, v


def _adamw(theta, grad, m, v, t, *, lr, beta1, beta2, eps, weight_decay, mistake=""):
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    if mistake == "l2":
        return _adam(theta, grad + weight_decay * theta, m, v, t, **hyper)
    if mistake == "after":
        theta, m, v = _adam(theta, grad, m, v, t, **hyper)
        return theta * (1 - lr * weight_decay), m, v
    factor = {"sign": 1 + lr * weight_decay, "no lr": 1 - weight_decay}.get(mistake, 1 - lr * weight_decay)
    return _adam(theta * factor, grad, m, v, t, **hyper)


def _warmup_cosine(step, *, peak_lr, warmup_steps, total_steps, min_lr, mistake=""):
    if step < warmup_steps:
        return peak_lr * (step + 1 if mistake == "warmup+1" else step) / warmup_steps
    if step > total_steps and mistake != "no clamp":
        return min_lr
    shift = 1 if mistake == "cosine+1" else 0
    progress = (step - warmup_steps + shift) / (total_steps - warmup_steps)
    floor = 0.0 if mistake == "no floor" else min_lr
    return floor + (peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _lion(theta, grad, m, *, lr, beta1, beta2, weight_decay, mistake=""):
    decay = {"sign": 1 + lr * weight_decay, "no lr": 1 - weight_decay}.get(mistake, 1 - lr * weight_decay)
    theta = theta * decay
    if mistake == "momentum first":
        m = beta2 * m + (1 - beta2) * grad
        return theta - lr * torch.sign(beta1 * m + (1 - beta1) * grad), m
    if mistake == "sign of momentum":
        m = beta2 * m + (1 - beta2) * grad
        return theta - lr * torch.sign(m), m
    c1 = beta2 if mistake == "swapped" else beta1
    c2 = beta1 if mistake == "swapped" else beta2
    return theta - lr * torch.sign(c1 * m + (1 - c1) * grad), c2 * m + (1 - c2) * grad


def _wrong_run_rmsprop(loss_fn, x0, *, lr, alpha, eps, n_steps):
    """Forgets the running average between steps."""
    x, positions = x0.clone(), [x0.clone()]
    for _ in range(n_steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x), x)
        x, _ = _rmsprop(x.detach(), grad, torch.zeros_like(x), lr=lr, alpha=alpha, eps=eps)
        positions.append(x)
    return torch.stack(positions)


def _scheduler(mistake):
    def build(optimizer, *, warmup_steps, total_steps, min_lr):
        peak = optimizer.param_groups[0]["lr"]

        def factor(s):
            value = _warmup_cosine(s, peak_lr=peak, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)
            return value if mistake == "absolute" else value / peak

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor) if mistake != "list" else [factor]

    return build


def _lion_class(mistake):
    class Lion(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
            super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                lr = self.defaults["lr"] if mistake == "default lr" else group["lr"]
                for p in group["params"]:
                    grad = p.grad if p.grad is not None else (torch.zeros_like(p) if mistake == "no grad" else None)
                    if grad is None:
                        continue
                    m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                    new, self.state[p]["exp_avg"] = _lion(
                        p, grad, m, lr=lr, beta1=group["betas"][0], beta2=group["betas"][1],
                        weight_decay=group["weight_decay"],
                    )  # fmt: skip
                    p.copy_(new)

    return Lion


def _heavy_ball(theta, grad, v, buf, *, lr, alpha, eps, momentum):
    """torch's RMSprop momentum instead of Nesterov's."""
    v = alpha * v + (1 - alpha) * grad**2
    buf = momentum * buf + grad / (v.sqrt() + eps)
    return theta - lr * buf, v, buf


def _kw(fn, **fixed):
    def wrapped(*args, **kwargs):
        return fn(*args, **kwargs, **fixed)

    wrapped.__name__ = fn.__name__
    return wrapped


def _first_index(mistake):
    def steps_to_reach(losses, threshold):
        if mistake == "<=":
            hits = [i for i, x in enumerate(losses) if x <= threshold]
        else:
            hits = [i for i, x in enumerate(losses) if x < threshold]
        if mistake == "+1":
            return hits[0] + 1 if hits else None
        if mistake == "-1 for never":
            return hits[0] if hits else -1
        if mistake == "last":
            return hits[-1] if hits else None
        return hits[0] if hits else None

    return steps_to_reach


def _make_scheduler(mistake):
    """The five schedules of exercise 6, with one mistake."""
    lr_scheduler = torch.optim.lr_scheduler

    def make_scheduler(name, optimizer, *, total_steps, warmup_steps, step_size, gamma):
        peak = optimizer.param_groups[0]["lr"]
        if name == "none":
            return None if mistake != "list" else [peak]
        if name == "step":
            return lr_scheduler.StepLR(optimizer, step_size=step_size + (mistake == "step+1"), gamma=gamma)
        if name == "cosine":
            scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - (mistake == "T_max-1"))
            if mistake == "stepped once":
                optimizer.step()
                scheduler.step()
            return scheduler
        if name == "onecycle":
            total = total_steps + {"onecycle+1": 1, "onecycle-1": -1}.get(mistake, 0)
            return lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total)
        if mistake == "warmup+1":
            def factor(s):
                if s < warmup_steps:
                    return (s + 1) / warmup_steps
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup_steps) / (total_steps - warmup_steps))))

            return lr_scheduler.LambdaLR(optimizer, factor)
        return WarmupCosineLR(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)

    return make_scheduler


def _converged_at(mistake):
    def converged_at(losses, target, window):
        if mistake == "single loss":
            return next((i for i, loss in enumerate(losses) if loss < target), None)
        for i in range(window - 1, len(losses)):
            if sum(losses[i - window + 1 : i + 1]) / window < target:
                return i - window + 1 if mistake == "window start" else i
        return -1 if mistake == "-1 for never" else None

    return converged_at


def _accumulation_step(mistake):
    def accumulation_step(model, optimizer, loss_fn, x, y, micro_batch_size):
        if mistake != "no zero":
            optimizer.zero_grad()
        chunks = list(zip(x.split(micro_batch_size), y.split(micro_batch_size)))
        total = 0.0
        for xb, yb in chunks:
            if mistake == "zero each":
                optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            weight = {"no division": 1.0, "divide by count": 1 / len(chunks)}.get(mistake, len(xb) / len(x))
            (loss * weight).backward()
            total += loss.item() if mistake == "unweighted loss" else loss.item() * weight
            if mistake == "step each":
                optimizer.step()
        if mistake != "step each":
            optimizer.step()
        return total

    return accumulation_step


def _lars_local_lr(mistake):
    def lars_local_lr(weight, grad, *, trust_coefficient, weight_decay):
        w, g = weight.norm().item(), grad.norm().item()
        eta, beta = trust_coefficient, weight_decay
        if mistake == "no guard":
            return eta * w / (g + beta * w)
        if w == 0 or g == 0:
            return 1.0
        return {
            "no decay": eta * w / g,
            "inverted": eta * g / (w + beta * g),
            "no trust": w / (g + beta * w),
            "decayed grad norm": eta * w / (grad + beta * weight).norm().item(),
        }[mistake]

    return lars_local_lr


def _autocast_gradients(mistake):
    def autocast_gradients(model, loss_fn, x, y):
        if mistake == "bf16 model":
            model.to(torch.bfloat16)
            loss = loss_fn(model(x.to(torch.bfloat16)), y)
        else:
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=mistake != "no autocast"):
                out = model(x)
                loss = loss_fn(out, y) if mistake != "loss outside" else None
            if loss is None:
                loss = loss_fn(out, y)
        loss.backward()
        return loss.item()

    return autocast_gradients


def _quantize_block(mistake):
    def quantize_block(block, code):
        absmax = block.max() if mistake == "max" else block.abs().max()
        scaled = block if mistake == "no scaling" else block / (absmax if mistake == "no guard" else absmax.clamp(min=1e-38))
        if mistake == "round up":
            q = torch.bucketize(scaled, code).clamp(max=255)
        elif mistake == "linear":
            q = ((scaled + 1) * 127.5).round().clamp(0, 255)
        else:
            q = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2)
        if code[0] >= 0 and mistake != "no floor":  # every other mistake keeps positive v off code 0
            q = torch.where(scaled > 0, q.clamp(min=int((code <= 0).sum())), q)
        return (q if mistake == "int64" else q.to(torch.uint8)), absmax

    return quantize_block


def _dequantize_block(mistake):
    def dequantize_block(q, absmax, code):
        if mistake == "uint8 index":
            with warnings.catch_warnings():  # torch warns that a uint8 index is read as a mask
                warnings.simplefilter("ignore")
                return code[q] * absmax
        if mistake == "no absmax":
            return code[q.long()]
        return q.float() / 255 * absmax

    return dequantize_block


def _snapshot(mistake):
    """The snapshot of exercise 9, with one mistake."""

    class Snapshot:
        def __init__(self, model, optimizer):
            self.model, self.optimizer = model, optimizer
            state = model.state_dict()
            if mistake == "parameters only":
                state = {name: p for name, p in model.named_parameters()}
            self.model_state = state if mistake == "model references" else copy.deepcopy(state)
            self.grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
            self.training = model.training
            self.optimizer_state = optimizer.state_dict()
            if mistake != "optimizer references":
                self.optimizer_state = copy.deepcopy(self.optimizer_state)
            self.tensors = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
            self.rng = torch.get_rng_state()

        def restore(self):
            if mistake == "aliased parameters":  # the parameters end up sharing the snapshot's tensors
                for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
                    t.data = self.model_state[name]
            else:
                strict = mistake != "parameters only"
                self.model.load_state_dict(self.model_state, strict=strict, assign=mistake == "assign")
            if mistake != "no grads":
                for p, grad in zip(self.model.parameters(), self.grads):
                    p.grad = None if grad is None else grad.clone()
            if mistake != "no mode":
                self.model.train(self.training)
            if mistake == "state only":  # the state tensors, copied in, but not the param groups
                self.optimizer.state.clear()
                self.optimizer.state.update({p: {k: v.clone() for k, v in s.items()} for p, s in self.tensors.items()})
            elif mistake == "in place":  # copies the saved values into the existing state; keeps newer entries
                for p, s in self.tensors.items():
                    for k, v in s.items():
                        self.optimizer.state[p][k].copy_(v)
                self.optimizer.load_state_dict({**self.optimizer.state_dict(), "param_groups": self.optimizer_state["param_groups"]})
            elif mistake in ("no copy on load", "optimizer references"):
                self.optimizer.load_state_dict(self.optimizer_state)
            else:
                self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
            if mistake != "no rng":
                torch.set_rng_state(self.rng)

    return Snapshot


# ----- wrong answers for exercises 10 to 13 -------------------------------------------------------


def _gd_step(mistake):
    def gd_step(theta, H, b, lr):
        grad = {"no b": H @ theta, "half": 0.5 * H @ theta - b}.get(mistake, H @ theta - b)
        return theta + lr * grad if mistake == "ascent" else theta - lr * grad

    return gd_step


def _max_stable_lr(mistake):
    def max_stable_lr(H):
        eigenvalues = torch.linalg.eigvalsh(H)
        return {
            "1/L": 1 / eigenvalues[-1].item(),
            "smallest": 2 / eigenvalues[0].item(),
            "diagonal": 2 / torch.diagonal(H).max().item(),
            "best rate": 2 / (eigenvalues[0] + eigenvalues[-1]).item(),
        }[mistake]

    return max_stable_lr


def _convergence_factor(mistake):
    def convergence_factor(H, lr):
        factors = 1 - lr * torch.linalg.eigvalsh(H)
        return {
            "no abs": factors.max().item(),
            "largest only": factors[-1].abs().item(),
            "smallest only": factors[0].abs().item(),
        }[mistake]

    return convergence_factor


def _newton_schulz(mistake):
    """Muon's quintic, written out with one mistake."""

    def newton_schulz(G, steps=5, eps=1e-7):
        a, b, c = (1.5, -0.5, 0.0) if mistake == "cubic" else (3.4445, -4.7750, 2.0315)
        steps = 5 if mistake == "always 5" else steps
        tall = G.shape[0] > G.shape[1]
        X = G.T if tall else G
        if mistake == "bfloat16":
            X = X.to(torch.bfloat16)
        if mistake == "spectral norm":
            X = X / torch.linalg.matrix_norm(X, ord=2).clamp(min=eps)
        elif mistake == "no clamp":
            X = X / X.norm()
        elif mistake != "no normalization":
            X = X / X.norm().clamp(min=eps)
        for _ in range(steps):
            A = X @ X.T
            X = a * X + (b * A + c * (A if mistake == "A not squared" else A @ A)) @ X
        X = X.to(G.dtype)
        return X if mistake == "not back" or not tall else X.T

    return newton_schulz


def _svd_orthogonalize(mistake):
    def svd_orthogonalize(G):
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        if mistake == "keeps S":
            return U @ torch.diag(S) @ Vh
        if mistake == "transposed":
            return Vh.T @ U.T
        return _newton_schulz("")(G)

    return svd_orthogonalize


def _schedule_free_weights(mistake):
    def schedule_free_weights(lr, warmup_steps, n_steps):
        if mistake == "plain average":
            return [1 / t for t in range(1, n_steps + 1)]
        weights, total = [], 0.0
        for t in range(1, n_steps + 1):
            shift = 1 if mistake == "warmup+1" else 0
            rate = lr * min(1.0, (t + shift) / warmup_steps) if warmup_steps > 0 else lr
            weight = rate if mistake == "power 1" else rate**2
            total += weight
            weights.append(weight / total)
        return weights

    return schedule_free_weights


def _split(model, rule, weight_decay, *, frozen_too=False, twice=False):
    """Two groups from ``rule(name, owner, param) -> bool``; ``twice`` visits modules one by one, so a
    tied parameter is seen (and listed) under each of its owners."""
    if twice:
        seen = [(f"{m}.{n}".lstrip("."), owner, p) for m, owner in model.named_modules()
                for n, p in owner.named_parameters(recurse=False)]  # fmt: skip
    else:
        seen = [(n, model.get_submodule(n.rpartition(".")[0]), p) for n, p in model.named_parameters()]
    seen = [(n, o, p) for n, o, p in seen if frozen_too or p.requires_grad]
    decayed = [p for n, o, p in seen if rule(n, o, p)]
    kept = [p for n, o, p in seen if not rule(n, o, p)]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def _by_type(name, owner, param):
    layers = (torch.nn.Linear, torch.nn.Bilinear, torch.nn.modules.conv._ConvNd, torch.nn.MultiheadAttention,
              torch.nn.RNNBase)  # fmt: skip
    return isinstance(owner, layers) and param.ndim >= 2


def _decay_groups(mistake):
    rules = {
        "by name": lambda n, o, p: not any(s in n for s in ("bias", "LayerNorm.weight", "ln", "norm", "bn")),
        "by ndim": lambda n, o, p: p.ndim >= 2,
        "embeddings decay": lambda n, o, p: _by_type(n, o, p) or isinstance(o, torch.nn.Embedding),
    }

    def decay_groups(model, weight_decay):
        rule = rules.get(mistake, _by_type)
        groups = _split(model, rule, weight_decay, frozen_too=mistake == "frozen", twice=mistake == "twice")
        if mistake == "decay both":
            groups[1]["weight_decay"] = weight_decay
        return groups

    return decay_groups


def _part_groups(mistake):
    def part_groups(model, lrs, weight_decay):
        groups = []
        for part, lr in lrs.items():
            if mistake == "prefix":  # a parameter whose name starts with an earlier part goes to that part
                taken = {id(p) for g in groups for p in g["params"]}
                split = _split(model, lambda n, o, p: n.startswith(part) and id(p) not in taken and _by_type(n, o, p),
                               weight_decay)
                kept = [(n, p) for n, p in model.named_parameters() if n.startswith(part) and id(p) not in taken
                        and p.requires_grad and not any(p is q for q in split[0]["params"])]  # fmt: skip
                groups += [{**split[0], "lr": lr}, {"params": [p for _, p in kept], "lr": lr, "weight_decay": 0.0}]
                continue
            for group in _split(model.get_submodule(part), _by_type, weight_decay):
                groups.append({**group, "lr": lr})
        return groups

    return part_groups


def _paper_eps(mistake):
    def paper_eps(t, *, eps_base=1e-8, eps_min=1e-9, warmup=200, decay=200, alpha=0.1):
        first = t <= warmup if mistake == "<= warmup" else t < warmup
        if first and warmup > 0:
            frac = (t + 1) / warmup if mistake == "t+1" else t / warmup
            if mistake == "reversed":
                return eps_min * (1 - frac) + eps_base * frac
            return eps_base * (1 - frac) + eps_min * frac
        s = t - warmup if mistake == "restart" else t
        decayed = eps_base / (s / decay + 1) ** alpha
        return decayed if mistake == "no floor" else max(decayed, eps_min)

    return paper_eps


def _eps_scheduler(mistake):
    paper_eps = _paper_eps("")  # the student's own (course_lib's is not allowed here)

    class EpsScheduler:
        def __init__(self, optimizer, *, eps_min=1e-9, warmup=200, decay=200, alpha=0.1):
            self.optimizer, self.settings = optimizer, dict(eps_min=eps_min, warmup=warmup, decay=decay, alpha=alpha)
            self.base = [1e-8 if mistake == "paper base" else g["eps"] for g in optimizer.param_groups]
            self.t = 1 if mistake == "ahead" else 0
            if mistake != "behind":
                self._apply()

        def _apply(self):
            groups = self.optimizer.param_groups[:1] if mistake == "first group" else self.optimizer.param_groups
            for i, group in enumerate(groups):
                base = group["eps"] if mistake == "compounding" else self.base[i]
                group["eps"] = paper_eps(self.t, eps_base=base, **self.settings)

        def step(self):
            if mistake == "behind":
                self._apply()
                self.t += 1
            else:
                self.t += 1
                self._apply()

    return EpsScheduler


def _eps_floor_step(mistake):
    def eps_floor_step(*, eps_base=1e-8, eps_min=1e-9, warmup=200, decay=200, alpha=0.1):
        ratio = eps_base / eps_min
        crossing = decay * ((ratio**alpha if mistake == "alpha" else ratio ** (1 / alpha)) - 1)
        if mistake == "float":
            return max(warmup, crossing)
        if mistake == "no warmup":
            return math.ceil(crossing)
        return max(warmup, math.floor(crossing) if mistake == "floor" else math.ceil(crossing))

    return eps_floor_step


WRONG = [
    # (check, wrong implementation, a phrase the feedback must contain)
    ("rmsprop_step", _kw(_rmsprop, eps_inside=True), "eps goes outside the square root"),
    ("rmsprop_step", _kw(_rmsprop, swap=True), "1 - alpha"),
    ("rmsprop_step", _kw(_rmsprop, unsquared=True), "grad**2"),
    ("rmsprop_step", _kw(_rmsprop, old_v=True), "updated square_avg"),
    ("rmsprop_step", lambda theta, grad, v, **h: tuple(x.float() for x in _rmsprop(theta, grad, v, **h)), "dtype"),
    ("rmsprop_step", lambda theta, grad, v, **h: _rmsprop(theta, grad, v, **h)[0], "should return a tuple"),
    ("run_rmsprop", _wrong_run_rmsprop, "positions differs"),
    ("run_rmsprop", lambda loss_fn, x0, **h: _wrong_run_rmsprop(loss_fn, x0, **h)[1:], "has shape"),
    ("steps_to_reach", _first_index("<="), "strictly below"),
    ("steps_to_reach", _first_index("+1"), "index 0 is the start"),
    ("steps_to_reach", _first_index("-1 for never"), "return None"),
    ("steps_to_reach", _first_index("last"), "expected"),
    ("rmsprop_nesterov_step", _heavy_ball, "heavy-ball"),
    ("adam_step", _kw(_adam, mistake="no correction"), "not bias-corrected"),
    ("adam_step", _kw(_adam, mistake="eps inside"), "outside the square root"),
    ("adam_step", _kw(_adam, mistake="eps before correction"), "add eps after correcting v"),
    ("adam_step", _kw(_adam, mistake="t+1"), "starting at 1"),
    ("adam_step_uncorrected", lambda *a, bias_correction=True, **h: _adam(*a, **h), "use m and v as they are"),
    ("uncorrected_ratio", lambda t, b1, b2: (1 - b1) / math.sqrt(1 - b2), "depends on t"),
    ("uncorrected_ratio", lambda t, b1, b2: math.sqrt(1 - b2**t) / (1 - b1**t), "inverse"),
    ("uncorrected_ratio", lambda t, b1, b2: (1 - b1**t) / (1 - b2**t), "square root"),
    ("adamw_step", _kw(_adamw, mistake="l2"), "L2 regularization"),
    ("adamw_step", _kw(_adamw, mistake="sign"), "not (1 + lr * weight_decay)"),
    ("adamw_step", _kw(_adamw, mistake="no lr"), "scale the decay by the learning rate"),
    ("adamw_step", _kw(_adamw, mistake="after"), "decay theta as you were given it"),
    ("adam_l2_step", _adamw, "add weight_decay * theta to the gradient first"),
    ("adamw_shrink", lambda n, lr, wd: math.exp(-lr * wd * n), "compound it"),
    ("adamw_shrink", lambda n, lr, wd: (1 - wd) ** n, "with the learning rate in it"),
    ("adamw_shrink", lambda n, lr, wd: 1 - lr * wd * n, "do not add up"),
    ("warmup_cosine_lr", _kw(_warmup_cosine, mistake="warmup+1"), "peak_lr * s / warmup_steps"),
    ("warmup_cosine_lr", _kw(_warmup_cosine, mistake="no clamp"), "stays at min_lr"),
    ("warmup_cosine_lr", _kw(_warmup_cosine, mistake="no floor"), "not to 0"),
    ("warmup_cosine_lr", _kw(_warmup_cosine, mistake="cosine+1"), "expected"),
    ("warmup_cosine_scheduler", _scheduler("absolute"), "return a factor"),
    ("warmup_cosine_scheduler", _scheduler("list"), "should return a torch.optim.lr_scheduler"),
    ("lion_step", _kw(_lion, mistake="momentum first"), "update m only afterwards"),
    ("lion_step", _kw(_lion, mistake="sign of momentum"), "not the updated momentum"),
    ("lion_step", _kw(_lion, mistake="swapped"), "beta2 * m + (1 - beta2) * grad"),
    ("lion_step", _kw(_lion, mistake="sign"), "multiply by (1 - lr * weight_decay)"),
    ("lion_step", _kw(_lion, mistake="no lr"), "scale the decay by the learning rate"),
    ("lion_optimizer", _lion_class("default lr"), "group 1"),
    ("lion_optimizer", _lion_class("no grad"), "parameter 1"),
    ("make_scheduler", _make_scheduler("T_max-1"), "CosineAnnealingLR(T_max=total_steps)"),
    ("make_scheduler", _make_scheduler("step+1"), "gamma ** (s // step_size)"),
    ("make_scheduler", _make_scheduler("warmup+1"), "lr * s / warmup_steps"),
    ("make_scheduler", _make_scheduler("onecycle+1"), "number of optimizer steps of the run"),
    ("make_scheduler", _make_scheduler("onecycle-1"), "OneCycleLR(total_steps=...)"),
    ("make_scheduler", _make_scheduler("stepped once"), "one step ahead"),
    ("make_scheduler", _make_scheduler("list"), "should return a torch.optim.lr_scheduler scheduler"),
    ("converged_at", _converged_at("window start"), "the window's last step"),
    ("converged_at", _converged_at("single loss"), "not a single loss"),
    ("converged_at", _converged_at("-1 for never"), "return None"),
    ("accumulation_step", _accumulation_step("no division"), "divide each micro-batch's loss"),
    ("accumulation_step", _accumulation_step("zero each"), "zero the gradients once"),
    ("accumulation_step", _accumulation_step("no zero"), "the previous step's gradient"),
    ("accumulation_step", _accumulation_step("divide by count"), "the last micro-batch is smaller"),
    ("accumulation_step", _accumulation_step("step each"), "once, after the last micro-batch"),
    ("accumulation_step", _accumulation_step("unweighted loss"), "return the mean loss over the batch"),
    ("lars_local_lr", _lars_local_lr("no guard"), "a local rate of 1"),
    ("lars_local_lr", _lars_local_lr("no decay"), "weight decay also enters the denominator"),
    ("lars_local_lr", _lars_local_lr("inverted"), "the weight norm goes on top"),
    ("lars_local_lr", _lars_local_lr("no trust"), "multiply by the trust coefficient"),
    ("lars_local_lr", _lars_local_lr("decayed grad norm"), "not the norm of g + weight_decay * w"),
    ("autocast_gradients", _autocast_gradients("no autocast"), "inside torch.autocast"),
    ("autocast_gradients", _autocast_gradients("bf16 model"), "the model must stay float32"),
    ("autocast_gradients", _autocast_gradients("loss outside"), "compute the loss inside the autocast block"),
    ("quantize_block", _quantize_block("no scaling"), "divide the block by its absmax first"),
    ("quantize_block", _quantize_block("round up"), "rounds up"),
    ("quantize_block", _quantize_block("linear"), "not evenly spaced"),
    ("quantize_block", _quantize_block("max"), "the largest magnitude"),
    ("quantize_block", _quantize_block("no guard"), "a block of zeros has absmax 0"),
    ("quantize_block", _quantize_block("int64"), "torch.uint8"),
    ("quantize_block", _quantize_block("no floor"), "at least the smallest positive code"),
    ("dequantize_block", _dequantize_block("uint8 index"), "mask of booleans"),
    ("dequantize_block", _dequantize_block("no absmax"), "multiply the code values by absmax"),
    ("dequantize_block", _dequantize_block("q as value"), "q is an index into code"),
    ("snapshot_model", _snapshot("model references"), "model.state_dict() returns the live tensors"),
    ("snapshot_model", _snapshot("aliased parameters"), "the snapshot must keep its own copies"),
    ("snapshot_model", _snapshot("parameters only"), "restore the buffers too"),
    ("snapshot_model", _snapshot("no grads"), "restore the gradients too"),
    ("snapshot_model", _snapshot("no mode"), "restore train/eval mode"),
    ("snapshot_model", _snapshot("assign"), "keep the same parameter objects"),
    ("snapshot_optimizer", _snapshot("optimizer references"), "holds the live state tensors"),
    ("snapshot_optimizer", _snapshot("no copy on load"), "load_state_dict keeps the very tensors you pass in"),
    ("snapshot_optimizer", _snapshot("no rng"), "random number generator"),
    ("snapshot_optimizer", _snapshot("state only"), "the param groups differ in ['lr']"),
    ("snapshot_optimizer", _snapshot("in place"), "it must have none either"),
    ("gd_step", _gd_step("ascent"), "step against the gradient"),
    ("gd_step", _gd_step("no b"), "you left b out"),
    ("gd_step", _gd_step("half"), "cancels the 2"),
    ("max_stable_lr", _max_stable_lr("1/L"), "still stable above 1/L"),
    ("max_stable_lr", _max_stable_lr("smallest"), "the largest eigenvalue limits"),
    ("max_stable_lr", _max_stable_lr("diagonal"), "diagonal entries of H are not its eigenvalues"),
    ("max_stable_lr", _max_stable_lr("best rate"), "converges fastest"),
    ("convergence_factor", _convergence_factor("no abs"), "with absolute values"),
    ("convergence_factor", _convergence_factor("largest only"), "the flattest direction"),
    ("convergence_factor", _convergence_factor("smallest only"), "the stiffest direction"),
    ("newton_schulz", _newton_schulz("cubic"), "cubic Newton-Schulz coefficients"),
    ("newton_schulz", _newton_schulz("not back"), "transpose the result back"),
    ("newton_schulz", _newton_schulz("no clamp"), "a zero G must give a zero result"),
    ("newton_schulz", _newton_schulz("always 5"), "not always 5"),
    ("newton_schulz", _newton_schulz("spectral norm"), "not by the spectral norm"),
    ("newton_schulz", _newton_schulz("no normalization"), "divide G by its Frobenius norm first"),
    ("newton_schulz", _newton_schulz("A not squared"), "A squared in the last term"),
    ("newton_schulz", _newton_schulz("bfloat16"), "work in G's own dtype"),
    ("svd_orthogonalize", _svd_orthogonalize("keeps S"), "drop the singular values"),
    ("svd_orthogonalize", _svd_orthogonalize("transposed"), "transpose"),
    ("svd_orthogonalize", _svd_orthogonalize("newton-schulz"), "only approximates"),
    ("schedule_free_weights", _schedule_free_weights("plain average"), "the plain average"),
    ("schedule_free_weights", _schedule_free_weights("power 1"), "not the rate itself"),
    ("schedule_free_weights", _schedule_free_weights("warmup+1"), "reaching lr at t = warmup_steps"),
    ("decay_groups", _decay_groups("by name"), "not by its name or shape"),
    ("decay_groups", _decay_groups("by ndim"), "not by its name or shape"),
    ("decay_groups", _decay_groups("embeddings decay"), "embeddings do not decay"),
    ("decay_groups", _decay_groups("twice"), "a tied parameter"),
    ("decay_groups", _decay_groups("frozen"), "leave frozen parameters out"),
    ("decay_groups", _decay_groups("decay both"), "should have 'weight_decay': 0.0"),
    ("part_groups", _part_groups("prefix"), "match whole submodule names"),
    ("part_groups", lambda model, lrs, wd: [{"params": [p for p in model.get_submodule(part).parameters()
                                                        if p.requires_grad], "lr": lr, "weight_decay": wd}
                                            for part, lr in lrs.items()], "Use the same rule as in decay_groups"),
    ("paper_eps", _paper_eps("restart"), "uses t itself in its second piece"),
    ("paper_eps", _paper_eps("no floor"), "take max(..., eps_min)"),
    ("paper_eps", _paper_eps("reversed"), "goes from eps_base at t = 0 towards eps_min"),
    ("paper_eps", _paper_eps("t+1"), "not (t + 1) / T_w"),
    ("paper_eps", _paper_eps("<= warmup"), "t = T_w already belongs to the second piece"),
    ("eps_scheduler", _eps_scheduler("behind"), "one step behind"),
    ("eps_scheduler", _eps_scheduler("ahead"), "one step ahead"),
    ("eps_scheduler", _eps_scheduler("paper base"), "not the paper's 1e-8"),
    ("eps_scheduler", _eps_scheduler("compounding"), "has already been changed by earlier steps"),
    ("eps_scheduler", _eps_scheduler("first group"), "not only the first"),
    ("eps_floor_step", _eps_floor_step("no warmup"), "the answer is at least T_w"),
    ("eps_floor_step", _eps_floor_step("floor"), "round up (math.ceil), not down"),
    ("eps_floor_step", _eps_floor_step("float"), "a step is an integer"),
    ("eps_floor_step", _eps_floor_step("alpha"), "(eps_base/eps_min)^(1/alpha)"),
]


@pytest.mark.parametrize("check, wrong, phrase", WRONG, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(WRONG)])
def test_plausible_wrong_answer_fails_its_check_with_useful_feedback(check, wrong, phrase):
    for seed in SEEDS:
        message = failure(check, wrong, seed)
        assert phrase in message, message
        assert f"seed={seed}" in message


# ----- a mistake shows in every check of a function that depends on the mistaken one -------------


def _uses(value, name: str) -> bool:
    """Whether a function, a function nested in it, or a method of a class, refers to the global ``name``."""
    functions = [value] if hasattr(value, "__code__") else []
    if isinstance(value, type):
        functions = [f for f in vars(value).values() if hasattr(f, "__code__")]
        functions += [f.__wrapped__ for f in vars(value).values() if hasattr(getattr(f, "__wrapped__", None), "__code__")]
    codes = [f.__code__ for f in functions]
    while codes:
        code = codes.pop()
        if name in code.co_names:
            return True
        codes += [c for c in code.co_consts if hasattr(c, "co_names")]
    return False


def _dependents() -> list[tuple[str, str, str, int]]:
    """(exercise, base check, dependent check, index in WRONG) for every listed mistake of a base check and
    every other check of its exercise whose function, in the solution, calls the base check's function."""
    out = []
    for exercise in ALL.values():
        namespace = definitions(exercise.name)
        for base in exercise.checks:
            base_function = CHECKED_FUNCTION.get(base.name, base.name)
            for other in exercise.checks:
                function = namespace[CHECKED_FUNCTION.get(other.name, other.name)]
                # (two checks of one function, such as the halves of Snapshot, check different behaviours of it)
                if function is namespace[base_function] or not _uses(function, base_function):
                    continue
                out += [(exercise.name, base.name, other.name, i) for i, (c, _, _) in enumerate(WRONG) if c == base.name]
    return out


@pytest.mark.parametrize("exercise, base, dependent, index", _dependents(),
                         ids=[f"{b}-{d}-{i}" for _, b, d, i in _dependents()])  # fmt: skip
def test_a_listed_mistake_also_fails_every_check_whose_function_depends_on_it(exercise, base, dependent, index):
    """The solution's dependent function (run_rmsprop, Lion, the schedulers, part_groups), built on a mistaken
    base function, must fail its own check too, on every seed: its inputs may not hide the mistake (before,
    epsilon inside the square root passed run_rmsprop on a third of the seeds, and updating Lion's momentum
    first passed lion_optimizer on all of them)."""
    _, wrong, _ = WRONG[index]
    namespace = definitions(exercise)
    namespace[CHECKED_FUNCTION.get(base, base)] = wrong  # the dependent function looks it up when it runs
    function = namespace[CHECKED_FUNCTION.get(dependent, dependent)]
    for seed in range(20):
        failure(dependent, function, seed)


def test_feedback_names_expected_returned_and_input_and_is_reproducible():
    first = failure("rmsprop_step", _kw(_rmsprop, eps_inside=True), seed=7)
    assert "expected" in first and "got" in first and "on input" in first and "theta = tensor(" in first
    assert first == failure("rmsprop_step", _kw(_rmsprop, eps_inside=True), seed=7)


def test_a_replayed_answer_passes_only_on_the_inputs_it_was_recorded_on():
    solution = definitions("04_warmup_cosine")["warmup_cosine_lr"]
    answers: list = []

    def recorder(step, **schedule):
        answers.append(solution(step, **schedule))
        return answers[-1]

    run_check("warmup_cosine_lr", recorder, seed=3)
    replay = iter(list(answers))

    def warmup_cosine_lr(step, **schedule):
        return next(replay, 0.0)

    run_check("warmup_cosine_lr", warmup_cosine_lr, seed=3)  # same inputs, same answers: passes
    replay = iter(list(answers))
    failure("warmup_cosine_lr", warmup_cosine_lr, seed=4)  # other inputs: fails


def test_fresh_runs_draw_fresh_seeds_and_bad_arguments_are_rejected():
    assert len({Trials("x", len, None, 1).seed for _ in range(5)}) > 1
    with pytest.raises(ValueError, match="seed"):
        checks.rmsprop_step(definitions("01_rmsprop")["rmsprop_step"], seed=-1)
    with pytest.raises(ValueError, match="trials"):
        checks.rmsprop_step(definitions("01_rmsprop")["rmsprop_step"], trials=0)
    with pytest.raises(CheckFailed, match="expected your function"):
        checks.lion_step(None)


def test_student_exceptions_become_feedback_but_interrupts_are_not_swallowed():
    def raises(*args, **kwargs):
        raise RuntimeError("boom")

    assert "raised RuntimeError: boom" in failure("lion_step", raises, seed=0)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checks.lion_step(interrupted, seed=0)


# ----- what the functions may call -----------------------------------------------------------------


def _delegating_rmsprop_step(optimizer_class):
    """rmsprop_step written by calling ``optimizer_class`` (torch's RMSprop or a subclass of it)."""

    def rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):
        param = theta.clone().requires_grad_(True)
        optimizer = optimizer_class([param], lr=lr, alpha=alpha, eps=eps)
        optimizer.state[param] = {"step": torch.tensor(0.0), "square_avg": square_avg.clone()}
        param.grad = grad.clone()
        optimizer.step()
        return param.detach(), optimizer.state[param]["square_avg"].clone()

    return rmsprop_step


def _course_lib_rmsprop_step(theta, grad, square_avg, *, lr, alpha, eps):
    """rmsprop_step by way of course_lib's own RMSprop."""
    from course_lib.optim import RMSprop

    return _delegating_rmsprop_step(RMSprop)(theta, grad, square_avg, lr=lr, alpha=alpha, eps=eps)


class _EarlierSubclass(torch.optim.RMSprop):  # defined before the check runs, as in an earlier cell
    pass


def _caught_and_hidden(theta, grad, square_avg, *, lr, alpha, eps):
    """Calls torch's RMSprop, catches whatever goes wrong, and falls back on the right formula."""
    try:
        return _delegating_rmsprop_step(torch.optim.RMSprop)(theta, grad, square_avg, lr=lr, alpha=alpha, eps=eps)
    except Exception:
        square_avg = alpha * square_avg + (1 - alpha) * grad**2
        return theta - lr * grad / (square_avg.sqrt() + eps), square_avg


DELEGATING = [
    ("torch's class", _delegating_rmsprop_step(torch.optim.RMSprop), "torch.optim.RMSprop"),
    ("an alias taken before the check", _delegating_rmsprop_step(getattr(torch.optim, "RMSprop")), "torch.optim.RMSprop"),
    ("a subclass made earlier", _delegating_rmsprop_step(_EarlierSubclass), "torch.optim.RMSprop"),
    ("course_lib's class", _course_lib_rmsprop_step, "course_lib.optim.RMSprop"),
    ("an error caught", _caught_and_hidden, "torch.optim.RMSprop"),
]


@pytest.mark.parametrize("how, fn, name", DELEGATING, ids=[d[0] for d in DELEGATING])
def test_calling_the_library_for_what_the_exercise_asks_fails_the_check(monkeypatch, how, fn, name):
    """The policy of rmsprop_step forbids torch's and course_lib's RMSprop: a function that delegates to them
    fails with a message that names the call, however the class was reached. Without the policy the same
    function would pass (the tripwires are what stops it)."""
    message = failure("rmsprop_step", fn, seed=0)
    assert f"rmsprop_step called {name}, which this exercise does not allow" in message, message
    assert "write RMSprop's update yourself" in message
    from course_lib.checks import _policy

    monkeypatch.setitem(_policy.POLICIES, "rmsprop_step", _policy.Policy(("rmsprop_step",), ()))
    assert run_check("rmsprop_step", fn, seed=0).startswith("\u2713")


def test_every_check_declares_its_policy_and_the_solutions_keep_to_it():
    from course_lib.checks import POLICIES

    assert {spec.name for e in ALL.values() for spec in e.checks} <= set(POLICIES)
    for exercise in ALL.values():
        text = exercise.policy_markdown()
        for spec in exercise.checks:
            for name in POLICIES[spec.name].forbid:
                assert f"`{name}`" in text, (exercise.name, name)
    # (the solutions pass their checks with the tripwires set: test_solution_passes_its_check)


def test_registering_ones_own_class_in_torch_is_not_tampering(monkeypatch):
    """A correct Lion that the notebook also registers as torch.optim.Lion passes: adding a name replaces
    nothing the checks use. Replacing one that exists (torch.optim.Adam) is still refused."""
    lion = definitions("05_lion")["Lion"]
    lion.__module__ = "__main__"  # as if defined in a notebook
    monkeypatch.setattr(torch.optim, "Lion", lion, raising=False)
    assert run_check("lion_optimizer", lion, seed=0).startswith("\u2713")
    fake_adam = type("Adam", (torch.optim.Adam,), {"__module__": "__main__"})
    monkeypatch.setattr(torch.optim, "Adam", fake_adam)
    assert "torch.optim.Adam was replaced" in failure("lion_optimizer", lion, seed=0)


# ----- the same wrong answers, called through a kernel as the grader calls them -------------------


def _wrong_answers_source() -> tuple[str, list[str]]:
    """The source of this module's wrong answers (their helpers) and the expression of each entry of WRONG."""
    text = Path(__file__).read_text(encoding="utf-8")
    helpers = text[text.index("def _rmsprop("): text.index("WRONG = [")]
    tree = ast.parse(text)
    wrong = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "WRONG")
    expressions = [ast.unparse(element.elts[1]) for element in wrong.value.elts]
    header = "import copy, math, warnings\nimport torch\nfrom course_lib.schedules import WarmupCosineLR\n"
    return header + helpers, expressions


def test_wrong_answers_fail_the_same_way_when_the_check_calls_them_through_a_kernel(tmp_path):
    """The grader runs each check in its own process and calls the student's code in the kernel, with
    arguments pickled there and the answers (tensors, parameters by reference, the changes to a model)
    sent back as data. Every wrong answer must fail with the same advice as in-process."""
    import time

    from course_grading.kernel import Kernel
    from course_grading.remote import RemoteFunction
    from course_grading.sandbox import Workspace

    helpers, expressions = _wrong_answers_source()
    space = Workspace(tmp_path / "kernel")
    space.create("notebook.ipynb", "{}")
    with Kernel(space) as kernel:
        assert kernel.run(helpers, 120).status == "ok"
        for (check, _, phrase), expression in zip(WRONG, expressions):
            assert kernel.run(f"_wrong = {expression}", 60).status == "ok", expression
            remote = RemoteFunction(kernel, "_wrong", time.monotonic() + 120)
            with pytest.raises(CheckFailed) as info:
                with redirect_stdout(io.StringIO()):
                    getattr(checks, check)(remote, seed=0)
            assert phrase in str(info.value), (check, expression, str(info.value))
        # and a right answer passes, the kernel's own objects coming back as the check's
        for name, check in (("05_lion", "lion_optimizer"), ("12_decay_by_module_type", "part_groups"),
                            ("07_large_batches", "accumulation_step"), ("09_lr_finder_restore", "snapshot_model")):
            assert kernel.run(definitions_source(name), 120).status == "ok", name
            remote = RemoteFunction(kernel, CHECKED_FUNCTION.get(check, check), time.monotonic() + 120)
            with redirect_stdout(io.StringIO()) as out:
                getattr(checks, check)(remote, seed=0)
            assert out.getvalue().startswith(f"\u2713 {check} passed")


def test_check_failure_shows_a_message_not_a_traceback_in_jupyter():
    error = CheckFailed("lion_step", "line one\nline two")
    assert error._render_traceback_() == ["\u2717 check lion_step failed", "line one", "line two"]


# ----- the references -----------------------------------------------------------------------------


def test_lion_reference_matches_the_update_worked_by_hand():
    theta, grad, m = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.4, -0.2]), torch.tensor([-0.5, 0.1, 0.1])
    new_theta, new_m = lion_reference(theta, grad, m, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.5)
    # decay: theta * 0.95 = [0.95, -1.9, 0.475]; c = 0.9 m + 0.1 g = [-0.42, 0.13, 0.07] -> sign [-1, 1, 1]
    torch.testing.assert_close(new_theta, torch.tensor([1.05, -2.0, 0.375]))
    torch.testing.assert_close(new_m, torch.tensor([-0.492, 0.103, 0.097]))


def test_schedule_reference_matches_the_closed_form():
    lrs = reference_lrs(peak_lr=2.0, warmup_steps=4, total_steps=10, min_lr=0.5, n_steps=14)
    assert lrs[:4] == [0.0, 0.5, 1.0, 1.5]
    for s in range(4, 11):
        assert lrs[s] == pytest.approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 6)), rel=1e-12)
    assert lrs[10:] == pytest.approx([0.5] * 4)


def test_schedule_ablation_references_match_the_closed_forms():
    T, W, size, gamma, peak = 20, 4, 7, 0.5, 0.3
    lrs = {name: reference_schedule_lrs(name, peak_lr=peak, total_steps=T, warmup_steps=W, step_size=size, gamma=gamma)
           for name in ("none", "step", "cosine", "warmup_cosine", "onecycle")}  # fmt: skip
    assert lrs["none"] == [peak] * T
    assert lrs["step"] == pytest.approx([peak * gamma ** (s // size) for s in range(T)], rel=1e-12)
    assert lrs["cosine"] == pytest.approx([peak * 0.5 * (1 + math.cos(math.pi * s / T)) for s in range(T)], rel=1e-9)
    warm = [peak * s / W if s < W else peak * 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W))) for s in range(T)]
    assert lrs["warmup_cosine"] == pytest.approx(warm, rel=1e-12)
    assert lrs["onecycle"][0] == pytest.approx(peak / 25) and max(lrs["onecycle"]) == pytest.approx(peak)
    assert lrs["onecycle"][-1] == pytest.approx(peak / 25 / 1e4)


def test_converged_at_reference_and_lars_reference_worked_by_hand():
    assert reference_converged_at([5.0, 1.0, 3.0, 0.5, 0.4], target=1.0, window=2) == 4  # means 3, 2, 1.75, 0.45
    assert reference_converged_at([0.1, 5.0], target=1.0, window=2) is None
    weight, grad = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64)
    # ||w|| = 5, ||g|| = 0.5: 0.01 * 5 / (0.5 + 0.1 * 5) = 0.05
    assert lars_reference_local_lr(weight, grad, trust_coefficient=0.01, weight_decay=0.1, lr=2.0) == pytest.approx(0.05)
    assert lars_reference_local_lr(torch.zeros(2, dtype=torch.float64), grad, trust_coefficient=0.01,
                                   weight_decay=0.1) == pytest.approx(1.0)  # fmt: skip


# ----- the builder ------------------------------------------------------------------------------


def test_committed_notebooks_are_what_the_sources_generate(tmp_path: Path):
    assert main(["build-exercises", "--src", str(SOURCES), "--out", str(EXERCISES), "--check"]) == 0, (
        "the exercise notebooks are out of date: run `python -m course_grading build-exercises`"
    )
    written = build_exercises(SOURCES, tmp_path)
    assert len(written) == 4 * len(ALL)
    for path in written:  # byte for byte, as jupytext --sync writes them (the .md header names its version)
        assert path.read_text() == (EXERCISES / path.relative_to(tmp_path)).read_text(), path.name
    (tmp_path / "01_rmsprop.md").write_text("stale")
    assert build_exercises(SOURCES, tmp_path, check=True) == [tmp_path / "01_rmsprop.md"]
    assert (tmp_path / "01_rmsprop.md").read_text() == "stale"


@pytest.mark.parametrize("name", sorted(ALL))
def test_generated_notebooks_hide_solutions_and_keep_checks(name: str):
    student = student_notebook(name)
    solution = solution_notebook(name)
    assert [c.id for c in student.cells] == [c.id for c in solution.cells]
    source_text = (SOURCES / f"{name}.md").read_text()
    n_blocks = source_text.count("# BEGIN SOLUTION")
    student_code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert student_code.count('raise NotImplementedError("Exercise: ') == n_blocks > 0
    for nb in (student, solution):
        text = json.dumps(nb)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        assert "course_lib.grading" not in text  # the checks' former home
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code)
        assert code[0].source.startswith("# Colab: install course_lib (does nothing elsewhere)")
        assert nb.metadata["jupytext"]["formats"] == "ipynb,md:myst"
        policy = next(c for c in nb.cells if c.id == POLICY_CELL_ID)
        assert nb.cells.index(policy) == 1 and "may not call" in policy.source
    for spec in ALL[name].checks:
        cell = next(c for c in student.cells if c.id == spec.cell_id)
        assert check_tag(spec.name) in cell.metadata["tags"] and cell.metadata["points"] == spec.points
        assert cell.metadata["editable"] is False and cell.metadata["deletable"] is False
        assert cell.source == next(c for c in solution.cells if c.id == spec.cell_id).source
        assert "from course_lib import checks" in cell.source
    solution_code = "\n".join(c.source for c in solution.cells if c.cell_type == "code")
    assert "NotImplementedError(" not in solution_code
    assert "Write your answer here" in json.dumps(student) and "Write your answer here" not in json.dumps(solution)


def _source(body: str) -> str:
    header = "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n---\n\n"
    return header + "# Title\n\n" + body


@pytest.mark.parametrize(
    "body, error",
    [
        ("```{code-cell} ipython3\ndef f():\n    # BEGIN SOLUTION\n    return 1\n```\n", "without END"),
        ("```{code-cell} ipython3\n# END SOLUTION\n```\n", "without BEGIN"),
        ("```{code-cell} ipython3\n:tags: [check:f]\n\nchecks.f(f)\n```\n", "points"),
        ("```{code-cell} ipython3\n:tags: [check:f]\n:points: 1\n\n# BEGIN SOLUTION\n# END SOLUTION\n```\n", "markers"),
        ("<!-- BEGIN SOLUTION -->\nanswer\n", "without an END"),
    ],
)
def test_malformed_sources_are_rejected(tmp_path: Path, body: str, error: str):
    (tmp_path / "01_bad.md").write_text(_source(body))
    with pytest.raises(ValueError, match=error):
        for exercise in load_exercises(tmp_path):
            exercise.student_notebook()


def test_a_check_name_belongs_to_one_exercise(tmp_path: Path):
    cell = "```{code-cell} ipython3\n:tags: [check:f]\n:points: 1\n\nchecks.f(f)\n```\n"
    (tmp_path / "01_a.md").write_text(_source(cell))
    (tmp_path / "02_b.md").write_text(_source(cell))
    with pytest.raises(ValueError, match="appears in both"):
        load_exercises(tmp_path)


def test_stub_message_names_the_enclosing_function_or_uses_the_marker_text(tmp_path: Path):
    body = (
        "```{code-cell} ipython3\nclass A:\n    def go(self):\n        # BEGIN SOLUTION\n        return 1\n"
        "        # END SOLUTION\n\n\ndef f():\n    # BEGIN SOLUTION: compute the thing\n    return 2\n"
        "    # END SOLUTION\n```\n"
    )
    (tmp_path / "01_stub.md").write_text(_source(body))
    (exercise,) = load_exercises(tmp_path)
    code = exercise.student_notebook().cells[1].source
    assert '        raise NotImplementedError("Exercise: implement go")' in code
    assert '    raise NotImplementedError("Exercise: compute the thing")' in code
    assert "return" not in code
    assert "return 1" in exercise.solution_notebook().cells[1].source


# ----- preparing submissions (no kernel) --------------------------------------------------------


def _student(name: str = "05_lion") -> nbformat.NotebookNode:
    return student_notebook(name)


def _code_sources(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_prepare_replaces_edited_checks_and_puts_deleted_ones_back():
    exercise, nb = ALL["05_lion"], _student()
    template = exercise.student_notebook()
    ids = [c.id for c in nb.cells]
    nb.cells[ids.index("check-lion_optimizer")].source = "print('all good')"
    del nb.cells[ids.index("check-lion_step")]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="old output")]
    prepared, checks_at, notes = prepare(nb, exercise)
    assert [c.id for c in prepared.cells] == [c.id for c in template.cells]
    assert [c.source for c in prepared.cells] == [c.source for c in template.cells]
    assert sorted(s.name for s in checks_at.values()) == ["lion_optimizer", "lion_step"]
    code = _code_sources(prepared)
    assert all(f"checks.{spec.name}(" in code[i] for i, spec in checks_at.items())
    assert any("lion_optimizer: the cell was edited" in n for n in notes)
    assert any("lion_step: the cell was missing and was put back" in n for n in notes)
    assert all(not c.get("outputs") for c in prepared.cells)


def test_prepare_recognises_check_cells_that_lost_their_tag_or_id():
    exercise, nb = ALL["05_lion"], _student()
    ids = [c.id for c in nb.cells]
    nb.cells[ids.index("check-lion_step")].metadata = {}
    anonymous = nb.cells[ids.index("check-lion_optimizer")]
    anonymous.metadata, anonymous.id = {}, "renamed"
    prepared, checks_at, notes = prepare(nb, exercise)
    assert [c.source for c in prepared.cells] == [c.source for c in exercise.student_notebook().cells]
    assert sorted(s.name for s in checks_at.values()) == ["lion_optimizer", "lion_step"]
    assert any("lion_step: its cell had lost its tag and was recognised by its id" in n for n in notes)
    assert any("lion_optimizer: its cell had lost its tag and was recognised by its call" in n for n in notes)


def test_prepare_prefers_the_original_check_cell_to_a_pasted_copy():
    exercise, nb = ALL["05_lion"], _student()
    original = next(i for i, c in enumerate(nb.cells) if c.id == "check-lion_step")
    pasted = copy.deepcopy(nb.cells[original])
    pasted.id, pasted.source = "pasted", "checks.lion_step(lambda *args, **kwargs: None)"
    nb.cells.insert(original, pasted)
    prepared, checks_at, notes = prepare(nb, exercise)
    assert prepared.cells[original].source == pasted.source
    assert check_tag("lion_step") not in prepared.cells[original].metadata["tags"]
    assert prepared.cells[original + 1].id == "check-lion_step"
    assert sorted(s.name for s in checks_at.values()) == ["lion_optimizer", "lion_step"]
    assert any("carried a check tag but is not a check cell" in n for n in notes)


def test_prepare_handles_old_notebooks_without_cell_ids():
    exercise, nb = ALL["04_warmup_cosine"], _student("04_warmup_cosine")
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    prepared, checks_at, _ = prepare(nb, exercise)
    nbformat.validate(prepared)
    assert sorted(s.name for s in checks_at.values()) == ["warmup_cosine_lr", "warmup_cosine_scheduler"]


def test_find_submissions_reads_student_names_and_recognises_copies(tmp_path: Path):
    files = {
        "alice/01_rmsprop.ipynb": ("alice", "01_rmsprop"),
        "alice/Copy of 01_rmsprop.ipynb": ("alice", "01_rmsprop"),  # Colab
        "alice/02_adam_bias_correction-Copy1.ipynb": ("alice", "02_adam_bias_correction"),  # JupyterLab
        "alice/03_adamw (1).ipynb": ("alice", "03_adamw"),  # a browser's second download
        "alice/04_warmup_cosine - Copy.ipynb": ("alice", "04_warmup_cosine"),  # Windows
        "alice/05_lion copy 2.ipynb": ("alice", "05_lion"),  # macOS
        "bob__02_adam_bias_correction.ipynb": ("bob", "02_adam_bias_correction"),
        "Copy of bob__03_adamw (2).ipynb": ("bob", "03_adamw"),
        "bob__06.ipynb": ("bob", "06_scheduler_ablation"),  # by number
        "carol/Exercise.ipynb": None,
        "alice/.ipynb_checkpoints/01_rmsprop-checkpoint.ipynb": None,
        "alice/notes.txt": None,
        "nobody.ipynb": None,
        "dave/99_unknown.ipynb": None,
    }
    for relative in files:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("{}")
    found, skipped = find_submissions(tmp_path, list(ALL.values()))
    got = {str(s.path.relative_to(tmp_path)): (s.student, s.exercise.name) for s in found}
    assert got == {k: v for k, v in files.items() if v is not None}
    reasons = {str(s.path.relative_to(tmp_path)): s.reason for s in skipped}
    assert set(reasons) | set(got) == set(files)  # every file: graded or listed with a reason
    assert "matches no exercise" in reasons["carol/Exercise.ipynb"]
    assert "hidden" in reasons["alice/.ipynb_checkpoints/01_rmsprop-checkpoint.ipynb"]
    assert "not a notebook" in reasons["alice/notes.txt"]
    assert "no student name" in reasons["nobody.ipynb"]
    with pytest.raises(ValueError, match="not a directory"):
        find_submissions(tmp_path / "missing", list(ALL.values()))


# ----- grading end to end -----------------------------------------------------------------------

LOOPING_LION = """
class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def step(self, closure=None):
        while True:  # never ends
            pass
"""


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """One run of the real command (default options but a 20 s cell limit) on a batch of submissions: every
    solution, every untouched student notebook, a tampered and looping notebook, a Colab copy next to the
    untouched original, and files that cannot be graded."""
    exercises = runnable_exercises()
    folder = tmp_path_factory.mktemp("submissions")
    (folder / "solution").mkdir()
    (folder / "untouched").mkdir()
    for name in ALL:
        shutil.copy(exercises / "solutions" / f"{name}.ipynb", folder / "solution" / f"{name}.ipynb")
        shutil.copy(exercises / f"{name}.ipynb", folder / "untouched" / f"{name}.ipynb")
    # Mallory solves lion_step but deletes its check cell; her Lion class loops forever and she edits its
    # check cell to print a pass. She deletes the demo after it.
    nb, solved = _student(), solution_notebook("05_lion")
    cells = [c for c in nb.cells if c.id != "check-lion_step"]
    cells = cells[: next(i for i, c in enumerate(cells) if c.id == "check-lion_optimizer") + 1]
    for cell in cells:
        if "def lion_step" in cell.source:
            cell.source = next(c.source for c in solved.cells if "def lion_step" in c.source)
        elif "class Lion" in cell.source:
            cell.source = LOOPING_LION
        elif cell.id == "check-lion_optimizer":
            cell.source = "print('\u2713 lion_optimizer passed')"
    nb.cells = cells
    nbformat.write(nb, folder / "mallory__05_lion.ipynb")
    # Erin worked in Colab's "Copy of ..." and handed in the untouched original too.
    (folder / "erin").mkdir()
    shutil.copy(exercises / "solutions" / "05_lion.ipynb", folder / "erin" / "Copy of 05_lion.ipynb")
    shutil.copy(exercises / "05_lion.ipynb", folder / "erin" / "05_lion.ipynb")
    (folder / "zoe__01_rmsprop.ipynb").write_text("this is not a notebook")
    (folder / "stray.ipynb").write_text("{}")
    (folder / "solution" / "README.txt").write_text("my notes")
    out = folder.parent / "gradebook.csv"
    result, rows, reports = grade_command(folder, exercises / "src", out, "--cell-timeout", "20")
    assert result.returncode == 0, result.stderr
    return {"rows": rows, "reports": reports, "stdout": result.stdout, "stderr": result.stderr, "folder": folder}


def test_every_solution_gets_full_marks_bonus_included(graded):
    for name, exercise in ALL.items():
        row = row_of(graded["rows"], "solution", name)
        assert {spec.name: int(row[spec.name]) for spec in exercise.checks} == {
            spec.name: spec.points for spec in exercise.checks
        }
        assert int(row["total"]) == sum(spec.points for spec in exercise.checks)
        assert int(row["max_points"]) == exercise.max_points


def test_every_untouched_student_notebook_gets_zero_with_feedback(graded):
    for name, exercise in ALL.items():
        row = row_of(graded["rows"], "untouched", name)
        assert int(row["total"]) == 0 and all(row[spec.name] == "0" for spec in exercise.checks)
    report = (graded["reports"] / "untouched.md").read_text()
    assert report.count("| failed |") == sum(len(e.checks) for e in ALL.values())
    assert "NotImplementedError: Exercise: implement lion_step" in report


def test_edited_checks_are_replaced_and_deleted_checks_put_back(graded):
    row = row_of(graded["rows"], "mallory", "05_lion")
    assert (row["lion_step"], row["lion_optimizer"], row["total"]) == ("4", "0", "4")
    report = (graded["reports"] / "mallory.md").read_text()
    assert "lion_optimizer: the cell was edited; the instructor's version was run" in report
    assert "lion_step: the cell was missing and was put back" in report


def test_a_looping_submission_is_stopped_by_the_timeout_and_costs_only_its_check(graded):
    report = (graded["reports"] / "mallory.md").read_text()
    assert "| lion_optimizer | 0 / 2 | timed out |" in report and "Timeout of 20 seconds" in report
    assert "| lion_step | 4 / 4 | passed |" in report


def test_a_colab_copy_is_graded_and_the_best_copy_counts(graded):
    rows = [r for r in graded["rows"] if r["student"] == "erin"]
    counted = row_of(graded["rows"], "erin", "05_lion")
    assert counted["file"] == "erin/Copy of 05_lion.ipynb" and counted["total"] == "6"
    other = next(r for r in rows if r["file"] == "erin/05_lion.ipynb")
    assert other["status"] == "not counted" and other["total"] == ""


def test_every_file_is_graded_or_listed_with_its_reason(graded):
    folder = graded["folder"]
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert {r["file"] for r in graded["rows"]} == files
    status = {r["file"]: r["status"] for r in graded["rows"]}
    assert status["stray.ipynb"].startswith("not graded: no student name")
    assert status["solution/README.txt"] == "not graded: not a notebook (.ipynb)"
    assert row_of(graded["rows"], "zoe", "01_rmsprop")["total"] == "0"
    assert "could not be read" in (graded["reports"] / "zoe.md").read_text()
    assert "stray.ipynb: no student name" in graded["stderr"]
    assert f"graded {2 * len(ALL) + 3} submissions of 5 students" in graded["stdout"]
    assert "stray.ipynb" in (graded["reports"] / "not_graded.md").read_text()
