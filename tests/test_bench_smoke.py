"""benchmarks/bench_optim_step.py runs end to end at a tiny scale and writes the fields the status page reads.

No timing is asserted: the figures of a shared machine are too noisy, and speed is the benchmark's
business, not the test suite's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_optim_step.py"
ROW_FIELDS = {"implementation", "path", "median_ms", "iqr_ms", "bandwidth_GBps", "fraction_of_copy_bandwidth",
              "state_MB", "peak_extra_MB", "page_faults_per_step", "ratio_to_best_torch_loop_or_foreach",
              "ratio_at_lower_quartile"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_optim_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_json_and_markdown(bench, tmp_path, monkeypatch, capsys):
    """The whole run, in this process: the memory workers' fresh processes (an interpreter start each, most
    of the run's time) are replaced by calls of the worker's own entry point, main(), here."""
    workers = []

    def run_worker_here(command, **kwargs):
        assert command[:3] == [sys.executable, str(BENCH), "--memory-worker"]
        assert command[command.index("--scale") + 1] == "0.01"
        workers.append(command[3])
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [str(BENCH)] + command[2:])
        bench.main()
        return subprocess.CompletedProcess(command, 0, stdout=capsys.readouterr().out, stderr="")

    monkeypatch.setattr(bench.subprocess, "run", run_worker_here)
    json_path, md_path = tmp_path / "step.json", tmp_path / "step.md"
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--scale", "0.01", "--repeats", "2", "--warmup", "0",
                                      "--only", "course_lib (default)", "torch foreach=False",
                                      "--out", str(json_path), "--out", str(md_path)])
    bench.main()
    assert workers == ["course_lib (default)", "torch foreach=False"]
    report = json.loads(json_path.read_text())
    assert {"date", "command", "device", "device_name", "torch", "threads", "n_tensors", "n_params", "scale",
            "repeats", "copy_bandwidth_GBps", "rows"} <= set(report)
    assert report["scale"] == 0.01 and report["n_tensors"] == 76
    assert report["n_params"] == sum(math.prod(shape) for shape in bench.scaled_shapes(0.01))
    assert [r["implementation"] for r in report["rows"]] == ["course_lib (default)", "torch foreach=False"]
    for row in report["rows"]:
        assert ROW_FIELDS <= set(row)
        for key in ("median_ms", "bandwidth_GBps", "fraction_of_copy_bandwidth", "state_MB",
                    "ratio_to_best_torch_loop_or_foreach", "ratio_at_lower_quartile"):
            assert row[key] > 0, (key, row)
    assert report["rows"][1]["ratio_to_best_torch_loop_or_foreach"] == 1.0  # the only torch reference
    table = md_path.read_text()
    assert "GB/s moved" in table and "course_lib (default)" in table


def test_scale_shrinks_every_dimension_but_keeps_the_layout(bench):
    full, tiny = bench.scaled_shapes(1.0), bench.scaled_shapes(0.01)
    assert full == bench.gpt2_like_shapes() and len(tiny) == len(full) == 76
    assert sum(math.prod(shape) for shape in full) == 29_663_232
    assert all(len(a) == len(b) for a, b in zip(full, tiny))
    assert max(max(s) for s in tiny) == 205  # the vocabulary, 20480 * 0.01 rounded


@pytest.mark.parametrize("scale", ["0", "1.5", "-1"])
def test_bad_scale_is_rejected(bench, monkeypatch, capsys, scale):
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--scale", scale])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--scale must be in (0, 1]" in capsys.readouterr().err
