"""Runs the grading processes side by side and makes sure every notebook is graded once.

``jobs`` worker processes (:mod:`.worker`) each take one notebook at a time from a queue, the longest
first. A worker reports the cell it is about to run; if it dies (a submission killed it, its parent) or
stops reporting, the supervisor kills what is left of it, re-queues its notebook with that cell marked
as the culprit (the next attempt replaces the cell, see :mod:`.runner`), and starts another worker: the
other notebooks are not affected. A notebook that brings down the grading process three times, or that
no worker could start on, is reported as not graded, and the command exits non-zero.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import course_lib

from .procs import kill_group
from .runner import NotebookResult, Settings, Task
from .worker import library_digest, sign, unsign

__all__ = ["supervise", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 3  # times a notebook may bring down a grading process before it is reported as not graded


@dataclass
class _Worker:
    process: subprocess.Popen
    buffer: bytes = b""
    ready: bool = False
    task: Task | None = None
    cell: int | None = None
    kernels: set[int] = field(default_factory=set)  # process groups of the kernels it started
    seen: float = field(default_factory=time.monotonic)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def supervise(tasks: list[Task], *, exercises_dir: str, settings: Settings, jobs: int,
              log: Path, weights: dict[int, float] | None = None) -> dict[int, NotebookResult]:  # fmt: skip
    """Grade ``tasks`` in ``jobs`` worker processes; every task gets a result (``complete=False`` when it
    could not be graded). ``weights`` orders the queue, heaviest first."""
    weights = weights or {}
    queue = deque(sorted(tasks, key=lambda t: -weights.get(t.id, 0.0)))
    attempts: dict[int, int] = {}
    results: dict[int, NotebookResult] = {}
    key = secrets.token_bytes(32)
    config = {"key": key.hex(), "exercises": str(exercises_dir), "settings": asdict(settings),
              "library": library_digest(Path(course_lib.__file__).resolve().parent)}  # fmt: skip
    selector = selectors.DefaultSelector()
    workers: dict[int, _Worker] = {}
    stall = settings.startup_timeout + 2 * settings.cell_timeout + 120
    failed_starts, fatal = 0, ""
    spawns_left = jobs + MAX_ATTEMPTS * len(tasks) + 3  # a bound, whatever happens to the workers
    log_file = open(log, "ab")

    def spawn() -> None:
        nonlocal spawns_left
        spawns_left -= 1
        process = subprocess.Popen(
            [sys.executable, "-m", "course_grading.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log_file, env=_worker_env(), start_new_session=True, close_fds=True,
        )  # fmt: skip
        process.stdin.write((json.dumps(config) + "\n").encode())
        process.stdin.flush()
        os.set_blocking(process.stdout.fileno(), False)
        workers[process.stdout.fileno()] = _Worker(process)
        selector.register(process.stdout, selectors.EVENT_READ)

    def finish(worker: _Worker, why: str) -> None:
        nonlocal failed_starts
        fd = worker.process.stdout.fileno()
        selector.unregister(worker.process.stdout)
        del workers[fd]
        kill_group(worker.process.pid)
        worker.process.wait()
        for kernel in worker.kernels:  # they die with their worker; what they started may not have
            kill_group(kernel)
        for stream in (worker.process.stdin, worker.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if not worker.ready:
            failed_starts += 1
        task = worker.task
        if task is None:
            return
        attempts[task.id] = attempts.get(task.id, 0) + 1
        if worker.cell is not None and worker.cell not in task.killers:
            task.killers.append(worker.cell)
        if attempts[task.id] >= MAX_ATTEMPTS:
            where = f" (last in code cell {worker.cell})" if worker.cell is not None else ""
            results[task.id] = _not_graded(task, f"the grading process {why} {attempts[task.id]} times while grading "
                                                 f"this notebook{where}")  # fmt: skip
        else:
            queue.appendleft(task)

    try:
        for _ in range(min(jobs, len(queue))):
            spawn()
        while queue or any(w.task is not None for w in workers.values()):
            if fatal or (failed_starts >= 3 and not any(w.ready for w in workers.values())) or not workers:
                break
            for worker in list(workers.values()):
                if worker.ready and worker.task is None and queue:
                    worker.task, worker.cell, worker.seen = queue.popleft(), None, time.monotonic()
                    worker.process.stdin.write(sign(key, {"event": "task", "task": asdict(worker.task)}))
                    worker.process.stdin.flush()
            for selected, _ in selector.select(timeout=1.0):
                worker = workers[selected.fd]
                try:
                    chunk = os.read(selected.fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    finish(worker, "died")
                    continue
                worker.buffer += chunk
                *lines, worker.buffer = worker.buffer.split(b"\n")
                for line in lines:
                    message = unsign(key, line + b"\n")
                    if message is None:
                        continue
                    worker.seen = time.monotonic()
                    event = message.get("event")
                    if event == "ready":
                        worker.ready = True
                    elif event == "fatal" and worker.task is not None and message.get("task") == worker.task.id:
                        results[worker.task.id] = _not_graded(worker.task, "the grader failed on this notebook:\n"
                                                              + str(message.get("message", "")))
                        worker.task = None
                    elif event == "fatal":
                        fatal = str(message.get("message", ""))
                    elif worker.task is not None and message.get("task") == worker.task.id:
                        if event == "cell":
                            worker.cell = int(message["cell"])
                        elif event == "kernel":
                            worker.kernels.add(int(message["pid"]))
                        elif event == "done":
                            results[worker.task.id] = NotebookResult(**message["result"])
                            worker.task, worker.cell = None, None
            now = time.monotonic()
            for worker in list(workers.values()):
                if worker.task is not None and now - worker.seen > stall:
                    finish(worker, f"stopped answering for {stall:g} s")
            while (len(workers) < jobs and failed_starts < 3 and spawns_left > 0
                   and len(queue) > sum(1 for w in workers.values() if w.task is None)):  # fmt: skip
                spawn()
    finally:
        for worker in list(workers.values()):
            try:
                worker.process.stdin.write(sign(key, {"event": "stop"}))
                worker.process.stdin.flush()
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for worker in list(workers.values()):
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(worker.process.pid)
                worker.process.wait()
        log_file.close()
    reason = fatal or "no grading process could start (see the log)"
    for task in queue:
        results.setdefault(task.id, _not_graded(task, reason))
    for task in tasks:
        results.setdefault(task.id, _not_graded(task, reason))
    return results


def _not_graded(task: Task, reason: str) -> NotebookResult:
    return NotebookResult(task.id, [], [f"not graded: {reason}"], complete=False)
