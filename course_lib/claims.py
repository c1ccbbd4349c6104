"""Claims a lesson makes about its own runs, checked in the cell that makes them.

A lesson that says "warmup does not rescue this rate" runs the experiment and then calls
:func:`claim` with the outcome, the sentence it supports and the numbers it rests on::

    claim(linear_off > 3.5, "the linear rule overshoots the best rate by more than a grid step",
          linear_off=linear_off)

What happens when a claim does not hold depends on who runs the notebook:

* **The book build and the tests** (``COURSE_CLAIMS=strict``, which ``make book`` and ``make test``
  set) raise :class:`ClaimFailed`: a claim that stops holding fails the build instead of going stale.
* **A student's own run** (the variable unset: Colab, JupyterLab, papermill) shows a note that says
  what the text claimed, what this run measured, and that such results vary with the hardware;
  the notebook goes on.
* **The portability check** (``COURSE_CLAIMS_LOG=file.jsonl``) appends one JSON line per claim,
  held or not, so that one run lists every claim that fails on a kernel path, not just the first.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

__all__ = ["claim", "ClaimFailed", "MODE_VARIABLE", "LOG_VARIABLE"]

MODE_VARIABLE = "COURSE_CLAIMS"
LOG_VARIABLE = "COURSE_CLAIMS_LOG"
_REPR_LIMIT = 160


class ClaimFailed(AssertionError):
    """A claim of the text did not hold in this run (raised only under ``COURSE_CLAIMS=strict``)."""


def _short(value: Any) -> str:
    """A short, readable form of a measured value: numbers with 4 significant digits."""
    count = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", None)
    if count == 1 and callable(getattr(value, "item", None)):  # NumPy and torch scalars, one-element arrays
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        inner = ", ".join(_short(v) for v in value)
        text = f"[{inner}]" if isinstance(value, list) else f"({inner})"
    elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
        text = "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _measured_text(measured: dict[str, Any]) -> str:
    return "; ".join(f"{name} = {_short(value)}" for name, value in measured.items())


def _record(holds: bool, text: str, measured: dict[str, Any]) -> None:
    path = os.environ.get(LOG_VARIABLE)
    if not path:
        return
    entry = {"claim": text, "holds": holds, "measured": _measured_text(measured),
             "notebook": os.environ.get("COURSE_NOTEBOOK", "")}
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


def _show_note(text: str, measured: dict[str, Any]) -> None:
    """Tell a student, in the notebook, that their run disagrees with the text."""
    numbers = _measured_text(measured)
    lines = [
        "**A claim of the text did not hold in your run.**",
        "",
        f"- The text claims: {text}.",
        f"- Your run measured: {numbers}." if numbers else "- Your run measured something else (see the output above).",
        "",
        "Training runs differ in their last bits between CPUs, GPUs, thread counts and library versions, and "
        "some experiments amplify that. The book's claims were checked on several of those; yours is one more. "
        "Read the text's conclusion with your numbers in mind, and try another seed to see the spread.",
    ]
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown("\n".join(lines)))
            return
    except ImportError:
        pass
    print("\n".join(lines), file=sys.stderr)


def claim(holds: Any, text: str, **measured: Any) -> None:
    """Check a claim the text makes about this run.

    It returns nothing, so that a cell ending with a claim shows no stray ``True``.

    Args:
        holds: the outcome of the check (anything with a truth value; a NumPy or torch boolean too).
        text: the claim as the text states it, e.g. ``"cosine ends below every constant rate"``.
        **measured: the numbers the claim rests on, shown when it fails (``best_lr=0.03``).

    Raises:
        ClaimFailed: if the claim does not hold and ``COURSE_CLAIMS=strict`` (the book build, the tests).
        ValueError: if ``text`` is empty, or the mode is not one this module knows.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must state the claim, e.g. 'cosine ends below every constant rate'")
    mode = os.environ.get(MODE_VARIABLE, "").strip().lower()
    if mode not in ("", "strict", "warn"):
        raise ValueError(f"{MODE_VARIABLE} must be 'strict', 'warn' or unset, got {mode!r}")
    holds = bool(holds)
    _record(holds, text, measured)
    if holds:
        return
    if mode == "strict":
        numbers = _measured_text(measured)
        raise ClaimFailed(f"the text claims: {text}" + (f"; this run measured: {numbers}" if numbers else ""))
    _show_note(text, measured)
