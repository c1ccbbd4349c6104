"""Fixtures shared by the optimizer tests: one thread for every test here; float64 for those that opt in."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread_here(one_thread):
    """Every optimizer test runs on one thread (the fixture in tests/conftest.py)."""
    yield


@pytest.fixture
def float64():
    """float64 as the default dtype for one test: torch.optim keeps its step counters (and NAdam its
    running product) in the default dtype, so comparisons with it at float64 round-off need this.
    Opt in with ``pytestmark = pytest.mark.usefixtures("float64")`` or by naming the fixture."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
