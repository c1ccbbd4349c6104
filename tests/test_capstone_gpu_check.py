"""``make gpu-check`` on a machine without a GPU: the offline install, then the check's plumbing on the CPU.

The test runs the Makefile's own commands: ``benchmarks/offline_env.py`` makes a scratch
environment over this Python's packages, pip installs course_lib into it with the Makefile's
``GPU_PIP_FLAGS`` (no index, no build isolation, no dependencies: nothing can come from the
network), and ``benchmarks/gpu_check.py`` runs from outside the checkout. Its record must say
that the GPU figures were not measured. Speeds are not asserted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def makefile_pip_flags() -> list[str]:
    """The pip flags that ``make gpu-env`` and ``make gpu-check`` use, read from the Makefile."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^GPU_PIP_FLAGS\s*:?=\s*(.+)$", text, flags=re.MULTILINE)
    assert match, "GPU_PIP_FLAGS is not defined in the Makefile"
    return shlex.split(match.group(1))


def test_the_makefile_installs_without_network():
    flags = makefile_pip_flags()
    assert {"--no-deps", "--no-build-isolation", "--no-index"} <= set(flags)
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^gpu-env:", text, flags=re.MULTILINE) and re.search(r"^gpu-check:", text, flags=re.MULTILINE)


def test_offline_install_then_gpu_check_on_the_cpu(tmp_path):
    env_dir = tmp_path / "env"
    env = {**os.environ, "PIP_NO_INDEX": "1", "OMP_NUM_THREADS": "1", "COURSE_DEVICE": "cpu"}
    env.pop("PYTHONPATH", None)  # course_lib must come from the install
    made = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "offline_env.py"), str(env_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    python = env_dir / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", *makefile_pip_flags(), "--ignore-installed",
                                "-e", str(ROOT)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    where = subprocess.run([str(python), "-c", "import course_lib; print(course_lib.__file__)"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).parent == ROOT / "course_lib", where.stderr

    out = tmp_path / "results"
    checked = subprocess.run([str(python), str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out),
                              "--work-dir", str(tmp_path / "work")],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    record = json.loads((out / "gpu_check-cpu.json").read_text())
    assert record["gpu_measured"] is False and "NOT measured" in record["note"]
    assert "NOT measured" in checked.stdout
    assert set(record["runs"]["results"]) == {"adamw", "layer_adaptive"}
    for r in record["runs"]["results"].values():
        assert r["val_loss"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] is None
    for key in ("breakdown", "paper_probe"):
        assert set(record[key]["parts_ms"]) == {"data", "forward_backward", "clip", "optimizer"}
    assert record["paper_probe"]["model"]["vocab_size"] == 50257
    assert record["environment"]["torch"] and record["environment"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_check_on_the_gpu_records_measured_figures(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(next(tmp_path.glob("gpu_check-*.json")).read_text())
    assert record["gpu_measured"] is True
