"""Interactive widgets whose callbacks the test suite exercises without a browser.

A lesson's widget is ``interact(explore, lr=FloatLogSlider(...), ...)``: ipywidgets' ``interact``
around a plain plotting function. In JupyterLab or Colab a reader moves the sliders. Headless, nobody
does, so a slider's far end could hide a crash that no reader of the static figure would see. When
the environment variable ``COURSE_LIB_SWEEP_WIDGETS`` is set (``make test`` sets it for the notebook
run), ``interact`` first calls the function at its defaults and then at both ends of every control,
one control at a time, and raises :class:`WidgetCallbackError` naming the setting that failed.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Callable

import ipywidgets
import matplotlib.pyplot as plt

SWEEP_ENV = "COURSE_LIB_SWEEP_WIDGETS"


class WidgetCallbackError(RuntimeError):
    """A widget's callback raised for one of its controls' settings."""


def _as_widget(name: str, control: Any) -> ipywidgets.ValueWidget:
    if isinstance(control, ipywidgets.ValueWidget):
        return control
    widget = ipywidgets.interactive.widget_from_abbrev(control)
    if widget is None:
        raise TypeError(f"control {name!r}: cannot make a widget from {control!r}")
    return widget


def extreme_values(control: ipywidgets.ValueWidget) -> list:
    """The settings at the ends of a control's range (both values of a checkbox)."""
    if isinstance(control, ipywidgets.FloatLogSlider):
        return [control.base ** control.min, control.base ** control.max]
    if isinstance(control, (ipywidgets.widgets.widget_float._BoundedFloat,
                            ipywidgets.widgets.widget_int._BoundedInt)):
        return [control.min, control.max]
    if isinstance(control, ipywidgets.widgets.widget_selection._Selection):
        values = [value for _, value in control._options_full]
        return [values[0], values[-1]]
    if isinstance(control, (ipywidgets.Checkbox, ipywidgets.ToggleButton)):
        return [False, True]
    return []  # free text and the like: only the default is tried


def settings(controls: dict[str, ipywidgets.ValueWidget]) -> list[dict[str, Any]]:
    """The defaults, then each control at each end of its range with the others at their defaults."""
    defaults = {name: control.value for name, control in controls.items()}
    out = [defaults]
    for name, control in controls.items():
        for value in extreme_values(control):
            if value != defaults[name]:
                out.append({**defaults, name: value})
    return out


def sweep(f: Callable[..., Any], controls: dict[str, Any]) -> int:
    """Call ``f`` at every setting of :func:`settings`, with figures and printing discarded.

    Returns the number of calls. Raises :class:`WidgetCallbackError` from the first failure.
    """
    widgets = {name: _as_widget(name, control) for name, control in controls.items()}
    calls = settings(widgets)
    show = plt.show
    plt.show = lambda *args, **kwargs: plt.close("all")
    try:
        for kwargs in calls:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    f(**kwargs)
            except Exception as error:
                args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
                raise WidgetCallbackError(f"{getattr(f, '__name__', 'callback')}({args}) raised "
                                          f"{type(error).__name__}: {error}") from error
            finally:
                plt.close("all")
    finally:
        plt.show = show
    return len(calls)


def interact(f: Callable[..., Any], **controls: Any):
    """ipywidgets' ``interact(f, **controls)``, showing each new figure, returning nothing to display.

    Under ``COURSE_LIB_SWEEP_WIDGETS=1`` the callback is first swept over its controls' ranges.
    """
    widgets = {name: _as_widget(name, control) for name, control in controls.items()}
    if os.environ.get(SWEEP_ENV):
        sweep(f, widgets)

    def callback(**kwargs):  # takes only the controls' names: f's other arguments keep their defaults
        f(**kwargs)
        plt.show()

    return ipywidgets.interact(callback, **widgets)
