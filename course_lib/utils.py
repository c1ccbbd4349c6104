"""Small helpers every lesson uses: seeding, device choice, and showing course_lib's own source."""

from __future__ import annotations

import inspect
import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "pick_device", "show_source", "source_of", "glue"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators; return a fresh torch generator seeded the same.

    Pass the returned generator to samplers and data loaders so that data order does not depend on how
    many random numbers other code drew before.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(prefer: str | None = None) -> torch.device:
    """The device a lesson runs on: ``prefer`` if given, else CUDA when present, else the CPU.

    The environment variable ``COURSE_DEVICE`` overrides the automatic choice (e.g. ``cpu`` to force
    CPU runs on a GPU machine).
    """
    choice = prefer or os.environ.get("COURSE_DEVICE")
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} was asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def source_of(obj) -> str:
    """The source code of a course_lib function or class, as a string."""
    return inspect.getsource(obj)


def show_source(obj):
    """Display the source of ``obj`` with syntax highlighting (in Jupyter and in the book).

    Lessons call this instead of copying code, so the code a reader sees is the code that is tested.
    """
    from IPython.display import Code

    return Code(source_of(obj), language="python")


def glue(name: str, value, display: bool = False):
    """Record ``value`` under ``name`` so that the book's prose can quote it; return ``value``.

    A lesson writes ``{glue:text}`name:.3f``` in its Markdown instead of typing a number, so every
    number in the prose is the one its cell computed when the book was built (myst-nb's glue). Where
    myst-nb is not installed (Colab, a bare JupyterLab), nothing is recorded: the cell's own printed
    output carries the number, and the role stays visible as text. NumPy and torch scalars are recorded
    (and returned) as the Python numbers they hold.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be a Python identifier, got {name!r}")
    # A NumPy or torch scalar is recorded as the Python number it holds: the book formats the recorded
    # text ({glue:text}`name:.2f`), and 'np.float64(0.5)' is not a number it can format.
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        value = value.item()
    try:
        from myst_nb import glue as record
    except ImportError:
        return value
    record(name, value, display=display)
    return value
