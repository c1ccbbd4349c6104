"""Fixtures shared across the test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread beats waking a second one (by far on a busy machine), and fixes the
    round-off. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def capstone_data_dir(tmp_path_factory) -> str:
    """The capstone's smoke-preset token shards, built once for the whole run."""
    from course_lib import capstone
    from course_lib.capstone import capstone_config

    path = tmp_path_factory.mktemp("capstone_data")
    capstone.prepare_data(capstone_config("smoke", out_dir=str(path), data_dir=str(path), max_bytes=300_000))
    return str(path)
