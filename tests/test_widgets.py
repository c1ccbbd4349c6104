"""course_lib.viz.widgets: the headless sweep over a widget's controls, and every lesson using it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import ipywidgets as w
import matplotlib
import matplotlib.pyplot as plt
import pytest

from course_lib.viz import widgets

matplotlib.use("agg")
ROOT = Path(__file__).resolve().parents[1]


def test_settings_are_the_defaults_then_each_end_of_each_control():
    controls = {
        "lr": w.FloatLogSlider(value=0.1, base=10, min=-3, max=1),
        "steps": w.IntSlider(value=5, min=1, max=9),
        "mode": w.Dropdown(options=[("sgd", "a"), ("adam", "b"), ("lion", "c")], value="b"),
        "nesterov": w.Checkbox(value=False),
        "beta": w.SelectionSlider(options=[0.0, 0.9, 0.99], value=0.99),
    }
    got = widgets.settings(controls)
    base = {"lr": 0.1, "steps": 5, "mode": "b", "nesterov": False, "beta": 0.99}
    assert got[0] == base
    changed = [{k: v for k, v in s.items() if v != base[k]} for s in got[1:]]
    assert len(changed) == 8  # the ends equal to a default are not repeated
    assert all(len(c) == 1 for c in changed)
    assert math.isclose(changed[0]["lr"], 1e-3) and math.isclose(changed[1]["lr"], 10.0)
    assert changed[2:] == [{"steps": 1}, {"steps": 9}, {"mode": "a"}, {"mode": "c"}, {"nesterov": True}, {"beta": 0.0}]


def test_sweep_calls_the_function_at_every_setting_and_discards_figures():
    seen = []

    def explore(lr, n, ax=None):
        seen.append((lr, n))
        plt.plot([0, 1], [lr, n])
        plt.show()
        print("not shown")

    show = plt.show
    n_calls = widgets.sweep(explore, {"lr": (0.0, 2.0), "n": [1, 2, 3]})
    assert plt.show is show and plt.get_fignums() == []
    assert n_calls == len(seen) == 4
    assert seen == [(1.0, 1), (0.0, 1), (2.0, 1), (1.0, 3)]


def test_a_failing_setting_is_named_in_the_error():
    def explore(lr):
        if lr > 5:
            raise FloatingPointError("loss is nan")

    with pytest.raises(widgets.WidgetCallbackError, match=r"explore\(lr=31\.6\d*\) raised FloatingPointError: loss is nan"):
        widgets.sweep(explore, {"lr": w.FloatLogSlider(value=0.1, base=10, min=-2, max=1.5)})
    assert plt.show.__module__ == "matplotlib.pyplot"  # restored after a failure too


def test_a_control_that_is_not_a_widget_or_an_abbreviation_is_rejected():
    with pytest.raises(TypeError, match="control 'lr'"):
        widgets.sweep(lambda lr: None, {"lr": object()})


@pytest.mark.parametrize("env, expected_calls", [("", 1), ("1", 4)])
def test_interact_sweeps_only_when_asked(monkeypatch, env, expected_calls):
    monkeypatch.setenv(widgets.SWEEP_ENV, env)
    seen = []
    widgets.interact(lambda lr, ax=None: seen.append(lr), lr=w.FloatSlider(value=0.5, min=0.0, max=1.0))
    # interact itself calls the callback once at the defaults; the sweep adds the defaults and both ends
    assert len(seen) == expected_calls
    assert seen[-1] == 0.5


def _widget_cells() -> list[tuple[str, str]]:
    cells = []
    for md in sorted((ROOT / "lessons").glob("*.md")):
        for block in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", md.read_text(), flags=re.S):
            if "interact(" in block or "ipywidgets" in block:
                cells.append((md.name, block))
    return cells


def test_there_are_widget_cells():
    assert _widget_cells()


@pytest.mark.parametrize("lesson, cell", _widget_cells(), ids=[name for name, _ in _widget_cells()])
def test_every_widget_goes_through_course_lib_interact_and_is_ignored_by_nbval(lesson, cell):
    assert "# NBVAL_IGNORE_OUTPUT" in cell, f"{lesson}: a widget cell needs '# NBVAL_IGNORE_OUTPUT'"
    assert "remove-output" in cell, f"{lesson}: the book shows the static figure, not the widget cell's output"
    assert re.search(r"from course_lib\.viz\.widgets import[^\n]*\binteract\b", cell), \
        f"{lesson}: use course_lib.viz.widgets.interact so that make test sweeps the callback"
    assert not re.search(r"\bwidgets\.interact(ive)?\(", cell), f"{lesson}: call interact, not ipywidgets' own"
