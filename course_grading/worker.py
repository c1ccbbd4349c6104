"""A grading process: ``python -m course_grading.worker``, started and fed by :mod:`.supervisor`.

It reads its settings, then one task at a time, from its standard input, and writes what happens (the
cell it is about to run, each notebook's result) to its standard output, one line per message. Every
line in both directions carries an HMAC under a key that only the supervisor and this process know
(it arrives on the first line of standard input, never in the environment or on the command line), so
a kernel that finds this process's pipes cannot forge a result. Kernels never inherit these pipes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

__all__ = ["main", "library_digest", "sign", "unsign"]


def sign(key: bytes, message: dict) -> bytes:
    payload = json.dumps(message, separators=(",", ":"))
    return f"{hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()} {payload}\n".encode()


def unsign(key: bytes, line: bytes) -> dict | None:
    """The message of a signed line, or None if the signature does not match."""
    try:
        mac, payload = line.decode().rstrip("\n").split(" ", 1)
    except (UnicodeDecodeError, ValueError):
        return None
    if not hmac.compare_digest(mac, hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()):
        return None
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def library_digest(folder: Path) -> str:
    """A digest of the ``.py`` files of a package: the checks a worker imports must be the ones the
    grading started with (a kernel outside a sandbox can write where the instructor can)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> int:
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by accident goes to the log, not to the channel
    config = json.loads(sys.stdin.buffer.readline())
    key = bytes.fromhex(config["key"])

    def send(message: dict) -> None:
        channel.write(sign(key, message))

    try:
        from .procs import become_subreaper, kill_orphans

        become_subreaper()
        import course_lib
        import torch

        if library_digest(Path(course_lib.__file__).resolve().parent) != config["library"]:
            send({"event": "fatal", "message": "course_lib changed on disk while grading ran; grade again"})
            return 1
        torch.set_num_threads(1)
        from .exercises import load_exercises
        from .runner import Settings, Task, run_notebook

        exercises = {e.name: e for e in load_exercises(config["exercises"])}
        settings = Settings(**config["settings"])
    except Exception:
        send({"event": "fatal", "message": traceback.format_exc()[-2000:]})
        return 1
    send({"event": "ready"})
    for line in sys.stdin.buffer:
        message = unsign(key, line)
        if message is None:
            continue
        if message.get("event") == "stop":
            break
        task = Task(**message["task"])

        def progress(cell: int, kernel: int | None = None, task_id: int = task.id) -> None:
            if kernel is not None:
                send({"event": "kernel", "task": task_id, "pid": kernel})
            else:
                send({"event": "cell", "task": task_id, "cell": cell})

        try:
            result = run_notebook(task, exercises[task.exercise], settings, progress)
        except Exception:
            send({"event": "fatal", "message": traceback.format_exc()[-2000:], "task": task.id})
            return 1
        orphans = kill_orphans()  # what the notebook's kernels started and left behind
        if orphans:
            result.notes.append(f"the notebook left {orphans} process(es) running after its kernel ended; they were killed")
        send({"event": "done", "task": task.id, "result": asdict(result)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
