"""course_lib.claims: a failed claim fails the build, informs a student, and is logged for the portability check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from course_lib.claims import ClaimFailed, claim


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv("COURSE_CLAIMS", "strict")
    monkeypatch.delenv("COURSE_CLAIMS_LOG", raising=False)


@pytest.fixture
def student(monkeypatch):
    monkeypatch.delenv("COURSE_CLAIMS", raising=False)
    monkeypatch.delenv("COURSE_CLAIMS_LOG", raising=False)


def test_a_claim_that_holds_is_silent_in_every_mode(monkeypatch, capsys):
    for mode in ["strict", "warn", ""]:
        monkeypatch.setenv("COURSE_CLAIMS", mode)
        assert claim(2 > 1, "two exceeds one") is None  # nothing for a cell to display
    assert capsys.readouterr() == ("", "")


def test_strict_mode_raises_with_the_claim_and_the_measured_numbers(strict):
    with pytest.raises(ClaimFailed) as info:
        claim(0.31 < 0.25, "the gap stays under a quarter", worst=0.3125, seeds=[0, 1, 2])
    message = str(info.value)
    assert "the gap stays under a quarter" in message
    assert "worst = 0.3125" in message and "seeds = [0, 1, 2]" in message
    assert isinstance(info.value, AssertionError)  # nbval and pytest treat it as a failed assertion


def test_a_students_run_goes_on_and_says_what_was_claimed_and_measured(student, capsys):
    assert claim(False, "warmup rescues the scaled rate", final_loss=np.float64(2.302585)) is None
    err = capsys.readouterr().err
    assert "The text claims: warmup rescues the scaled rate." in err
    assert "Your run measured: final_loss = 2.303." in err
    assert "vary" in err or "differ" in err  # says that results depend on the machine


def test_a_students_run_in_ipython_shows_markdown(student, monkeypatch):
    shown = []
    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    claim(False, "cosine ends lowest", loss=torch.tensor(0.5))
    assert len(shown) == 1 and "cosine ends lowest" in shown[0].data and "loss = 0.5" in shown[0].data


def test_every_claim_is_logged_with_its_outcome(monkeypatch, tmp_path):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("COURSE_CLAIMS", "warn")
    monkeypatch.setenv("COURSE_CLAIMS_LOG", str(log))
    monkeypatch.setenv("COURSE_NOTEBOOK", "lessons/05_large_batch.ipynb")
    claim(True, "first holds", x=1)
    claim(np.bool_(False), "second fails", ratio=float("nan"))
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["claim"], e["holds"]) for e in entries] == [("first holds", True), ("second fails", False)]
    assert entries[1]["measured"] == "ratio = nan"
    assert entries[0]["notebook"] == "lessons/05_large_batch.ipynb"


def test_long_values_are_shortened(strict):
    with pytest.raises(ClaimFailed) as info:
        claim(False, "a long list", values=list(range(1000)))
    assert len(str(info.value)) < 300 and "..." in str(info.value)


@pytest.mark.parametrize("text", ["", "   ", None])
def test_a_claim_must_state_what_it_claims(strict, text):
    with pytest.raises(ValueError, match="text must state the claim"):
        claim(True, text)


def test_an_unknown_mode_is_named(monkeypatch):
    monkeypatch.setenv("COURSE_CLAIMS", "lenient")
    with pytest.raises(ValueError, match="COURSE_CLAIMS must be 'strict', 'warn' or unset, got 'lenient'"):
        claim(True, "anything")


def test_a_tensor_with_many_elements_has_no_single_truth_value(strict):
    with pytest.raises(RuntimeError):
        claim(torch.tensor([True, False]), "ambiguous")
