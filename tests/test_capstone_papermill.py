"""The capstone notebook, run the way a cluster runs it: papermill with parameters on the command line.

Equivalent to ``papermill lessons/12_capstone_layer_adaptive_adamw.ipynb OUT.ipynb -p preset smoke
-p out_dir DIR``; the test checks that ``DIR/results.json`` holds every variant and seed with a
finite validation loss, and reports how long the notebook took (``-s`` or ``-rP`` shows it; the
time is also recorded as a JUnit property).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from course_lib.capstone import PAPER_VARIANTS, PRESETS

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "lessons" / "12_capstone_layer_adaptive_adamw.ipynb"


def test_smoke_preset_runs_under_papermill_and_writes_results(tmp_path, record_property):
    out_dir = tmp_path / "runs"
    started = time.perf_counter()
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "capstone.ipynb"),
        parameters={"preset": "smoke", "out_dir": str(out_dir)},
        kernel_name="python3", cwd=str(NOTEBOOK.parent), progress_bar=False,
        execution_timeout=300)
    seconds = time.perf_counter() - started
    record_property("notebook_seconds", round(seconds, 1))
    print(f"\nthe capstone notebook (smoke preset) ran in {seconds:.1f} s under papermill")

    runs = json.loads((out_dir / "results.json").read_text())["runs"]
    expected = {(v, s) for v in [*PAPER_VARIANTS, "control"] for s in PRESETS["smoke"]["seeds"]}
    assert {(r["name"], r["seed"]) for r in runs} == expected
    for r in runs:
        assert math.isfinite(r["val_loss"]), r["name"]
        assert r["tokens_per_s"] > 0 and r["steps"] == PRESETS["smoke"]["steps"]
        assert r["mfu"] is None or 0 < r["mfu"] < 1
