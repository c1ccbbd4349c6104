"""Tests of course_lib.capstone.method: groups, LayerAdaptiveAdamW, the paper's eps schedule."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.models import QwenConfig, QwenLM, lm_loss  # noqa: E402
from course_lib.models.qwen import RMSNorm  # noqa: E402
from course_lib.capstone.method import (  # noqa: E402
    LayerAdaptiveAdamW,
    PaperEpsScheduler,
    layer_param_groups,
    linear_multipliers,
    paper_eps,
    plot_paper_eps,
)

TINY = QwenConfig(vocab_size=50, n_layers=3, d_model=16, n_heads=2, n_kv_heads=1, d_ff=24,
                  max_seq_len=12)
HYPER = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


def model_pair(dtype: torch.dtype = torch.float32) -> tuple[QwenLM, QwenLM]:
    torch.manual_seed(0)
    a = QwenLM(TINY).to(dtype)
    b = QwenLM(TINY).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(step))


def train_step(model: QwenLM, optimizer, step: int) -> None:
    ids = batch(step)
    optimizer.zero_grad()
    lm_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
    optimizer.step()


# ----------------------------------------------------------------------------- groups


def test_groups_hold_every_parameter_once_with_its_block_multiplier():
    model = QwenLM(TINY)
    groups = layer_param_groups(model, [1.0, 1.1, 1.2], weight_decay=0.1)
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
    assert groups[0]["layer"] == -1 and groups[0]["lr_mult"] == 1.0  # outside the blocks first
    for i, block in enumerate(model.layers):
        ids = {id(p) for p in block.parameters()}
        mine = [g for g in groups if g["layer"] == i]
        assert {id(p) for g in mine for p in g["params"]} == ids
        assert all(g["lr_mult"] == [1.0, 1.1, 1.2][i] for g in mine)


def test_decay_is_chosen_by_module_type():
    model = QwenLM(TINY)
    groups = layer_param_groups(model, [1.0] * 3, weight_decay=0.1)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, torch.nn.Linear) and name == "weight" and module is not model.lm_head:
                assert decay_of[id(p)] == 0.1
            else:  # biases, RMSNorm gains, the tied embedding
                assert decay_of[id(p)] == 0.0, (type(module).__name__, name)
    with_embedding = layer_param_groups(model, [1.0] * 3, decay_embeddings=True)
    assert {g["weight_decay"] for g in with_embedding for p in g["params"]
            if p is model.embed.weight} == {0.1}
    assert any(isinstance(m, RMSNorm) for m in model.modules())


def test_group_builder_rejects_bad_input():
    model = QwenLM(TINY)
    with pytest.raises(ValueError, match="multipliers"):
        layer_param_groups(model, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"multipliers\[1\]"):
        layer_param_groups(model, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="blocks"):
        layer_param_groups(torch.nn.Linear(2, 2), [1.0])
    with pytest.raises(ValueError, match="weight_decay"):
        layer_param_groups(model, [1.0] * 3, weight_decay=-0.1)


def test_linear_multipliers():
    assert linear_multipliers(5) == pytest.approx([1.0, 1.05, 1.1, 1.15, 1.2])
    assert linear_multipliers(1) == [1.0]
    assert linear_multipliers(3, first=1.2, last=1.0) == pytest.approx([1.2, 1.1, 1.0])
    with pytest.raises(ValueError, match="n_layers"):
        linear_multipliers(0)


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("impl", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_unit_multipliers_are_bit_identical_to_torch_adamw(impl):
    ours_model, torch_model = model_pair()
    ours = LayerAdaptiveAdamW(layer_param_groups(ours_model, [1.0] * 3), **HYPER, **impl)
    reference = torch.optim.AdamW(layer_param_groups(torch_model, [1.0] * 3), **HYPER, **impl)
    for step in range(6):
        train_step(ours_model, ours, step)
        train_step(torch_model, reference, step)
    for (name, p), q in zip(ours_model.named_parameters(), torch_model.parameters()):
        assert torch.equal(p, q), name


def reference_adamw_step(params, grads, states, *, lr, beta1, beta2, eps, weight_decay, t):
    """AdamW (Loshchilov & Hutter 2019, decoupled decay as torch applies it) written out."""
    for p, g, s in zip(params, grads, states):
        p.mul_(1 - lr * weight_decay)
        s["m"] = beta1 * s["m"] + (1 - beta1) * g
        s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
        m_hat, v_hat = s["m"] / (1 - beta1**t), s["v"] / (1 - beta2**t)
        p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def eq2(t, eps_base, eps_min, warmup, decay, alpha):
    """The paper's equation 2, typed in again from the paper."""
    if t < warmup:
        return eps_base * (1 - t / warmup) + eps_min * t / warmup
    return max(eps_base / (t / decay + 1) ** alpha, eps_min)


def test_multipliers_and_eps_schedule_match_a_written_out_adamw():
    model, ref_model = model_pair(torch.float64)
    mults = [1.0, 0.5, 2.0]
    sched = dict(eps_min=1e-4, warmup=3, decay=2, alpha=0.5)
    optimizer = LayerAdaptiveAdamW(layer_param_groups(model, mults), **HYPER, eps=1e-3)
    scheduler = PaperEpsScheduler(optimizer, **sched)
    ref_groups = layer_param_groups(ref_model, mults)
    states = {id(p): {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}
              for g in ref_groups for p in g["params"]}
    for step in range(7):  # crosses T_w = 3
        train_step(model, optimizer, step)
        scheduler.step()
        ids = batch(step)
        lm_loss(ref_model(ids[:, :-1]), ids[:, 1:]).backward()
        eps = eq2(step, 1e-3, **sched)
        with torch.no_grad():
            for g in ref_groups:
                reference_adamw_step(g["params"], [p.grad for p in g["params"]],
                                     [states[id(p)] for p in g["params"]], lr=HYPER["lr"] * g["lr_mult"],
                                     beta1=0.9, beta2=0.95, eps=eps, weight_decay=g["weight_decay"],
                                     t=step + 1)
        ref_model.zero_grad()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("impl", [{"foreach": True}, {"fused": True}])
def test_eps_schedule_reaches_every_kernel(impl):
    models = model_pair()
    runs = []
    for model, kwargs in zip(models, ({"foreach": False}, impl)):
        opt = LayerAdaptiveAdamW(layer_param_groups(model, [1.0, 1.1, 1.2]), **HYPER, eps=1e-2, **kwargs)
        scheduler = PaperEpsScheduler(opt, eps_min=1e-5, warmup=2, decay=1, alpha=1.0)
        for step in range(4):
            train_step(model, opt, step)
            scheduler.step()
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)
    constant_model, _ = model_pair()
    opt = LayerAdaptiveAdamW(layer_param_groups(constant_model, [1.0, 1.1, 1.2]), **HYPER, eps=1e-2)
    for step in range(4):
        train_step(constant_model, opt, step)
    constant = torch.cat([p.detach().flatten() for p in constant_model.parameters()])
    assert (constant - runs[0]).abs().max() > 1e-4  # the schedule changed the steps


def test_group_lr_is_base_times_multiplier_and_groups_are_not_modified():
    model = QwenLM(TINY)
    groups = layer_param_groups(model, [1.0, 1.1, 1.2])
    groups[1]["lr"] = 0.5  # an explicit base rate for one group
    first = LayerAdaptiveAdamW(groups, lr=0.01)
    second = LayerAdaptiveAdamW(groups, lr=0.01)
    for opt in (first, second):
        for g, given in zip(opt.param_groups, groups):
            assert g["lr"] == pytest.approx(given.get("lr", 0.01) * given["lr_mult"])
    assert "lr_mult" not in LayerAdaptiveAdamW(model.parameters()).defaults
    with pytest.raises(ValueError, match="lr_mult"):
        LayerAdaptiveAdamW([{"params": list(model.parameters()), "lr_mult": -0.5}])


def test_lr_schedulers_keep_the_ratios_between_layers():
    model = QwenLM(TINY)
    opt = LayerAdaptiveAdamW(layer_param_groups(model, [1.0, 1.1, 1.2]), lr=0.01)
    before = [g["lr"] for g in opt.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    opt.step()
    scheduler.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25 * lr for lr in before])


def test_state_dicts_resume_the_run_exactly():
    straight, resumed = model_pair()
    opt = LayerAdaptiveAdamW(layer_param_groups(straight, [1.0, 1.1, 1.2]), **HYPER, eps=1e-3)
    scheduler = PaperEpsScheduler(opt, eps_min=1e-4, warmup=3, decay=2)
    for step in range(3):
        train_step(straight, opt, step)
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "opt": opt.state_dict(),
                "sched": scheduler.state_dict()}, buffer)
    for step in range(3, 6):
        train_step(straight, opt, step)
        scheduler.step()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    opt2 = LayerAdaptiveAdamW(layer_param_groups(resumed, [1.0, 1.1, 1.2]), **HYPER, eps=1e-3)
    scheduler2 = PaperEpsScheduler(opt2, eps_min=1e-4, warmup=3, decay=2)
    opt2.load_state_dict(saved["opt"])
    scheduler2.load_state_dict(saved["sched"])
    for step in range(3, 6):
        train_step(resumed, opt2, step)
        scheduler2.step()
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert [g["eps"] for g in opt2.param_groups] == [g["eps"] for g in opt.param_groups]


# ----------------------------------------------------------------------------- eps schedule


def test_paper_eps_at_chosen_steps():
    assert paper_eps(0) == 1e-8
    assert paper_eps(100) == pytest.approx(0.5e-8 + 0.5e-9, rel=1e-12)
    assert paper_eps(199) == pytest.approx(1e-8 / 200 + 1e-9 * 199 / 200, rel=1e-12)
    assert paper_eps(200) == pytest.approx(1e-8 / 2**0.1, rel=1e-12)
    assert paper_eps(600) == pytest.approx(1e-8 / 4**0.1, rel=1e-12)
    assert paper_eps(10_000) == pytest.approx(1e-8 / 51**0.1, rel=1e-12)
    for t in (0, 57, 199, 200, 201, 1234, 99_999):
        assert paper_eps(t) == pytest.approx(eq2(t, 1e-8, 1e-9, 200, 200, 0.1), rel=1e-12)


def test_paper_eps_jumps_up_at_the_end_of_its_warmup():
    left = paper_eps(200 - 1e-9)  # the first piece tends to eps_min
    assert left == pytest.approx(1e-9, rel=1e-6)
    assert paper_eps(200) / left == pytest.approx(10 / 2**0.1, rel=1e-6)  # a jump by 9.33
    assert paper_eps(200) / paper_eps(199) > 8.9  # on integer steps too
    # with warmup == decay the jump is eps_base / 2**alpha vs eps_min whatever the step count
    assert paper_eps(50, warmup=50, decay=50) == pytest.approx(1e-8 / 2**0.1)


def test_paper_eps_monotonicity_and_its_floor():
    warm = [paper_eps(t) for t in range(200)]
    assert all(b < a for a, b in zip(warm, warm[1:]))  # the "warmup" decreases eps
    after = [paper_eps(t) for t in range(200, 20_000, 7)]
    assert all(b <= a for a, b in zip(after, after[1:]))
    assert min(warm + after) == paper_eps(199)  # the smallest eps of a run is just before T_w
    reach = 200 * (10 ** (1 / 0.1) - 1)  # eps_base / (t/T_d + 1)^alpha = eps_min
    assert reach == pytest.approx(2e12)
    assert paper_eps(0.99 * reach) > 1e-9 and paper_eps(1.01 * reach) == 1e-9


@pytest.mark.parametrize("kwargs, name", [
    ({"t": -1}, "t"), ({"eps_base": 0.0}, "eps_base"), ({"eps_min": 2e-8}, "eps_min"),
    ({"warmup": -1}, "warmup"), ({"decay": 0}, "decay"), ({"alpha": -0.1}, "alpha"),
])
def test_paper_eps_rejects_bad_input(kwargs, name):
    t = kwargs.pop("t", 5)
    with pytest.raises(ValueError, match=name):
        paper_eps(t, **kwargs)


def test_scheduler_sets_each_groups_eps_from_its_own_base():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = LayerAdaptiveAdamW([{"params": [a]}, {"params": [b], "eps": 1e-6}], eps=1e-8)
    scheduler = PaperEpsScheduler(opt)
    for t in range(400):
        assert opt.param_groups[0]["eps"] == paper_eps(t)
        assert opt.param_groups[1]["eps"] == paper_eps(t, eps_base=1e-6)
        opt.step()
        scheduler.step()
    assert scheduler.get_last() == [paper_eps(400), paper_eps(400, eps_base=1e-6)]


def test_plot_shows_the_schedule_the_optimizer_uses():
    fig, ax = plt.subplots()
    values = plot_paper_eps(300, ax=ax)
    assert values == [paper_eps(t) for t in range(300)]
    assert list(ax.lines[0].get_ydata()) == values
    assert ax.get_yscale() == "log"
    plt.close(fig)
    assert math.isclose(max(values), 1e-8)
