"""One submission's Jupyter kernel, started and driven directly over its channels.

The grader reads each cell's *execute reply* (its status), not the error messages the kernel chooses to
publish, so a notebook that hooks IPython's error display still fails where it fails. The kernel runs
in its own session and process group (optionally in the bwrap sandbox, see :mod:`.sandbox`), and dies
with the grading process that started it (so a kernel that killed it cannot go on); its
output goes to a log file of its own, never to the grader's channels. While a cell runs the grader
watches the process: a kernel that dies is noticed within a fraction of a second, not at the cell's
time limit. A cell past its limit is interrupted; one that does not stop is killed with its kernel.
"""

from __future__ import annotations

import ast
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from .procs import die_with_parent, kill_group
from .sandbox import Workspace, kernel_environment, wrap

__all__ = ["Kernel", "KernelError", "Outcome"]

INTERRUPT_GRACE = 10.0  # seconds a cell has to stop once interrupted before its kernel is killed
_POLL = 0.2  # seconds between looks at the kernel process while a cell runs
_SIDE = Path(__file__).with_name("_kernel_side.py")
_STARTUP = """\
def _course_grading_start():
    import sys, types

    module = types.ModuleType("_course_grading_kernel")
    exec(compile({source!r}, "<course grading>", "exec"), module.__dict__)
    sys.modules["_course_grading_kernel"] = module
    module.start()


_course_grading_start()
del _course_grading_start
"""


class KernelError(RuntimeError):
    """The kernel could not be started, or died while the grader talked to it."""


@dataclass
class Outcome:
    """How a cell (or a request of the grader) ended.

    ``status``: ``ok``; ``error`` (an exception; ``ename``/``evalue``); ``timeout`` (past the limit and
    interrupted; the kernel lives on); ``stuck`` (past the limit and not stopping: the kernel was killed);
    ``died`` (the kernel process ended during the cell).
    """

    status: str
    ename: str = ""
    evalue: str = ""
    expressions: dict = field(default_factory=dict)
    seconds: float = 0.0


class Kernel:
    """A kernel for one notebook (see the module's docstring). Use as a context manager."""

    def __init__(self, space: Workspace, *, sandbox: str = "none", startup_timeout: float = 300.0,
                 grading: bool = True) -> None:  # fmt: skip
        self.space = space
        self.grading = grading  # False: a plain kernel, without the grader's side (to time a notebook alone)
        self.sandbox = sandbox
        self.startup_timeout = startup_timeout
        self.pid: int | None = None
        self.exit: tuple[int, object] | None = None  # (status, rusage) once reaped
        self.client: BlockingKernelClient | None = None
        self.cpu_seconds = 0.0
        self._log = None

    # ----- life ---------------------------------------------------------------------------------

    def start(self) -> "Kernel":
        import subprocess

        home = self.space.home
        if self.grading:
            startup = home / "ipython" / "profile_default" / "startup" / "00-course-grading.py"
            startup.write_text(_STARTUP.format(source=_SIDE.read_text(encoding="utf-8")), encoding="utf-8")
        transport = "tcp" if self.sandbox == "none" else "ipc"  # a sandbox has no network, not even loopback
        ip = "127.0.0.1" if transport == "tcp" else str(home / "k")
        connection, _ = write_connection_file(str(home / "kernel.json"), ip=ip, transport=transport,
                                              key=os.urandom(16).hex().encode())  # fmt: skip
        command = [sys.executable, "-m", "ipykernel_launcher", "-f", connection,
                   "--HistoryManager.enabled=False", "--IPKernelApp.log_level=CRITICAL"]  # fmt: skip
        env = kernel_environment(self.space) | {"PYTHONSAFEPATH": "1"}
        self._log = open(home / "kernel.log", "wb")
        process = subprocess.Popen(
            wrap(command, self.space, self.sandbox), cwd=self.space.work, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        self.pid = process.pid
        process.returncode = 0  # this object reaps the process itself (os.wait4, to read its CPU time)
        self.client = BlockingKernelClient(connection_file=connection)
        self.client.load_connection_file()
        self.client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
        msg_id = self.client.kernel_info()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not self.alive():
                raise KernelError(f"the kernel exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise KernelError(f"the kernel did not start within {self.startup_timeout:g} s")
            try:
                reply = self.client.get_shell_msg(timeout=_POLL)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                return self

    def alive(self) -> bool:
        if self.pid is None or self.exit is not None:
            return False
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.exit = (-1, None)
            return False
        if pid == 0:
            return True
        self.exit = (status, rusage)
        self.cpu_seconds = rusage.ru_utime + rusage.ru_stime
        return False

    def close(self) -> float:
        """Kill the kernel and everything in its process group; return its CPU seconds."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        if self.pid is not None and self.exit is None:
            kill_group(self.pid)
            try:
                _, status, rusage = os.wait4(self.pid, 0)
                self.exit = (status, rusage)
                self.cpu_seconds = rusage.ru_utime + rusage.ru_stime
            except ChildProcessError:
                self.exit = (-1, None)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.cpu_seconds

    def __enter__(self) -> "Kernel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = (self.space.home / "kernel.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    # ----- running code -------------------------------------------------------------------------

    def interrupt(self) -> None:
        if self.sandbox == "none":
            kill_group(self.pid, signal.SIGINT)
        else:  # the sandbox's own init would not pass a signal on; ipykernel interrupts itself
            self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))

    def run(self, code: str, timeout: float, *, expressions: dict[str, str] | None = None) -> Outcome:
        """Execute ``code`` (a notebook cell, or empty code with grader's ``expressions``); wait at most
        ``timeout`` seconds, then interrupt, and kill the kernel if it does not stop."""
        started = time.monotonic()
        if not self.alive():
            return Outcome("died")
        silent = expressions is not None
        msg_id = self.client.execute(code, silent=silent, store_history=not silent, user_expressions=expressions or {},
                                     allow_stdin=False, stop_on_error=False)  # fmt: skip
        deadline, interrupted = started + timeout, None
        while True:
            if not self.alive():
                return Outcome("died", seconds=time.monotonic() - started)
            try:
                reply = self.client.get_shell_msg(timeout=_POLL)
            except queue.Empty:
                now = time.monotonic()
                if interrupted is None and now > deadline:
                    self.interrupt()
                    interrupted = now
                elif interrupted is not None and now > interrupted + INTERRUPT_GRACE:
                    self.close()
                    return Outcome("stuck", seconds=now - started)
                continue
            if reply["parent_header"].get("msg_id") != msg_id:
                continue  # the reply to an earlier, interrupted request
            content = reply.get("content", {})
            outcome = Outcome(
                "timeout" if interrupted is not None else ("ok" if content.get("status") == "ok" else "error"),
                ename=str(content.get("ename", "")),
                evalue=str(content.get("evalue", "")),
                expressions=content.get("user_expressions") or {},
                seconds=time.monotonic() - started,
            )
            return outcome

    def evaluate(self, expression: str, timeout: float) -> tuple[Outcome, str | None]:
        """Evaluate a grader's ``expression`` (it returns a string) outside the notebook's cells; the
        outcome, and the string when there is one."""
        outcome = self.run("", timeout, expressions={"answer": expression})
        value = outcome.expressions.get("answer") or {}
        if outcome.status != "ok" or value.get("status") != "ok":
            if value.get("status") == "error" and outcome.status == "ok":
                outcome.status = "timeout" if value.get("ename") == "KeyboardInterrupt" else "error"
                outcome.ename, outcome.evalue = str(value.get("ename", "")), str(value.get("evalue", ""))
            return outcome, None
        try:
            text = ast.literal_eval(str(value.get("data", {}).get("text/plain", "")))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return Outcome("error", "ValueError", "the kernel's answer could not be read"), None
        return outcome, text if isinstance(text, str) else None
