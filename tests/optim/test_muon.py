"""course_lib.optim.muon against torch.optim.Muon, the SVD, and Muon + AdamW run separately.

torch.optim.Muon runs Newton-Schulz in bfloat16, and torch versions differ in how they group
its products (addmm or not), which changes the bfloat16 rounding. So parity is checked twice:
with the iteration in float64 on both sides (torch's Newton-Schulz function patched for the
test), where the trajectories agree to float64 round-off and every other part of the update
(momentum, Nesterov, decay, LR adjustment) is compared exactly; and with both defaults
(bfloat16), where they agree to bfloat16 round-off. The comparisons with torch.optim.Muon are
skipped where torch has none (before 2.9).

The state-dict round trips of Muon and MuonWithAdamW, maximize, bad hyperparameters and the other
properties are in test_contract.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from course_lib.optim.muon import NS_COEFFICIENTS, Muon, MuonWithAdamW, muon_param_groups, newton_schulz
from optim_helpers import MATRICES, make_params, run, scaled_groups

HAS_TORCH_MUON = hasattr(torch.optim, "Muon")
needs_torch_muon = pytest.mark.skipif(not HAS_TORCH_MUON,
                                      reason="torch.optim.Muon arrived in torch 2.9; this torch has none")
STEPS = 15


def train(make_opt, params: list[torch.Tensor], config: dict) -> torch.optim.Optimizer:
    """STEPS steps of seeded gradients (matrix 1 misses every third); matrices 2 and 3 in a group with half
    the lr and twice the weight decay."""
    return run(make_opt(scaled_groups(params, config, split=2), **config), params, STEPS)


# --- Newton-Schulz --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 4), (3, 9), (5, 5)])
def test_newton_schulz_applies_the_polynomial_to_the_singular_values(shape):
    """NS(G) = U p^k(S / ||G||_F) V^T for G = U S V^T, with p(s) = a s + b s^3 + c s^5 (float64)."""
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    a, b, c = NS_COEFFICIENTS
    x = s / torch.linalg.matrix_norm(g)
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    expected = u @ torch.diag(x) @ vh
    torch.testing.assert_close(newton_schulz(g, dtype=torch.float64), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8, 32), (64, 16), (10, 50), (100, 20)])
def test_newton_schulz_singular_values_land_near_one(shape, dtype):
    """The quintic does not converge to 1 but keeps the singular values in about [0.7, 1.15].

    Gaussian matrices with an aspect ratio of 2 or more have no tiny singular values (those
    of a square one can be arbitrarily close to 0 and need more iterations)."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    out = newton_schulz(g, dtype=dtype)
    assert out.dtype == g.dtype and out.shape == g.shape
    s = torch.linalg.svdvals(out.double())
    assert 0.6 <= float(s.min()) and float(s.max()) <= 1.2
    assert float(torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min()) > 2  # the input is not orthogonal


def test_newton_schulz_of_zero_is_zero():
    assert torch.equal(newton_schulz(torch.zeros(3, 4)), torch.zeros(3, 4))


# --- Muon against torch.optim.Muon ----------------------------------------------------------------

CONFIGS = [
    dict(lr=0.02),
    dict(lr=0.02, nesterov=False, weight_decay=0.0),
    dict(lr=0.02, momentum=0.5, weight_decay=0.05, adjust_lr_fn="original"),
    dict(lr=0.01, adjust_lr_fn="match_rms_adamw", ns_steps=3),
    dict(lr=0.02, momentum=0.0, ns_coefficients=(2.0, -1.5, 0.5), eps=1e-3),
]


@needs_torch_muon
@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_trajectory_equals_torch_muon_with_float64_newton_schulz(config, monkeypatch):
    import torch.optim._muon as torch_muon

    if not hasattr(torch_muon, "_zeropower_via_newtonschulz"):
        pytest.skip(f"torch {torch.__version__} has no torch.optim._muon._zeropower_via_newtonschulz to run "
                    "in float64; the bfloat16 comparison below still runs")
    def float64_newton_schulz(grad, coefficients, steps, eps, *_):  # later versions add use_addmm
        return newton_schulz(grad, tuple(coefficients), steps, eps, dtype=torch.float64)

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", float64_newton_schulz)
    ours, ref = make_params(MATRICES, dtype=torch.float64), make_params(MATRICES, dtype=torch.float64)
    opt = train(lambda g, **c: Muon(g, ns_dtype=torch.float64, **c), ours, config)
    ref_opt = train(torch.optim.Muon, ref, config)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"],
                                   rtol=1e-12, atol=1e-13)


@needs_torch_muon
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS[:3], ids=[str(c) for c in CONFIGS[:3]])
def test_trajectory_equals_torch_muon_with_defaults_to_bfloat16_round_off(config, dtype):
    ours, ref = make_params(MATRICES, dtype=dtype), make_params(MATRICES, dtype=dtype)
    start = [p.detach().clone() for p in ours]
    train(Muon, ours, config)
    train(torch.optim.Muon, ref, config)
    for p, q, s in zip(ours, ref, start):
        assert p.dtype == dtype
        moved = float((q.detach() - s).abs().max())
        assert float((p.detach() - q.detach()).abs().max()) < 0.05 * moved, "more than bfloat16 rounding apart"


@needs_torch_muon
def test_defaults_are_torchs():
    ours = inspect.signature(Muon).parameters
    theirs = inspect.signature(torch.optim.Muon).parameters
    for name in ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn"):
        assert ours[name].default == theirs[name].default, name


# --- Muon + AdamW ---------------------------------------------------------------------------------

class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.hidden = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.tanh(self.hidden(self.embed(tokens)))))


def test_muon_param_groups_gives_hidden_matrices_to_muon():
    net = TinyNet()
    net.embed.weight.requires_grad_(False)
    muon, adamw = muon_param_groups(net, exclude=[net.head])
    assert muon["use_muon"] is True and adamw["use_muon"] is False
    assert muon["params"] == [net.hidden.weight]
    assert adamw["params"] == [net.hidden.bias, net.norm.weight, net.norm.bias, net.head.weight, net.head.bias]
    muon, adamw = muon_param_groups(net)
    assert muon["params"] == [net.hidden.weight, net.head.weight]


def test_muon_param_groups_on_a_model_with_a_tied_head():
    from course_lib.models.qwen import QwenConfig, QwenLM

    model = QwenLM(QwenConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=24, max_seq_len=8))
    muon, adamw = muon_param_groups(model)
    assert all(p.ndim == 2 for p in muon["params"]) and len(muon["params"]) >= 4
    assert any(p is model.embed.weight for p in adamw["params"])  # the tied head goes with the embedding
    assert all(p is not model.embed.weight for p in muon["params"])
    count = sum(1 for _ in model.parameters())
    assert len(muon["params"]) + len(adamw["params"]) == count


def test_muon_with_adamw_equals_the_two_optimizers_stepped_separately():
    torch.manual_seed(0)
    net = TinyNet().double()
    twin = TinyNet().double()
    twin.load_state_dict(net.state_dict())
    tokens = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    targets = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(4))

    groups = muon_param_groups(net, exclude=[net.head])
    groups[1]["weight_decay"] = 0.01
    opt = MuonWithAdamW(groups, lr=0.02, adamw_lr=3e-3, ns_dtype=torch.float64)
    twin_muon, twin_adamw = muon_param_groups(twin, exclude=[twin.head])
    separate = [Muon(twin_muon["params"], lr=0.02, ns_dtype=torch.float64),
                torch.optim.AdamW(twin_adamw["params"], lr=3e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.01,
                                  foreach=False)]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    twin_scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in separate]
    for _ in range(8):
        for model, optimizers in ((net, [opt]), (twin, separate)):
            for o in optimizers:
                o.zero_grad()
            nn.functional.cross_entropy(model(tokens), targets).backward()
            for o in optimizers:
                o.step()
        sched.step()
        for s in twin_scheds:
            s.step()
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13, msg=name)


def test_muon_with_adamw_group_defaults():
    net = TinyNet()
    opt = MuonWithAdamW(muon_param_groups(net), lr=0.05, adamw_lr=1e-3, adamw_weight_decay=0.1)
    muon, adamw = opt.param_groups
    assert (muon["lr"], muon["weight_decay"], muon["eps"], muon["momentum"]) == (0.05, 0.1, 1e-7, 0.95)
    assert (adamw["lr"], adamw["weight_decay"], adamw["eps"], adamw["betas"]) == (1e-3, 0.1, 1e-10, (0.9, 0.95))
    with pytest.raises(ValueError, match="use_muon"):
        MuonWithAdamW(net.parameters())
    with pytest.raises(ValueError, match="matrices"):
        MuonWithAdamW([{"params": [net.hidden.bias], "use_muon": True}])
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        MuonWithAdamW([{"params": [net.hidden.bias], "use_muon": False, "betas": (1.0, 0.9)}])


def test_non_matrix_parameters_are_rejected():
    with pytest.raises(ValueError, match=r"matrices \(2-D\), got one of shape \(3,\)"):
        Muon([torch.zeros(2, 3, requires_grad=True), torch.zeros(3, requires_grad=True)])
