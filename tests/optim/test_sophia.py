"""SophiaG and its Hessian estimators.

Oracles: the paper's Algorithm 3 written out in float64; the Gauss-Newton matrix of a softmax
regression in closed form; the Hessian of a quadratic; exact expectations by enumerating every
label draw or every Rademacher vector. The state-dict round trip (with Hessian refreshes), bad
hyperparameters and the other properties are in test_contract.py.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.optim.sophia import SophiaG, gauss_newton_bartlett, hutchinson, sampled_label_loss


pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons


# --- the update against the paper's algorithm -------------------------------------------------------

def paper_sophia(theta, grads, hessian_grads, lrs, *, beta1, beta2, rho, batch, weight_decay, eps, k):
    """Liu et al. (2023), Algorithm 3 with the Gauss-Newton-Bartlett estimator, in plain tensors.

    At t = 1, k+1, 2k+1, ... the estimate h_hat = B * g_hat^2 refreshes h before the update;
    gamma = rho; the clipping is clip(z, 1) = max(min(z, 1), -1).
    """
    x, m, h = theta.clone(), torch.zeros_like(theta), torch.zeros_like(theta)
    for t, (g, g_hat, lr) in enumerate(zip(grads, hessian_grads, lrs), start=1):
        m = beta1 * m + (1 - beta1) * g
        if t % k == 1:
            h = beta2 * h + (1 - beta2) * batch * g_hat * g_hat
        x = x - lr * weight_decay * x
        ratio = m / torch.maximum(rho * h, torch.full_like(h, eps))
        x = x - lr * torch.minimum(torch.maximum(ratio, torch.full_like(h, -1.0)), torch.full_like(h, 1.0))
    return x


CONFIGS = [
    dict(),
    dict(lr=1e-2, rho=0.5, weight_decay=0.0),
    dict(lr=1e-2, betas=(0.9, 0.95), rho=0.01, weight_decay=0.2, bs=64),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["defaults", "rho=0.5", "betas,bs=64"])
def test_trajectory_matches_the_papers_algorithm(config):
    config = dict(config)
    bs = config.pop("bs", 5120)
    steps, k = 30, 5
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (), (6,)]
    thetas = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    # sampled-label gradients are about 1/sqrt(B) of a gradient; mixed scales make some ratios clip
    hessian_grads = [[torch.randn(s, generator=gen) * 10 ** torch.empty(s).uniform_(-3, 0, generator=gen)
                      for s in shapes] for _ in range(steps)]

    params = [t.clone().requires_grad_() for t in thetas]
    opt = SophiaG([{"params": params[:2]}, {"params": params[2:], "lr": config.get("lr", 1e-4) / 2}], **config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t))
    lrs = [[g["lr"] for g in opt.param_groups]]
    for t in range(steps):
        if t % k == 0:
            for p, g_hat in zip(params, hessian_grads[t]):
                p.grad = g_hat.clone()
            opt.update_hessian()
        for p, g in zip(params, grads[t]):
            p.grad = g.clone()
        opt.step(bs=bs)
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])

    defaults = dict(lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1)
    c = {**defaults, **config}
    for i, p in enumerate(params):
        group = 0 if i < 2 else 1
        expected = paper_sophia(thetas[i], [g[i] for g in grads], [h[i] for h in hessian_grads],
                                [lr[group] for lr in lrs[:steps]], beta1=c["betas"][0], beta2=c["betas"][1],
                                rho=c["rho"], batch=bs, weight_decay=c["weight_decay"], eps=1e-15, k=k)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-13)


def test_some_coordinates_are_clipped_and_some_are_not():
    """The test above only means something if both branches of the clipping run."""
    p = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    opt = SophiaG([p], lr=0.1, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0)
    p.grad = torch.tensor([1.0, 2.0, 0.0])  # beta2 = 0: h becomes g_hat^2 = (1, 4, 0)
    opt.update_hessian()
    p.grad = torch.tensor([2.0, 2.0, -0.5])  # beta1 = 0: m = g
    opt.step(bs=1)
    # ratios m / max(h, eps): 2/1 -> clipped to 1; 2/4 = 0.5; -0.5/eps -> clipped to -1
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 0.1, 1.0 - 0.05, 1.0 + 0.1]))


def test_before_the_first_hessian_refresh_every_step_is_lr_times_sign_momentum():
    p = torch.zeros(5, requires_grad=True)
    opt = SophiaG([p], lr=0.01, weight_decay=0.0)
    p.grad = torch.tensor([3.0, -1e-6, 0.0, 2.0, -5.0])
    opt.step()
    torch.testing.assert_close(p.detach(), -0.01 * torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0]))


def test_batch_size_in_step_or_in_the_estimate_is_the_same():
    """update_hessian() + step(bs=B) equals update_hessian([B * g_hat^2]) + step(bs=1)."""
    gen = torch.Generator().manual_seed(0)
    theta, g_hat = torch.randn(8, generator=gen), torch.randn(8, generator=gen) * 0.05
    grads = [torch.randn(8, generator=gen) for _ in range(6)]
    results = []
    for by_step in (True, False):
        p = theta.clone().requires_grad_()
        opt = SophiaG([p], lr=0.01, rho=0.1)
        p.grad = g_hat.clone()
        opt.update_hessian() if by_step else opt.update_hessian([32 * g_hat * g_hat])
        for g in grads:
            p.grad = g.clone()
            opt.step(bs=32 if by_step else 1)
        results.append(p.detach())
    torch.testing.assert_close(*results, rtol=1e-13, atol=1e-15)


def test_update_hessian_averages_and_skips_parameters_without_estimates():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = SophiaG([{"params": [a]}, {"params": [b], "betas": (0.9, 0.5)}])
    opt.update_hessian([torch.full((3,), 2.0), None])
    assert b not in opt.state
    opt.update_hessian([torch.full((3,), 4.0), torch.full((2,), 4.0)])
    torch.testing.assert_close(opt.state[a]["hessian"], torch.full((3,), 0.99 * 0.01 * 2.0 + 0.01 * 4.0))
    torch.testing.assert_close(opt.state[b]["hessian"], torch.full((2,), 0.5 * 4.0))
    with pytest.raises(ValueError, match="one tensor"):
        opt.update_hessian([torch.ones(3)])


# --- the Gauss-Newton-Bartlett estimator --------------------------------------------------------------

def softmax_regression(seed: int = 0, batch: int = 3, features: int = 2, classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, features, generator=gen)
    w = torch.randn(classes, features, generator=gen).requires_grad_()
    b = torch.randn(classes, generator=gen).requires_grad_()
    return x, w, b


def gauss_newton_diagonal(x, w, b):
    """diag of (1/B) sum_i J_i^T (diag p_i - p_i p_i^T) J_i for logits x W^T + b, in closed form."""
    p = torch.softmax(x @ w.detach().t() + b.detach(), dim=1)
    curvature = p * (1 - p)  # (B, C): the diagonal of each diag p - p p^T
    return curvature.t() @ (x * x) / x.shape[0], curvature.mean(dim=0)


def test_gauss_newton_bartlett_is_exact_in_expectation():
    """Enumerate all 3^3 label draws for 3 examples and 3 classes, weighted by their probability."""
    x, w, b = softmax_regression()
    logits = x @ w.t() + b
    probs = torch.softmax(logits.detach(), dim=1)
    expected_w, expected_b = torch.zeros_like(w), torch.zeros_like(b)
    for labels in itertools.product(range(3), repeat=3):
        labels = torch.tensor(labels)
        weight = probs[torch.arange(3), labels].prod()
        g_w, g_b = torch.autograd.grad(F.cross_entropy(logits, labels), [w, b], retain_graph=True)
        expected_w += weight * 3 * g_w * g_w
        expected_b += weight * 3 * g_b * g_b
    gn_w, gn_b = gauss_newton_diagonal(x, w, b)
    torch.testing.assert_close(expected_w, gn_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(expected_b, gn_b, rtol=1e-12, atol=1e-14)


def test_gauss_newton_bartlett_helper_matches_the_gauss_newton_diagonal_on_average():
    x, w, b = softmax_regression(batch=4)
    gen = torch.Generator().manual_seed(0)
    n = 1000
    samples = [torch.cat([e.reshape(-1) for e in gauss_newton_bartlett(x @ w.t() + b, [w, b], gen)])
               for _ in range(n)]
    samples = torch.stack(samples)
    truth = torch.cat([e.reshape(-1) for e in gauss_newton_diagonal(x, w, b)])
    standard_error = samples.std(dim=0) / math.sqrt(n)
    assert torch.all((samples.mean(dim=0) - truth).abs() < 5 * standard_error)
    assert torch.all(samples >= 0)


def test_sampled_label_loss_flattens_sequences_and_samples_from_the_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(50, 40, 3).clone().requires_grad_()
    loss = sampled_label_loss(logits, gen)
    loss.backward()
    # d loss / d logits = (softmax - onehot) / N: the mean of one-hots over N = 2000 draws
    frequencies = torch.tensor([0.7, 0.2, 0.1]) - logits.grad.sum(dim=(0, 1))
    assert frequencies.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(frequencies, torch.tensor([0.7, 0.2, 0.1]), atol=0.04, rtol=0)


# --- the Hutchinson estimator ---------------------------------------------------------------------------

def quadratic():
    """f(x, y) = 1/2 v^T A v + c^T v with v = (x, vec(y)): Hessian A, couplings between x and y."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=gen)
    a = a + a.t()  # symmetric and indefinite
    c = torch.randn(7, generator=gen)
    x = torch.randn(3, generator=gen).requires_grad_()
    y = torch.randn(2, 2, generator=gen).requires_grad_()

    def f():
        v = torch.cat([x, y.reshape(-1)])
        return 0.5 * v @ a @ v + c @ v

    return a, x, y, f


def test_hutchinson_is_exact_over_all_rademacher_vectors():
    a, x, y, f = quadratic()
    probes = [(torch.tensor(s[:3]), torch.tensor(s[3:]).view(2, 2))
              for s in itertools.product((-1.0, 1.0), repeat=7)]
    est_x, est_y = hutchinson(f(), [x, y], probes=probes)
    torch.testing.assert_close(torch.cat([est_x, est_y.reshape(-1)]), a.diagonal(), rtol=1e-12, atol=1e-12)


def test_hutchinson_samples_average_to_the_diagonal():
    """Var[z_i (Az)_i] = sum over j != i of A_ij^2, so the tolerance is 5 standard errors of that."""
    a, x, y, f = quadratic()
    n = 1000
    est_x, est_y = hutchinson(f(), [x, y], samples=n, generator=torch.Generator().manual_seed(1))
    estimate = torch.cat([est_x, est_y.reshape(-1)])
    standard_error = ((a * a).sum(dim=1) - a.diagonal() ** 2).sqrt() / math.sqrt(n)
    assert torch.all((estimate - a.diagonal()).abs() < 5 * standard_error)
    single = torch.cat([e.reshape(-1) for e in hutchinson(f(), [x, y], generator=torch.Generator().manual_seed(1))])
    assert not torch.allclose(single, a.diagonal(), atol=0.1)  # one probe is noisy: averaging is what helps


# --- a training loop, bad input -------------------------------------------------------------

def test_training_loop_with_gauss_newton_bartlett_refreshes_fits_softmax_regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 5, generator=gen)
    y = (x @ torch.randn(5, 3, generator=gen)).argmax(dim=1)
    model = torch.nn.Linear(5, 3)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = SophiaG(model.parameters(), lr=0.05, rho=0.05, weight_decay=0.0)
    losses = []
    for t in range(100):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(bs=len(x))
        opt.zero_grad()
        losses.append(loss.item())
        if t % 10 == 9:
            sampled_label_loss(model(x), gen).backward()
            opt.update_hessian()
            opt.zero_grad()
    assert losses[-1] < 0.35 * losses[0]
    assert all(torch.all(s["hessian"] > 0) for s in opt.state.values())


def test_bad_step_and_estimator_arguments_raise_value_error():
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="bs"):
        SophiaG([p]).step(bs=0)
    with pytest.raises(ValueError, match="samples"):
        hutchinson((p * p).sum(), [p], samples=0)
