"""Where a submission's kernel runs: its folders, its environment, and the optional bwrap sandbox.

Each notebook gets three folders of its own under the grading folder:

- ``work/``: the kernel's working directory, holding the submitted notebook and nothing else;
- ``lib/``: a fresh copy of the ``course_lib`` package the grader itself imports (the checks and the
  library), the only entry of the kernel's ``PYTHONPATH``: no repository, no ``exercises/solutions/``,
  no exercise sources, and a copy a kernel may scribble on without touching the next submission's;
- ``home/``: the kernel's HOME, temporary files, IPython profile and connection file.

The kernel gets a minimal environment (none of the instructor's other variables) and runs in its own
session. With ``sandbox="bwrap"`` it runs under bubblewrap: no network, its own process and IPC
namespaces, a read-only view of the Python installation and of ``lib/``, write access to ``work/`` and
``home/`` only, and nothing else of the file system (not the repository, not the instructor's home).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import course_lib

__all__ = ["Workspace", "SANDBOXES", "bwrap_available", "kernel_environment", "wrap"]

SANDBOXES = ("none", "bwrap")
_LIBRARY = Path(course_lib.__file__).resolve().parent
# Variables a kernel may inherit: the locale, the thread counts and the numerics of the machine.
_PASSED = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
           "OPENBLAS_NUM_THREADS", "ATEN_CPU_CAPABILITY", "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED")  # fmt: skip


@dataclass(frozen=True)
class Workspace:
    """The three folders of one notebook's kernel (see the module's docstring)."""

    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def create(self, notebook_name: str, notebook_text: str) -> None:
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self.work.mkdir(parents=True)
        (self.work / notebook_name).write_text(notebook_text, encoding="utf-8")
        shutil.copytree(_LIBRARY, self.lib / "course_lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for sub in ("tmp", "ipython/profile_default/startup", "mpl"):
            (self.home / sub).mkdir(parents=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def kernel_environment(space: Workspace) -> dict[str, str]:
    """The whole environment of a kernel: a few of the grader's variables and its own folders."""
    env = {name: os.environ[name] for name in _PASSED if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env.setdefault("OMP_NUM_THREADS", "1")  # one core per job; small models run faster on one thread anyway
    env.update(
        HOME=str(space.home),
        TMPDIR=str(space.home / "tmp"),
        IPYTHONDIR=str(space.home / "ipython"),
        MPLCONFIGDIR=str(space.home / "mpl"),
        MPLBACKEND="Agg",  # figures are not graded; skip rendering them
        PYTHONPATH=str(space.lib),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


def bwrap_available() -> bool:
    """Whether bubblewrap is installed and can make a sandbox here (it needs user namespaces)."""
    executable = shutil.which("bwrap")
    if executable is None:
        return False
    import subprocess

    probe = [executable, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--die-with-parent",
             "--dev", "/dev", "--proc", "/proc", "true"]  # fmt: skip
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _python_binds() -> list[tuple[str, str]]:
    """(source, destination) of the folders the kernel's Python needs, the installation and the virtual
    environment, each seen at the path Python knows it by and at its real path."""
    binds = set()
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        real = os.path.realpath(prefix)
        binds |= {(real, prefix), (real, real)}
    return sorted(b for b in binds if not b[1].startswith(("/usr/", "/bin/", "/lib")))


# What of /etc a Python process needs: the dynamic linker's cache, users and groups, the time zone.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf", "alternatives")


def wrap(command: list[str], space: Workspace, sandbox: str) -> list[str]:
    """``command`` as it runs in ``sandbox`` ("none": unchanged)."""
    if sandbox == "none":
        return command
    if sandbox != "bwrap":
        raise ValueError(f"unknown sandbox {sandbox!r}; expected one of {SANDBOXES}")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise RuntimeError("--sandbox bwrap needs bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)")
    args = [bwrap, "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--new-session", "--cap-drop", "ALL", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # fmt: skip
    for system in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(system):
            args += ["--symlink", os.readlink(system), system]
        elif os.path.exists(system):
            args += ["--ro-bind", system, system]
    for name in _ETC:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for source, destination in _python_binds():
        args += ["--ro-bind", source, destination]
    args += ["--ro-bind", str(space.lib), str(space.lib)]
    args += ["--bind", str(space.work), str(space.work), "--bind", str(space.home), str(space.home)]
    args += ["--chdir", str(space.work)]
    return args + ["--", *command]
