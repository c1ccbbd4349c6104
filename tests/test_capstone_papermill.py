"""The capstone notebook, run the way a cluster runs it: papermill with parameters on the command line.

Equivalent to ``papermill lessons/12_capstone_layer_adaptive_adamw.ipynb OUT.ipynb -p preset smoke
-p out_dir DIR``; the test checks that ``DIR/results.json`` holds every variant and seed with a
finite validation loss, the settings, the environment and every verdict, and that the summary
table is rebuilt from that file alone (``python -m course_lib.capstone --summarize DIR``). It
reports how long the notebook took and how long each of its cells took (papermill records both).
The report goes to the terminal whatever the capture mode (no ``-s`` needed), into the JUnit XML
as properties, and into pytest's cache, where
``pytest --cache-show 'capstone/*'`` shows the last measurement. Speed is reported, never
asserted.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from course_lib.capstone import PAPER_VARIANTS, PRESETS
from course_lib.capstone import summary_table as summarize

papermill = pytest.importorskip("papermill", reason="papermill (in the dev extra) runs the capstone notebook")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "lessons" / "12_capstone_layer_adaptive_adamw.ipynb"


def slowest_cells(notebook: dict, n: int = 3) -> list[tuple[float, str]]:
    """The ``n`` longest cells of an executed notebook: (seconds, first line), from papermill's metadata."""
    cells = []
    for cell in notebook["cells"]:
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell["cell_type"] == "code" and seconds is not None:
            source = "".join(cell["source"]).strip().splitlines()
            cells.append((float(seconds), source[0][:60] if source else ""))
    return sorted(cells, reverse=True)[:n]


def test_smoke_preset_runs_under_papermill_and_writes_results(tmp_path, record_property, capsys, request):
    out_dir = tmp_path / "runs"
    started = time.perf_counter()
    executed = papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "capstone.ipynb"),
        parameters={"preset": "smoke", "out_dir": str(out_dir)},
        kernel_name="python3", cwd=str(NOTEBOOK.parent), progress_bar=False,
        execution_timeout=300)
    seconds = time.perf_counter() - started
    slowest = slowest_cells(executed)
    record_property("notebook_seconds", round(seconds, 1))
    for i, (cell_seconds, first_line) in enumerate(slowest):
        record_property(f"slowest_cell_{i + 1}", f"{cell_seconds:.1f} s: {first_line}")
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        cache.set("capstone/papermill_smoke", {"seconds": round(seconds, 1), "slowest_cells": slowest})
    with capsys.disabled():  # shown with or without -s
        print(f"\n[capstone papermill, smoke preset] {seconds:.1f} s in all; slowest cells: "
              + "; ".join(f"{t:.1f} s {line!r}" for t, line in slowest))

    record = json.loads((out_dir / "results.json").read_text())
    runs = record["runs"]
    expected = {(v, s) for v in [*PAPER_VARIANTS, "control"] for s in PRESETS["smoke"]["seeds"]}
    assert {(r["name"], r["seed"]) for r in runs} == expected
    for r in runs:
        assert math.isfinite(r["val_loss"]), r["name"]
        assert r["tokens_per_s"] > 0 and r["steps"] == PRESETS["smoke"]["steps"]
        assert r["mfu"] is None or 0 < r["mfu"] < 1
    # the complete record: settings, commit and environment, every variant's verdict with its interval
    assert record["config"]["preset"] == "smoke" and record["config"]["steps"] == PRESETS["smoke"]["steps"]
    assert {"commit", "torch", "cuda", "device", "device_name"} <= set(record["environment"])
    assert set(record["comparisons"]) == {"layer_adaptive", "multipliers_only", "eps_only", "control"}
    for c in record["comparisons"].values():
        assert c["verdict"] in ("higher", "lower", "none", "no yardstick") and c["interval"] is not None
    # the table, rebuilt from the file alone
    table = summarize(out_dir)
    assert all(v in table for v in [*PAPER_VARIANTS, "control"])
    with capsys.disabled():
        print(table)
