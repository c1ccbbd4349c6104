"""The capstone's fast step: prefetched batches are the same batches, the step-time breakdown runs.

The loss inside the model (``QwenLM(x, targets)``) and grouped-query attention through SDPA are
tested against their oracles in tests/test_qwen_model.py; host syncs and step times in
tests/test_trainer.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import capstone
from course_lib.capstone import Prefetched, StepBatches, capstone_config, load_run, run_variant
from course_lib.capstone.bench import matmul_tflops, step_breakdown
from course_lib.data import shards
from course_lib.train import Callback

TINY = dict(steps=6, batch_size=4, eval_every=3, eval_batches=1, eval_batch_size=8, probe_every=3,
            checkpoint_every=None, max_bytes=300_000)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_dir(capstone_data_dir) -> str:
    return capstone_data_dir


def tiny(out_dir: Path, data_dir: str, **overrides):
    return capstone_config("smoke", out_dir=str(out_dir), data_dir=data_dir, **{**TINY, **overrides})


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya, la), (xb, yb, lb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and la == lb


@pytest.mark.parametrize("start", [0, 5])
def test_prefetched_batches_are_the_same_batches_in_the_same_order(data_dir, start):
    tokens = shards.load_split(data_dir)
    cfg = tiny(Path("unused"), data_dir, batch_size=8, micro_batch_size=2)
    plain = StepBatches(tokens, cfg, 64, seed=3)
    ahead = Prefetched(StepBatches(tokens, cfg, 64, seed=3), depth=3)
    assert ahead.accumulation == plain.accumulation == 4  # attributes pass through
    assert_same_batches(take(ahead.batches(0, start), 12), take(plain.batches(0, start), 12))


def test_a_run_with_prefetching_sees_exactly_the_batches_of_one_without(tmp_path, data_dir):
    seen = {}

    class Spy(Callback):
        def __init__(self, key):
            self.key = key
            seen[key] = []

        def on_step_end(self, trainer):
            seen[self.key].append(trainer.last_batch[0].clone())

    plain_cfg = tiny(tmp_path / "plain", data_dir, prefetch=0)
    ahead_cfg = tiny(tmp_path / "ahead", data_dir, prefetch=2)
    plain = run_variant("adamw", 0, plain_cfg, callbacks=[Spy("plain")])
    ahead = run_variant("adamw", 0, ahead_cfg, callbacks=[Spy("ahead")])
    assert len(seen["plain"]) == 6 and all(torch.equal(a, b) for a, b in zip(seen["plain"], seen["ahead"]))
    assert plain["train_loss"] == ahead["train_loss"] and plain["val_loss"] == ahead["val_loss"]
    a, b = load_run("adamw", 0, plain_cfg)[0].state_dict(), load_run("adamw", 0, ahead_cfg)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class Failing:
    """Two batches, then an error."""

    def batches(self, epoch=0, start=0):
        yield torch.zeros(2)
        yield torch.ones(2)
        raise OSError("the shard file is gone")


def test_prefetch_raises_the_sources_error_where_its_batch_would_be():
    it = Prefetched(Failing()).batches()
    assert torch.equal(next(it), torch.zeros(2)) and torch.equal(next(it), torch.ones(2))
    with pytest.raises(OSError, match="shard file is gone"):
        next(it)


class Endless:
    def batches(self, epoch=0, start=0):
        i = start
        while True:
            yield torch.tensor([i])
            i += 1


def test_closing_the_batches_stops_the_prefetch_thread():
    before = threading.active_count()
    it = Prefetched(Endless(), depth=2).batches(0, 10)
    assert int(next(it)) == 10 and int(next(it)) == 11
    it.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before


def test_prefetch_rejects_bad_input():
    with pytest.raises(ValueError, match="depth"):
        Prefetched(Endless(), depth=0)
    with pytest.raises(ValueError, match="batches"):
        Prefetched([1, 2, 3])
    with pytest.raises(ValueError, match="prefetch"):
        capstone_config("smoke", prefetch=-2)


def test_step_breakdown_times_whole_steps_and_their_parts(tmp_path, data_dir):
    cfg = tiny(tmp_path, data_dir, batch_size=4, micro_batch_size=2)
    b = step_breakdown(cfg, "layer_adaptive", steps=2, warmup=1)
    assert b["device"] == "cpu" and b["whole_step"]["mfu"] is None  # no peak for a CPU
    assert set(b["parts_ms"]) == {"data", "forward_backward", "clip", "optimizer"}
    assert all(v > 0 for v in b["parts_ms"].values()) and b["whole_step"]["ms"] > 0
    assert b["tokens_per_step"] == 4 * 64 and b["whole_step"]["tokens_per_s"] > 0
    # the paper's width of vocabulary on random tokens (nothing to download)
    paper = capstone_config("paper", out_dir=str(tmp_path / "p"), batch_size=2, micro_batch_size=1,
                            model={"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64,
                                   "max_seq_len": 16})
    p = step_breakdown(paper, random_tokens=50257, steps=1, warmup=1)
    assert p["model"]["vocab_size"] == 50257 and p["tokens_per_step"] == 2 * 16
    with pytest.raises(ValueError, match="steps"):
        step_breakdown(cfg, steps=0)
    assert matmul_tflops("cpu", n=64, dtype=torch.float32, repeats=2) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_compiled_bf16_step_matches_eager_on_the_gpu():
    """The loss inside torch.compile (with grouped-query attention through SDPA) against the eager model."""
    from course_lib.models.qwen import QwenConfig, QwenLM

    torch.manual_seed(0)
    model = QwenLM(QwenConfig.preset("gpu", n_layers=2, max_seq_len=256)).cuda()
    x = torch.randint(0, 4096, (4, 256), device="cuda")
    y = torch.randint(0, 4096, (4, 256), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(x, y)
    eager.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        compiled = torch.compile(model)(x, y)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-2, atol=1e-2)
    for name, p in model.named_parameters():  # bf16 rounding differs between the kernels: compare norms
        error = float((p.grad - want[name]).norm() / want[name].norm().clamp_min(1e-12))
        assert error < 0.05, (name, error)
