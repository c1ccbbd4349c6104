"""Processes: reaping what a submission leaves behind, and how many cores are free.

A grading process becomes a *child subreaper* (Linux): a process that a kernel starts and abandons (a
double fork, ``setsid``) is re-parented to it instead of to init, so that :func:`kill_orphans` finds
and kills it when the notebook is done. A kernel dies with the grading process that started it
(:func:`die_with_parent`). The supervisor is no subreaper: an orphan that reached it could signal it.
Elsewhere than on Linux these are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

__all__ = ["become_subreaper", "die_with_parent", "kill_orphans", "kill_group", "free_cores"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux); True if it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """In a child before it runs its program: be killed when the parent dies (Linux; else nothing)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir() if sys.platform.startswith("linux") else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by ``pid`` (and ``pid`` itself); ignore processes already gone."""
    for kill in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def kill_orphans(keep: set[int] = frozenset()) -> int:
    """Kill and reap this process's children other than ``keep`` (abandoned descendants of a kernel that
    were re-parented here) and their groups; return how many were found."""
    count = 0
    for _ in range(20):  # killing one may re-parent its own children here
        children = [pid for pid in _children(os.getpid()) if pid not in keep]
        if not children:
            break
        for pid in children:
            kill_group(pid)
            count += 1
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return count


def free_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota if there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)
