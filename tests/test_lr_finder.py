"""course_lib.train.lr_finder: the sweep, smoothing, stop, suggestion against a stability bound, exact restore."""

import copy
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.train.lr_finder import RangeTestResult, lr_range_test, smooth, suggest_lr
from course_lib.data import SeededBatches
from course_lib.train import supervised_loss


def least_squares(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 1.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64) * scales
    y = X @ torch.randn(5, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return X, y


mse = supervised_loss(nn.functional.mse_loss)


def test_smooth_is_the_bias_corrected_moving_average():
    assert smooth([2.5] * 7, 0.9) == pytest.approx([2.5] * 7, rel=1e-15)  # a constant stays put
    losses, beta = [3.0, 1.0, 4.0, 1.0, 5.0], 0.8
    for i, s in enumerate(smooth(losses, beta)):
        weights = [(1 - beta) * beta ** (i - j) for j in range(i + 1)]
        assert s == pytest.approx(sum(w * x for w, x in zip(weights, losses)) / sum(weights), rel=1e-14)


def test_suggestion_rules_on_a_curve_with_known_answers():
    x = np.linspace(-4.0, 4.0, 801)  # log10 of the LR
    lrs = list(10.0**x)
    curve = list(-np.tanh(x) + 0.01 * np.exp(2.0 * (x - 2.0)))
    # steepest descent of -tanh(x) + small rise: where the derivative is lowest, found on a fine grid
    derivative = -(1 / np.cosh(x)) ** 2 + 0.02 * np.exp(2.0 * (x - 2.0))
    x_min = x[np.argmin(curve)]
    assert suggest_lr(lrs, curve, "min/10") == pytest.approx(10.0 ** (x_min - 1), rel=1e-12)
    assert math.log10(suggest_lr(lrs, curve, "steepest")) == pytest.approx(x[np.argmin(derivative)], abs=0.02)
    with pytest.raises(ValueError, match="rule"):
        suggest_lr(lrs, curve, "valley")
    with pytest.raises(ValueError, match="same length"):
        suggest_lr(lrs, curve[:-1])


def test_suggestions_are_below_the_sgd_stability_limit_on_least_squares():
    # SGD on a quadratic diverges for lr > 2 / lambda_max(Hessian); the Hessian of the mean
    # squared error is 2 X^T X / n
    X, y = least_squares()
    limit = 2.0 / torch.linalg.eigvalsh(2 * X.T @ X / len(X)).max().item()
    torch.manual_seed(1)
    model = nn.Linear(5, 1, bias=False).double()
    result = lr_range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), [(X, y)], mse,
                           start_lr=1e-4, end_lr=10.0, num_steps=100)
    assert result.diverged and len(result.lrs) < 100
    assert result.lrs[-1] > limit
    # both rules stay below the limit; steepest descent sits much lower (noisier, more cautious)
    assert limit / 10 < result.suggestion("min/10") < limit
    assert limit / 100 < result.suggestion("steepest") < result.suggestion("min/10")


def test_the_sweep_is_exponential_and_keeps_group_ratios():
    X, y = least_squares(n=16)
    model = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 1)).double()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 1.0},
                           {"params": model[1].parameters(), "lr": 0.25}], lr=1.0)
    seen = []

    def loss_fn(m, batch):
        seen.append([g["lr"] for g in opt.param_groups])
        return mse(m, batch)

    result = lr_range_test(model, opt, [(X, y)], loss_fn, start_lr=1e-6, end_lr=1e-3, num_steps=13)
    want = [1e-6 * 1000 ** (i / 12) for i in range(13)]
    assert not result.diverged
    assert result.lrs == pytest.approx(want, rel=1e-12)
    assert [s[0] for s in seen] == pytest.approx(want, rel=1e-12)
    assert [s[1] for s in seen] == pytest.approx([0.25 * w for w in want], rel=1e-12)
    assert result.smoothed == smooth(result.losses, 0.98)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
        self.register_buffer("seen", torch.zeros(()), persistent=False)  # a buffer outside the state dict

    def forward(self, x):
        self.seen += 1
        return self.body(x)


def snapshot(model, opt):
    return (
        [t.clone() for t in list(model.parameters()) + list(model.buffers())],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        copy.deepcopy(opt.state_dict()),  # state_dict() holds the live state tensors
        torch.get_rng_state(),
        model.training,
    )


def assert_same(a, b):
    tensors_a, grads_a, opt_a, rng_a, mode_a = a
    tensors_b, grads_b, opt_b, rng_b, mode_b = b
    assert all(torch.equal(x, y) for x, y in zip(tensors_a, tensors_b, strict=True))
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(grads_a, grads_b, strict=True))
    assert opt_a["param_groups"] == opt_b["param_groups"]  # lr included
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for k in opt_a["state"]:
        for name, value in opt_a["state"][k].items():
            assert torch.equal(value, opt_b["state"][k][name]), name
    assert torch.equal(rng_a, rng_b) and mode_a == mode_b


@pytest.mark.parametrize("end_lr", [1e-2, 1e6])  # ends normally / stops at divergence
def test_model_optimizer_and_rng_are_restored_bit_for_bit(end_lr):
    torch.manual_seed(0)
    X, y = least_squares(n=40)
    X, y = X.float(), y.float()
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):  # give the optimizer some state and a scheduled lr
        opt.zero_grad()
        mse(model, (X, y)).backward()
        opt.step()
        sched.step()
    mse(model, (X[:8], y[:8])).backward()  # leave gradients behind
    model.eval()
    before = snapshot(model, opt)
    data = SeededBatches(torch.utils.data.TensorDataset(X, y), batch_size=8, seed=3)
    result = lr_range_test(model, opt, data, mse, start_lr=1e-5, end_lr=end_lr, num_steps=30)
    assert result.diverged == (end_lr > 1)
    assert_same(before, snapshot(model, opt))


def test_fresh_optimizer_stays_without_state():
    X, y = least_squares(n=16)
    model = nn.Linear(5, 1).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lr_range_test(model, opt, [(X, y)], mse, num_steps=5)
    assert opt.state_dict()["state"] == {}
    assert all(p.grad is None for p in model.parameters())


def test_plot_marks_the_suggestion():
    import matplotlib.pyplot as plt

    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    result = RangeTestResult(lrs, [3.0, 2.0, 1.0, 5.0], [3.0, 2.0, 1.0, 2.0], diverged=True)
    ax = result.plot()
    assert list(ax.lines[1].get_ydata()) == result.smoothed
    assert ax.lines[2].get_xdata()[0] == pytest.approx(1e-2)  # min at 0.1, divided by 10
    assert ax.get_xscale() == "log"
    plt.close("all")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"start_lr": 0.0}, "start_lr"), ({"start_lr": 1.0, "end_lr": 0.5}, "end_lr"), ({"num_steps": 1}, "num_steps"),
     ({"diverge_factor": 1.0}, "diverge_factor"), ({"beta": 1.0}, "beta")],
)
def test_bad_arguments(kwargs, match):
    model = nn.Linear(5, 1).double()
    with pytest.raises(ValueError, match=match):
        lr_range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), [least_squares(n=4)], mse, **kwargs)


def test_empty_data_raises():
    model = nn.Linear(5, 1).double()
    with pytest.raises(ValueError, match="no batches"):
        lr_range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), [], mse)
