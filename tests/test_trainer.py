"""course_lib.train.trainer: accumulation, clipping, precision, schedules, NaN stops, callbacks, exact resume."""

import copy
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from course_lib.param_groups import MultiOptimizer
from course_lib.schedules import WarmupCosineLR
from course_lib.data import SeededBatches
from course_lib.train import (
    Callback,
    TrainConfig,
    Trainer,
    count_examples,
    evaluate,
    grad_norm,
    move_to,
    supervised_loss,
)

mse = supervised_loss(nn.functional.mse_loss)
cross_entropy = supervised_loss(nn.functional.cross_entropy)


def regression(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=dtype)
    return TensorDataset(X, X @ torch.randn(4, 2, generator=g, dtype=dtype) + torch.randn(n, 2, generator=g, dtype=dtype))


def mlp(seed=0, dtype=torch.float64, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 2)).to(dtype)


def run(model, data, optimizer=None, loss_fn=mse, **config):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(model, optimizer, loss_fn, data, TrainConfig(**config))
    return trainer.fit()


def reference_sgd(model, dataset, index_groups, clip=None):
    """Plain torch: one SGD step per list of example indices, on the mean loss of those examples."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    norms = []
    for idx in index_groups:
        X, y = dataset[idx]
        opt.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        if clip is not None:
            norms.append(clip(list(model.parameters())))
        opt.step()
    return norms


def assert_params_close(a, b, rtol=1e-12):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-14)


def test_accumulated_micro_batches_equal_one_big_batch():
    data = regression(24)
    small, big = mlp(), mlp()
    run(small, SeededBatches(data, batch_size=3, seed=5), epochs=3, accumulation=4)
    run(big, SeededBatches(data, batch_size=12, seed=5), epochs=3)
    assert_params_close(small, big)

    ref = mlp()
    order = SeededBatches(data, batch_size=3, seed=5)
    reference_sgd(ref, data, [order.order(e)[i : i + 12] for e in range(3) for i in (0, 12)])
    assert_params_close(small, ref)


def test_last_partial_group_is_scaled_by_its_own_size():
    # 15 examples in micro-batches of 3, two per step: steps of 6, 6 and 3 examples
    data = regression(15, seed=1)
    model, ref = mlp(1), mlp(1)
    batches = SeededBatches(data, batch_size=3, seed=2)
    history = run(model, batches, epochs=2, accumulation=2)
    assert history["examples"] == [6, 12, 15, 21, 27, 30]
    groups = [batches.order(e)[i : i + 6] for e in range(2) for i in (0, 6, 12)]
    reference_sgd(ref, data, groups)
    assert_params_close(model, ref)


def test_unequal_micro_batches_are_weighted_by_examples():
    # 10 examples in micro-batches 3, 3, 3, 1: one step equals the mean over all 10
    data = regression(10, seed=3)
    model, ref = mlp(2), mlp(2)
    run(model, SeededBatches(data, batch_size=3, shuffle=False), epochs=2, accumulation=4)
    reference_sgd(ref, data, [torch.arange(10)] * 2)
    assert_params_close(model, ref)


def test_clip_norm_logs_the_pre_clip_norm_of_clip_grad_norm():
    data = regression(32, seed=4)
    model, ref = mlp(3), mlp(3)
    batches = SeededBatches(data, batch_size=8, seed=1)
    history = run(model, batches, max_steps=6, clip_norm=0.5)
    want = reference_sgd(ref, data, [batches.order(0)[i : i + 8] for i in range(0, 32, 8)] + [batches.order(1)[i : i + 8] for i in (0, 8)],
                         clip=lambda ps: float(torch.nn.utils.clip_grad_norm_(ps, 0.5)))
    assert history["grad_norm"] == pytest.approx(want, rel=1e-12)
    assert max(want) > 0.5  # clipping happened
    assert_params_close(model, ref)


def test_clip_value_logs_the_pre_clip_norm():
    data = regression(16, seed=5)
    model, ref = mlp(4), mlp(4)
    history = run(model, SeededBatches(data, batch_size=16, shuffle=False), max_steps=3, clip_value=0.01)

    def clip(ps):
        norm = float(torch.nn.utils.clip_grad_norm_(ps, float("inf")))
        torch.nn.utils.clip_grad_value_(ps, 0.01)
        return norm

    want = reference_sgd(ref, data, [torch.arange(16)] * 3, clip=clip)
    assert history["grad_norm"] == pytest.approx(want, rel=1e-12)
    assert_params_close(model, ref)


def test_grad_norm_equals_clip_grad_norm():
    model = mlp(5)
    mse(model, regression(8)[:]).backward()
    want = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert grad_norm(model.parameters()).item() == pytest.approx(want.item(), rel=1e-14)


def test_nan_loss_stops_with_the_step():
    X = torch.randn(12, 4, dtype=torch.float64)
    X[7, 0] = float("nan")  # in the third batch of 3
    data = SeededBatches(TensorDataset(X, torch.zeros(12, 2, dtype=torch.float64)), batch_size=3, shuffle=False)
    with pytest.raises(FloatingPointError, match="step 3: the loss is nan"):
        run(mlp(), data, max_steps=4)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2).double()
        self.gate = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        # sqrt at 0: value 0, derivative infinite, loss stays finite
        return self.lin(x) + torch.sqrt(self.gate - self.gate.detach())


def test_infinite_gradient_stops_naming_the_parameter():
    with pytest.raises(FloatingPointError, match="step 1: the gradient of parameter 'gate'"):
        run(Gated(), SeededBatches(regression(8), batch_size=4), max_steps=2)


class Gate(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.g = nn.Parameter(torch.zeros((), dtype=dtype))


class FlaggedNaN(nn.Module):
    """A linear layer on 4 inputs, then a gate (registered second) whose gradient is NaN on flagged batches.

    The gate adds ``0 * sqrt(g - g + 1 - flag)``: a finite 0, whose derivative is 0 times the
    infinite slope of sqrt at 0, a NaN, when the batch's fifth column holds a 1.
    """

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.lin = nn.Linear(4, 2).to(dtype)
        self.gate = Gate(dtype)

    def forward(self, x):
        g = self.gate.g
        return self.lin(x[:, :4]) + 0.0 * torch.sqrt(g - g.detach() + 1 - x[:, 4].max())


def flagged_batches(nan_steps, n_steps, dtype=torch.float64, batch_size=4):
    """Batches of 4 in a fixed order; step ``s`` (counted from 1) is flagged for a NaN gate gradient if in ``nan_steps``."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n_steps * batch_size, 5, generator=g, dtype=dtype)
    X[:, 4] = 0.0
    for s in nan_steps:
        X[(s - 1) * batch_size, 4] = 1.0
    y = torch.randn(n_steps * batch_size, 2, generator=g, dtype=dtype)
    return SeededBatches(TensorDataset(X, y), batch_size, shuffle=False)


@pytest.mark.parametrize("clip", [{}, {"clip_norm": 1.0}, {"clip_value": 0.01}])
def test_nan_gradient_is_named_before_clipping_spreads_it(clip):
    # clip_grad_norm_ multiplies every gradient by c / norm: with a NaN norm all of them
    # become NaN, so the check must come first to name the parameter that holds the NaN
    model = FlaggedNaN()
    seen = []
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, flagged_batches([3], 5),
                      TrainConfig(max_steps=5, **clip), callbacks=[lambda t: seen.append(t.step)])
    assert list(model.state_dict())[0] == "lin.weight"  # the NaN is not in the first parameter
    with pytest.raises(FloatingPointError, match=r"^step 3: the gradient of parameter 'gate\.g' has NaN or Inf entries$"):
        trainer.fit()
    assert seen == [1, 2]
    assert trainer.non_finite_gradients() == ["gate.g"]  # and the other gradients were left finite


def cpu_scaled_trainer(model, data, **config):
    """A trainer whose steps go through a real ``GradScaler``: the fp16 code path on the CPU.

    ``precision="fp16"`` needs CUDA; a CPU ``GradScaler`` unscales, skips and backs off the same
    way on float64 gradients, so the counting of skipped steps runs here too.
    """
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, data, TrainConfig(**config))
    trainer.scaler = torch.amp.GradScaler("cpu")
    return trainer


@pytest.mark.parametrize("clip", [{}, {"clip_norm": 1.0}])
def test_grad_scaler_skips_in_a_row_stop_the_run_naming_step_and_parameter(clip):
    model = FlaggedNaN()
    params_after = []
    trainer = cpu_scaled_trainer(model, flagged_batches([2, 3, 5, 6, 7, 8], 9), max_steps=9, max_skipped_steps=3, **clip)
    trainer.callbacks.append(lambda t: params_after.append([p.detach().clone() for p in model.parameters()]))
    # steps 2, 3 skipped, 4 clean (the count starts again), 5, 6, 7 skipped: stop at 7
    with pytest.raises(FloatingPointError, match=r"^step 7: the GradScaler skipped the last 3 steps \(steps 5 to 7\) "
                                                 r"for NaN or Inf gradients; the gradient of parameter 'gate\.g'"):
        trainer.fit()
    assert trainer.skipped_in_a_row == 3
    assert trainer.scaler.get_scale() == 2.0**16 / 2**5  # halved at each of the 5 skips
    # a skipped step leaves every parameter as it was, a clean one moves them
    same = [all(torch.equal(p, q) for p, q in zip(a, b)) for a, b in zip(params_after, params_after[1:])]
    assert same == [True, True, False, True, True]  # steps 2, 3, 4, 5, 6 against the step before


def test_grad_scaler_skips_are_not_counted_when_turned_off():
    history = cpu_scaled_trainer(FlaggedNaN(), flagged_batches(range(1, 7), 6), max_steps=6, max_skipped_steps=None).fit()
    assert len(history["loss"]) == 6 and all(n != n for n in history["grad_norm"])  # every norm NaN, no stop
    history = cpu_scaled_trainer(FlaggedNaN(), flagged_batches(range(1, 7), 6), max_steps=6, check_finite=False).fit()
    assert len(history["loss"]) == 6


def test_count_skipped_counts_only_steps_in_a_row():
    model = mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, [], TrainConfig(max_steps=10, max_skipped_steps=2))
    trainer.count_skipped(True)
    trainer.count_skipped(False)
    trainer.count_skipped(True)
    assert trainer.skipped_in_a_row == 1
    with pytest.raises(FloatingPointError, match=r"^step 1: the GradScaler skipped the last 2 steps \(steps 0 to 1\)"):
        trainer.count_skipped(True)  # trainer.step is still 0: the numbers are those of step + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with GradScaler needs CUDA")
def test_fp16_on_cuda_stops_when_gradients_stay_nan():
    model = FlaggedNaN(dtype=torch.float32).cuda()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, flagged_batches(range(1, 9), 8, dtype=torch.float32),
                      TrainConfig(max_steps=8, precision="fp16", max_skipped_steps=5))
    with pytest.raises(FloatingPointError, match=r"^step 5: the GradScaler skipped the last 5 steps \(steps 1 to 5\).*'gate\.g'"):
        trainer.fit()
    assert trainer.scaler.get_scale() == 2.0**16 / 2**5


def test_check_finite_can_be_turned_off():
    history = run(Gated(), SeededBatches(regression(8), batch_size=4), max_steps=2, check_finite=False)
    assert history["grad_norm"][0] == float("inf")


def lr_trajectory(interval):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = Trainer(model, opt, mse, SeededBatches(regression(12), batch_size=3), TrainConfig(epochs=3, scheduler_interval=interval), scheduler=sched)
    return trainer.fit()["lr"]


def test_scheduler_per_step_and_per_epoch():
    assert lr_trajectory("step") == [0.5**t for t in range(12)]
    assert lr_trajectory("epoch") == [1.0] * 4 + [0.5] * 4 + [0.25] * 4


def test_reduce_lr_on_plateau_is_stepped_with_the_validation_loss():
    data = regression(12)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    trainer = Trainer(model, opt, mse, SeededBatches(data, batch_size=6), TrainConfig(max_steps=16, eval_every=2),
                      scheduler=sched, val_data=[(data.tensors[0], -data.tensors[1])])  # worse as training fits y
    history = trainer.fit()
    assert history["eval_step"] == list(range(2, 17, 2))
    # replay the recorded validation losses through a fresh ReduceLROnPlateau
    replay_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05)
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(replay_opt, factor=0.5, patience=1)
    want = []
    for t in range(16):
        want.append(replay_opt.param_groups[0]["lr"])
        if (t + 1) % 2 == 0:
            replay.step(history["val_loss"][t // 2])
    assert history["lr"] == want
    assert want[-1] < 0.05  # the plateau was detected
    with pytest.raises(ValueError, match="val_data"):
        Trainer(model, opt, mse, [], TrainConfig(max_steps=1), scheduler=sched)


def test_bf16_autocast_on_cpu_runs_close_to_fp32():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    data = SeededBatches(TensorDataset(X, (X[:, 0] > X[:, 1]).long()), batch_size=16, seed=0)
    fp32 = run(mlp(dtype=torch.float32), data, loss_fn=cross_entropy, max_steps=8)
    bf16 = run(mlp(dtype=torch.float32), data, loss_fn=cross_entropy, max_steps=8, precision="bf16")
    assert fp32["loss"] != bf16["loss"]  # autocast did change the arithmetic
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=2e-2)


def test_fp16_needs_a_cuda_model():
    with pytest.raises(ValueError, match="fp16"):
        Trainer(mlp(), torch.optim.SGD(mlp().parameters(), lr=0.1), mse, [], TrainConfig(max_steps=1, precision="fp16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with GradScaler needs CUDA")
def test_fp16_on_cuda_unscales_before_clipping():
    data = regression(32, dtype=torch.float32)
    model = mlp(dtype=torch.float32).cuda()
    ref = copy.deepcopy(model)
    history = run(model, SeededBatches(data, batch_size=32, shuffle=False), max_steps=1, clip_norm=0.1, precision="fp16")
    X, y = move_to(data[:], torch.device("cuda"))
    nn.functional.mse_loss(ref(X), y).backward()
    want = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1).item()
    assert history["grad_norm"][0] == pytest.approx(want, rel=2e-2)  # fp16 forward, fp32 reference


def make_resumable(path, max_steps, checkpoint_every=None):
    model = mlp(7, dtype=torch.float32, dropout=0.3)  # dropout: the RNG state matters
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = WarmupCosineLR(opt, 3, 12, min_ratio=0.1)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 4, generator=g)
    data = SeededBatches(TensorDataset(X, torch.randn(30, 2, generator=g)), batch_size=4, seed=9)  # 8 batches/epoch
    config = TrainConfig(max_steps=max_steps, accumulation=3, clip_norm=1.0, checkpoint_every=checkpoint_every, checkpoint_path=path)
    return Trainer(model, opt, mse, data, config, scheduler=sched, val_data=[(X[:5], X[:5, :2])])


@pytest.mark.parametrize("stop", [4, 3])  # mid-epoch, and at an epoch's end (3 steps of 3, 3, 2 micro-batches)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, stop):
    torch.manual_seed(123)
    straight = make_resumable(None, 11)
    straight.fit()

    torch.manual_seed(123)
    first = make_resumable(tmp_path / "ckpt.pt", stop)
    first.fit()
    torch.manual_seed(999)  # whatever happens in between
    torch.rand(10)
    resumed = make_resumable(tmp_path / "ckpt.pt", 11)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.step == stop
    history = resumed.fit()

    assert_same_run(straight, resumed, history)



def assert_same_run(straight, resumed, history):
    """The resumed trainer ends with the uninterrupted run's parameters, losses and learning rates, bit for bit."""
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert history["loss"] == straight.history["loss"]
    assert history["lr"] == straight.history["lr"]
    assert history["val_loss"] == straight.history["val_loss"]


def make_resumable_with(schedule, path, max_steps):
    """As :func:`make_resumable`, with a per-epoch MultiStepLR or a ReduceLROnPlateau evaluated every step."""
    model = mlp(7, dtype=torch.float32, dropout=0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 4, generator=g)
    data = SeededBatches(TensorDataset(X, torch.randn(30, 2, generator=g)), batch_size=4, seed=9)
    if schedule == "epoch":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 3], gamma=0.5)  # needs its epoch count
        config = TrainConfig(max_steps=max_steps, accumulation=3, scheduler_interval="epoch", checkpoint_path=path)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        config = TrainConfig(max_steps=max_steps, accumulation=3, eval_every=1, checkpoint_path=path)
    return Trainer(model, opt, mse, data, config, scheduler=sched, val_data=[(X[:5], -X[:5, :2])])


# epochs of 3 steps (3, 3 and 2 micro-batches): stop mid-epoch, or after an epoch's last step but
# before its end is processed (the resumed run steps the scheduler first; torch's check of the
# order of optimizer.step and scheduler.step then sees a fresh optimizer and warns)
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("schedule, stop", [("epoch", 3), ("epoch", 4), ("epoch", 7), ("plateau", 4), ("plateau", 6)])
def test_resume_with_epoch_and_plateau_schedulers_is_bit_identical(tmp_path, schedule, stop):
    torch.manual_seed(123)
    straight = make_resumable_with(schedule, None, 11)
    straight.fit()

    torch.manual_seed(123)
    first = make_resumable_with(schedule, tmp_path / "ckpt.pt", stop)
    first.fit()
    torch.manual_seed(999)
    resumed = make_resumable_with(schedule, tmp_path / "ckpt.pt", 11)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    history = resumed.fit()

    assert_same_run(straight, resumed, history)
    lrs = straight.history["lr"]
    assert len(set(lrs[stop:])) > 1  # the schedule changes the rate after the stop
    if schedule == "plateau":
        assert first.schedulers[0].num_bad_epochs > 0  # the checkpoint holds a count in progress


def test_progress_bar_shows_steps_loss_lr_and_tokens_per_second(capsys):
    model = mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), mse, SeededBatches(regression(12), batch_size=3),
                      TrainConfig(epochs=3, progress=True, tokens_per_example=16))
    history = trainer.fit()
    bar = capsys.readouterr().err.split("\r")[-1]  # the bar's last state
    assert "12/12" in bar
    assert f"loss={history['loss'][-1]:.4g}, lr={history['lr'][-1]:.3g}, tok/s=" in bar
    tokens_per_s = float(bar.split("tok/s=")[1].rstrip("]\n "))
    assert tokens_per_s == pytest.approx(history["tokens_per_s"][-1], rel=5e-3)  # printed to 3 digits

    run(mlp(), SeededBatches(regression(12), batch_size=3), epochs=1)
    assert capsys.readouterr().err == ""  # off by default
    run(mlp(), SeededBatches(regression(12), batch_size=3), epochs=1, progress=True)
    assert "tok/s" not in capsys.readouterr().err  # only with tokens_per_example


def test_checkpoint_is_saved_every_n_steps_and_loads_with_weights_only(tmp_path):
    path = tmp_path / "run.pt"
    saved_at = []

    class Spy(Callback):
        def on_step_end(self, trainer):
            if path.exists():
                saved_at.append(torch.load(path, weights_only=True)["step"])

    trainer = make_resumable(path, 7, checkpoint_every=2)
    trainer.callbacks.append(Spy())
    trainer.fit()
    # callbacks run before the save of the same step: the file lags one step at even steps
    assert saved_at == [2, 2, 4, 4, 6]
    state = torch.load(path, weights_only=True)
    assert state["step"] == 7 and state["history"]["step"] == list(range(1, 8))
    assert set(state) >= {"model", "optimizer", "schedulers", "scaler", "rng_cpu", "epoch", "batch_in_epoch"}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_callbacks_objects_and_callables_and_stop():
    events = []

    class Recorder(Callback):
        def on_eval(self, trainer, val_loss):
            events.append(("eval", trainer.step))

        def on_epoch_end(self, trainer):
            events.append(("epoch", trainer.epoch))

        def on_train_end(self, trainer):
            events.append(("end", trainer.step))

    def stop_at_5(trainer):
        events.append(("step", trainer.step))
        trainer.should_stop = trainer.step == 5

    data = regression(8)
    trainer = Trainer(mlp(), torch.optim.SGD(mlp().parameters(), lr=0.1), mse, SeededBatches(data, batch_size=4),
                      TrainConfig(epochs=10), val_data=[data[:]], callbacks=[Recorder(), stop_at_5])
    trainer.fit()
    assert events == [("step", 1), ("step", 2), ("eval", 2), ("epoch", 1), ("step", 3), ("step", 4), ("eval", 4),
                      ("epoch", 2), ("step", 5), ("end", 5)]


def test_history_counts_examples_and_tokens():
    history = run(mlp(), SeededBatches(regression(10), batch_size=4), epochs=2, tokens_per_example=16)
    assert history["examples"] == [4, 8, 10, 14, 18, 20]
    assert history["epoch"] == [0, 0, 0, 1, 1, 1]
    assert len(history["tokens_per_s"]) == 6
    assert all(t > 0 for t in history["time"]) and history["time"] == sorted(history["time"])


def test_multi_optimizer_and_a_scheduler_per_optimizer():
    data = regression(16)
    model, ref = mlp(3), mlp(3)
    multi = MultiOptimizer([torch.optim.SGD(model[0].parameters(), lr=0.05), torch.optim.Adam(model[3].parameters(), lr=0.01)], model=model)
    scheds = [torch.optim.lr_scheduler.StepLR(o, 1, 0.9) for o in multi.optimizers.values()]
    Trainer(model, multi, mse, SeededBatches(data, batch_size=8, seed=0), TrainConfig(max_steps=4), scheduler=scheds).fit()

    sgd, adam = torch.optim.SGD(ref[0].parameters(), lr=0.05), torch.optim.Adam(ref[3].parameters(), lr=0.01)
    ref_scheds = [torch.optim.lr_scheduler.StepLR(o, 1, 0.9) for o in (sgd, adam)]
    order = SeededBatches(data, batch_size=8, seed=0)
    for idx in [order.order(0)[:8], order.order(0)[8:], order.order(1)[:8], order.order(1)[8:]]:
        sgd.zero_grad()
        adam.zero_grad()
        mse(ref, data[idx]).backward()
        sgd.step()
        adam.step()
        for s in ref_scheds:
            s.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_evaluate_is_the_mean_over_all_examples():
    data = regression(10)
    model = mlp().train()
    batches = list(SeededBatches(data, batch_size=4).batches(0))  # sizes 4, 4, 2
    want = nn.functional.mse_loss(model(data.tensors[0]), data.tensors[1]).item()
    assert evaluate(model, batches, mse) == pytest.approx(want, rel=1e-12)
    assert model.training


def test_seeded_batches_order_is_fixed_by_seed_and_epoch():
    data = regression(11)
    a, b = SeededBatches(data, 3, seed=4), SeededBatches(data, 3, seed=4)
    assert torch.equal(a.order(2), b.order(2)) and not torch.equal(a.order(1), a.order(2))
    full = list(a.batches(1))
    assert len(full) == len(a) == 4 and count_examples(full[-1]) == 2
    tail = list(a.batches(1, start=2))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(tail, full[2:], strict=True))
    assert len(SeededBatches(data, 3, drop_last=True)) == 3
    # a dataset that is not a TensorDataset goes through collate_fn
    pairs = [(data.tensors[0][i], data.tensors[1][i]) for i in range(11)]
    collated = list(SeededBatches(pairs, 3, seed=4).batches(1))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(collated, full, strict=True))
    with pytest.raises(ValueError, match="batch_size"):
        SeededBatches(data, 0)


def test_plain_iterables_work_and_resume_by_skipping():
    data = regression(12)
    batches = [data[i : i + 3] for i in range(0, 12, 3)]
    model_a, model_b = mlp(), mlp()
    run(model_a, batches, max_steps=6)
    run(model_b, SeededBatches(data, batch_size=3, shuffle=False), max_steps=6)
    assert_params_close(model_a, model_b, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "max_steps or epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"epochs": 1, "accumulation": 0}, "accumulation"),
        ({"epochs": 1, "clip_norm": 0.0}, "clip_norm"),
        ({"epochs": 1, "clip_norm": 1.0, "clip_value": 1.0}, "not both"),
        ({"epochs": 1, "precision": "fp8"}, "precision"),
        ({"epochs": 1, "scheduler_interval": "batch"}, "scheduler_interval"),
        ({"epochs": 1, "checkpoint_every": 5}, "checkpoint_path"),
        ({"epochs": 1, "max_skipped_steps": 0}, "max_skipped_steps must be >= 1 or None, got 0"),
        ({"epochs": 1, "sync_every": 0}, "sync_every"),
        ({"epochs": 1, "sync_every": 2.5}, "sync_every"),
    ],
)
def test_bad_config_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_a_one_shot_iterator_fails_clearly_in_its_second_epoch():
    data = regression(6)
    with pytest.raises(ValueError, match="no batches in epoch 1"):
        run(mlp(), iter([data[:3], data[3:]]), epochs=3)


def test_validation_data_may_be_seeded_batches():
    data = regression(10)
    history = run(mlp(), SeededBatches(data, batch_size=5), epochs=1)
    model = mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), mse, SeededBatches(data, batch_size=5),
                      TrainConfig(epochs=1), val_data=SeededBatches(data, batch_size=4))
    assert trainer.fit()["val_loss"] == [pytest.approx(evaluate(model, [data[:]], mse), rel=1e-12)]
    assert len(history["loss"]) == 2


# ----------------------------------------------------------------------------- host syncs and step time


@pytest.mark.parametrize("torch_has_it", [True, False], ids=["torch's clip_grads_with_norm_", "own lines"])
def test_clip_grad_norm_with_a_measured_norm_equals_clip_grad_norm_bit_for_bit(torch_has_it, monkeypatch):
    from course_lib.train.trainer import clip_grad_norm_with_

    if not torch_has_it:  # the lines that serve torch < 2.6
        monkeypatch.delattr(torch.nn.utils, "clip_grads_with_norm_", raising=False)
    for max_norm in (0.05, 1e6):  # clipped, and a threshold never reached
        a, b = mlp(5, dtype=torch.float32), mlp(5, dtype=torch.float32)
        for model in (a, b):
            mse(model, regression(8, dtype=torch.float32)[:]).backward()
        params = [p for p in a.parameters()]
        norm = grad_norm(params)
        clip_grad_norm_with_(params, max_norm, norm)
        want = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
        assert torch.equal(norm, want)
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p.grad, q.grad)


def sync_run(sync_every, max_steps=10, seen=None, **config):
    model = mlp(7, dtype=torch.float32, dropout=0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = SeededBatches(regression(30, dtype=torch.float32), batch_size=4, seed=9)
    callbacks = [] if seen is None else [lambda t: seen.append((t.step, len(t.history["loss"])))]
    trainer = Trainer(model, opt, mse, data, TrainConfig(max_steps=max_steps, sync_every=sync_every, clip_norm=0.5,
                                                          accumulation=2, **config),
                      scheduler=WarmupCosineLR(opt, 2, max_steps), val_data=[regression(6, dtype=torch.float32)[:]],
                      callbacks=callbacks)
    torch.manual_seed(0)
    return trainer, trainer.fit()


def test_reading_the_loss_back_every_few_steps_changes_nothing_but_when():
    seen = []
    every_step, h1 = sync_run(1, eval_every=5)
    batched, h4 = sync_run(4, eval_every=5, seen=seen)
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "examples", "eval_step", "val_loss"):
        assert h1[key] == h4[key], key
    assert_params_close(every_step.model, batched.model, rtol=0)
    # read back at steps 4 and 8 (sync_every), 5 and 10 (evaluations, the end): in between the history lags
    assert seen == [(1, 0), (2, 0), (3, 0), (4, 4), (5, 5), (6, 5), (7, 5), (8, 8), (9, 8), (10, 10)]


def test_with_deferred_reads_a_nan_stops_the_run_at_the_next_read_naming_its_step():
    X = torch.randn(12, 4, dtype=torch.float64)
    X[7, 0] = float("nan")  # in the third batch of 3
    data = SeededBatches(TensorDataset(X, torch.zeros(12, 2, dtype=torch.float64)), batch_size=3, shuffle=False)
    with pytest.raises(FloatingPointError, match="step 3: the loss is nan"):
        run(mlp(), data, max_steps=4, sync_every=4)


class SlowBatches:
    """Resumable batches that take ``delay`` seconds each to draw."""

    def __init__(self, data, delay):
        self.inner, self.delay = SeededBatches(data, batch_size=4, seed=0), delay

    def batches(self, epoch, start=0):
        for batch in self.inner.batches(epoch, start):
            time.sleep(self.delay)
            yield batch


def test_a_steps_time_includes_drawing_its_batches():
    delay = 0.05
    history = run(mlp(), SlowBatches(regression(32), delay), max_steps=4, accumulation=2, tokens_per_example=10)
    seconds = [n / r for n, r in zip([8, 8, 8, 8], history["examples_per_s"])]
    assert all(s >= 2 * delay for s in seconds)  # two micro-batches of 50 ms each per step
    assert history["tokens_per_s"] == pytest.approx([10 * r for r in history["examples_per_s"]])


def test_the_trainer_runs_without_tqdm():
    """A GPU node's environment may lack tqdm: then there is no progress bar, and nothing else changes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys
sys.modules["tqdm"] = sys.modules["tqdm.auto"] = None  # import tqdm now fails
import torch
from torch import nn
from torch.utils.data import TensorDataset
from course_lib.data import SeededBatches
from course_lib.train import TrainConfig, Trainer, supervised_loss
model = nn.Linear(3, 1)
data = SeededBatches(TensorDataset(torch.randn(8, 3), torch.randn(8, 1)), batch_size=4)
history = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), supervised_loss(nn.functional.mse_loss),
                  data, TrainConfig(epochs=2, progress=True)).fit()
print(len(history["loss"]))
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0 and done.stdout.strip() == "4", done.stderr[-2000:]
