"""The Trainer's callbacks for SophiaG and schedule-free AdamW, against hand-written loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from course_lib.data import SeededBatches
from course_lib.models import mlp
from course_lib.optim import SGD, ScheduleFreeAdamW, SophiaG
from course_lib.optim.sophia import gauss_newton_bartlett
from course_lib.train import Callback, ScheduleFreeEval, SophiaHessianRefresh, TrainConfig, Trainer, supervised_loss

STEPS = 12


@pytest.fixture(autouse=True)
def float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def task(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 5, generator=gen)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.5).long()
    return TensorDataset(x, y), TensorDataset(x[:32] + 0.1, y[:32])


def test_sophia_refresh_equals_the_reference_loop():
    """Every k-th step, GNB on that step's batch, steps with bs=1: the callback equals the loop written out."""
    train_set, _ = task()
    k = 3

    model = mlp([5, 8, 3], seed=1).double()
    opt = SophiaG(model.parameters(), lr=0.05, rho=0.1, weight_decay=0.0)
    refresh = SophiaHessianRefresh(every=k, generator=torch.Generator().manual_seed(7))
    Trainer(model, opt, supervised_loss(F.cross_entropy), SeededBatches(train_set, 16, seed=2),
            TrainConfig(max_steps=STEPS), callbacks=[refresh]).fit()

    ref = mlp([5, 8, 3], seed=1).double()
    ref_opt = SophiaG(ref.parameters(), lr=0.05, rho=0.1, weight_decay=0.0)
    gen = torch.Generator().manual_seed(7)
    data = SeededBatches(train_set, 16, seed=2)
    batches = [b for epoch in range(3) for b in data.batches(epoch)][:STEPS]
    for t, (x, y) in enumerate(batches, start=1):
        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step(bs=1)
        if t % k == 0:
            ref_opt.update_hessian(gauss_newton_bartlett(ref(x), list(ref.parameters()), generator=gen))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert all(opt.state[p]["hessian"].abs().sum() > 0 for p in model.parameters())


def test_schedule_free_is_evaluated_at_the_average_and_ends_there():
    train_set, val_set = task()
    model = mlp([5, 8, 3], seed=1).double()
    opt = ScheduleFreeAdamW(model.parameters(), lr=0.02, warmup_steps=2)
    seen = []

    class Record(Callback):
        def on_eval(self, trainer, val_loss):  # called after ScheduleFreeEval.on_eval: back at y
            x = torch.cat([opt.state[p]["x"].flatten() for p in model.parameters()])
            seen.append((val_loss, x.clone()))

    loss_fn = supervised_loss(F.cross_entropy)
    trainer = Trainer(model, opt, loss_fn, SeededBatches(train_set, 16, seed=2),
                      TrainConfig(max_steps=STEPS, eval_every=4), val_data=[tuple(val_set.tensors)],
                      callbacks=[ScheduleFreeEval(), Record()])
    trainer.fit()
    assert len(seen) == STEPS // 4
    # each recorded validation loss is the loss at x, the average, not at the gradient point y
    probe = mlp([5, 8, 3], seed=1).double()
    for val_loss, x in seen:
        torch.nn.utils.vector_to_parameters(x, probe.parameters())
        with torch.no_grad():
            at_x = F.cross_entropy(probe(val_set.tensors[0]), val_set.tensors[1]).item()
        assert val_loss == pytest.approx(at_x, rel=1e-12)
    # the run ends in eval mode: the model holds x
    final_x = torch.cat([opt.state[p]["x"].flatten() for p in model.parameters()])
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), final_x)
    assert not opt.param_groups[0]["train_mode"]


@pytest.mark.parametrize("callback, name", [(SophiaHessianRefresh(), "SophiaG"), (ScheduleFreeEval(), "ScheduleFreeAdamW")])
def test_each_callback_names_the_optimizer_it_needs(callback, name):
    train_set, _ = task()
    model = mlp([5, 8, 3], seed=1).double()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), supervised_loss(F.cross_entropy),
                      SeededBatches(train_set, 16), TrainConfig(max_steps=2), callbacks=[callback])
    with pytest.raises(TypeError, match=f"needs a {name} optimizer, got SGD"):
        trainer.fit()


def test_refresh_interval_is_checked():
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        SophiaHessianRefresh(every=0)
