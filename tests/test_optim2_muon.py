"""course_lib.optim.muon against torch.optim.Muon, the SVD, and Muon + AdamW run separately.

torch.optim.Muon runs Newton-Schulz in bfloat16, and torch versions differ in how they group
its products (addmm or not), which changes the bfloat16 rounding. So parity is checked twice:
with the iteration in float64 on both sides (torch's Newton-Schulz function patched for the
test), where the trajectories agree to float64 round-off and every other part of the update
(momentum, Nesterov, decay, LR adjustment) is compared exactly; and with both defaults
(bfloat16), where they agree to bfloat16 round-off.
"""

from __future__ import annotations

import inspect
import io

import pytest
import torch
from torch import nn

from course_lib.optim.muon import NS_COEFFICIENTS, Muon, MuonWithAdamW, muon_param_groups, newton_schulz

HAS_TORCH_MUON = hasattr(torch.optim, "Muon")
needs_torch_muon = pytest.mark.skipif(not HAS_TORCH_MUON,
                                      reason="torch.optim.Muon arrived in torch 2.9; this torch has none")
STEPS = 15


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: one thread beats waking a second one, by far on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_matrices(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A tall matrix, a wide one, a non-contiguous one and a square one."""
    gen = torch.Generator().manual_seed(seed)
    mats = [torch.randn(8, 5, generator=gen, dtype=dtype), torch.randn(4, 12, generator=gen, dtype=dtype),
            torch.randn(6, 3, generator=gen, dtype=dtype).t(), torch.randn(6, 6, generator=gen, dtype=dtype)]
    return [m.requires_grad_() for m in mats]


def set_grads(params: list[torch.Tensor], t: int) -> None:
    """Seeded noise plus a pull towards 0; matrix 1 has no gradient every third step."""
    gen = torch.Generator().manual_seed(100 + t)
    for i, p in enumerate(params):
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        p.grad = None if i == 1 and t % 3 == 0 else noise + 0.5 * p.detach()


def run(make_opt, params: list[torch.Tensor], config: dict, steps: int = STEPS, start: int = 0, opt=None):
    second = {"params": params[2:], "lr": config["lr"] * 0.5}
    if "weight_decay" in config:
        second["weight_decay"] = config["weight_decay"] * 2
    opt = opt or make_opt([{"params": params[:2]}, second], **config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.1 * t), last_epoch=start - 1)
    for t in range(start, start + steps):
        set_grads(params, t)
        opt.step()
        sched.step()
    return opt


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
    ours, ref = make_matrices(torch.float64), make_matrices(torch.float64)
    opt = run(lambda g, **c: Muon(g, ns_dtype=torch.float64, **c), ours, config)
    ref_opt = run(torch.optim.Muon, ref, config)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"],
                                   rtol=1e-12, atol=1e-13)


@needs_torch_muon
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS[:3], ids=[str(c) for c in CONFIGS[:3]])
def test_trajectory_equals_torch_muon_with_defaults_to_bfloat16_round_off(config, dtype):
    ours, ref = make_matrices(dtype), make_matrices(dtype)
    start = [p.detach().clone() for p in ours]
    run(Muon, ours, config)
    run(torch.optim.Muon, ref, config)
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


# --- state_dict, maximize, errors -----------------------------------------------------------------

def muon_and_adamw(groups: list[dict], **config) -> MuonWithAdamW:
    """The first group on Muon, the second (matrices too, here) on AdamW."""
    return MuonWithAdamW([{**groups[0], "use_muon": True}, {**groups[1], "use_muon": False}], **config)


@pytest.mark.parametrize("make", [Muon, muon_and_adamw], ids=["Muon", "MuonWithAdamW"])
def test_state_dict_survives_save_and_weights_only_load(make):
    config = dict(lr=0.02, weight_decay=0.1)
    straight = make_matrices(torch.float32)
    run(make, straight, config, steps=8)

    params = make_matrices(torch.float32)
    opt = run(make, params, config, steps=4)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = [p.detach().clone().requires_grad_() for p in params]
    new = make([{"params": fresh[:2]}, {"params": fresh[2:]}], **config)
    new.load_state_dict(torch.load(buffer, weights_only=True))
    assert new.param_groups[0]["ns_dtype"] is torch.bfloat16
    run(None, fresh, config, steps=4, start=4, opt=new)
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)


def test_maximize_equals_descending_the_negated_gradient():
    ours, ref = make_matrices(torch.float64), make_matrices(torch.float64)
    opt, ref_opt = Muon(ours, lr=0.02, maximize=True), Muon(ref, lr=0.02)
    for t in range(4):
        set_grads(ours, t)
        set_grads(ref, t)
        for q in ref:
            if q.grad is not None:
                q.grad.neg_()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-0.1), r"lr must be in \[0.0, inf\)"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
    (dict(eps=-1.0), "eps"),
    (dict(ns_steps=100), r"ns_steps must be an integer in \[0, 100\)"),
    (dict(ns_steps=2.5), "ns_steps"),
    (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
    (dict(ns_coefficients=(1.0, float("nan"), 2.0)), r"ns_coefficients\[b\]"),
    (dict(adjust_lr_fn="rms"), "adjust_lr_fn"),
    (dict(ns_dtype=torch.int32), "ns_dtype"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        Muon([torch.zeros(2, 3, requires_grad=True)], **kw)


def test_non_matrix_parameters_are_rejected():
    with pytest.raises(ValueError, match=r"matrices \(2-D\), got one of shape \(3,\)"):
        Muon([torch.zeros(2, 3, requires_grad=True), torch.zeros(3, requires_grad=True)])
