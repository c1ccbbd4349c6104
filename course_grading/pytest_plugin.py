"""A pytest plugin that records each notebook cell's result as nbval runs it.

Loaded by the grader with ``-p course_grading.pytest_plugin --grading-log results.jsonl``. Every
cell's outcome is appended to the log as one JSON line as soon as it is known, so results survive
even if the run is stopped later.

A cell counts as passed when it ran without error. nbval marks every cell after a timeout in the same
notebook as expected to fail; such a cell still counts as passed if it ran cleanly, and as failed if
it did not. Each record also says whether the notebook's kernel was still alive after the cell
(``kernel_alive``): nbval shuts the kernel down when a cell cannot be interrupted at the timeout, and
the grader then runs the notebook again without that cell.
"""

from __future__ import annotations

import json

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("grading").addoption(
        "--grading-log", default=None, help="append each notebook cell's result to this JSON-lines file"
    )


def _outcome(report: pytest.TestReport) -> str | None:
    """passed, failed or skipped for the phases that decide a cell; None for the others."""
    if report.when == "call":
        if hasattr(report, "wasxfail"):  # run under nbval's "previous cell timed out" xfail
            return "passed" if report.outcome == "passed" else "failed"
        return report.outcome
    if report.when == "setup" and report.outcome != "passed":
        return "skipped" if report.outcome == "skipped" else "failed"
    return None


class _Recorder:
    def __init__(self, path: str) -> None:
        self.path = path

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        if call.when != "call":
            return
        kernel = getattr(getattr(item, "parent", None), "kernel", None)  # nbval's notebook holds the kernel
        try:
            alive = None if kernel is None else bool(kernel.is_alive())
        except Exception:  # a kernel manager that is gone
            alive = False
        outcome.get_result().grading_kernel_alive = alive

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = _outcome(report)
        if outcome is None or "::Cell " not in report.nodeid:
            return
        notebook, cell = report.nodeid.rsplit("::Cell ", 1)
        record = {
            "notebook": notebook,
            "cell": int(cell),
            "outcome": outcome,
            "message": report.longreprtext if outcome == "failed" else "",
            "duration": round(report.duration, 3),
            "kernel_alive": getattr(report, "grading_kernel_alive", None),
        }
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--grading-log")
    if path:
        config.pluginmanager.register(_Recorder(path), "grading-recorder")
