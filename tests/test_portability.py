"""benchmarks/portability.py: every claim is recorded on every path, and a claim that fails on one path is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "portability.py"


def test_a_claim_that_holds_on_one_kernel_path_only_is_listed_for_the_others(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import os, torch\nfrom course_lib.claims import claim\n"
                                  "path = torch.backends.cpu.get_cpu_capability()"),
        nbformat.v4.new_code_cell('claim(True, "one plus one is two")'),
        nbformat.v4.new_code_cell('claim(path == "DEFAULT", "this run uses the portable kernels", path=path)'),
        nbformat.v4.new_code_cell('print("the notebook goes on after a failed claim")'),
    ]
    notebook = tmp_path / "tiny.ipynb"
    nbformat.write(nb, notebook)
    out = tmp_path / "portability.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--notebooks", str(notebook), "--workers", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    record = json.loads(out.read_text())
    paths = {p["path"]: p["notebooks"][0] for p in record["paths"]}
    assert "default" in paths and len(paths) >= 2  # the portable kernels and this machine's own (with 2 threads)
    assert paths["default"]["claims"] == 2 and paths["default"]["failed"] == [] and paths["default"]["errors"] == []
    others = [name for name in paths if name != "default"]
    for name in others:
        failed = paths[name]["failed"]
        assert [f["claim"] for f in failed] == ["this run uses the portable kernels"], name
        assert failed[0]["measured"].startswith("path = ")
    assert run.returncode == 1  # failures make the command fail
    assert "FAILED" in run.stdout and "this run uses the portable kernels" in run.stdout
    rows = {row["path"]: row for row in record["table"]}
    assert rows["default"]["claims failed"] == 0 and all(rows[n]["claims failed"] == 1 for n in others)
    assert record["note"].startswith("Failures:") and record["machine"] and record["date"]


def test_an_unknown_path_is_named(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--paths", "sse9", "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 2 and "unknown path(s) ['sse9']" in run.stderr
