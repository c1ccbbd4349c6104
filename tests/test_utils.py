import random

import numpy as np
import pytest
import torch

from course_lib import utils


def test_seed_everything_makes_all_generators_repeat():
    g1 = utils.seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g1).item())
    g2 = utils.seed_everything(7)
    b = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g2).item())
    assert a == b
    with pytest.raises(ValueError, match="seed"):
        utils.seed_everything(-1)


def test_pick_device(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert utils.pick_device() == torch.device("cpu")
    monkeypatch.delenv("COURSE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert utils.pick_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            utils.pick_device("cuda")


def test_show_source_is_the_real_source():
    from course_lib.viz import landscapes

    code = utils.show_source(landscapes.trajectory)
    assert code.data.startswith("def trajectory(")
    assert code.data == utils.source_of(landscapes.trajectory)


def test_glue_records_for_myst_nb_and_returns_the_value(monkeypatch):
    import myst_nb

    recorded = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: recorded.append((name, value, display)))
    assert utils.glue("final_loss", 0.25) == 0.25
    assert recorded == [("final_loss", 0.25, False)]
    assert utils.glue("ratio", np.float64(1.5)) == 1.5 and type(recorded[-1][1]) is float
    assert utils.glue("steps", torch.tensor(7)) == 7 and type(recorded[-1][1]) is int
    with pytest.raises(ValueError, match="identifier"):
        utils.glue("final loss", 1.0)


def test_glue_without_myst_nb_only_returns_the_value(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "myst_nb", None)  # import fails, as in Colab
    assert utils.glue("steps", 42) == 42
