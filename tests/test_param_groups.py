"""course_lib.param_groups: decay by module type, tied weights, layer-wise and discriminative LRs, MultiOptimizer."""

import copy
import io

import pytest
import torch
from torch import nn

from course_lib.param_groups import (
    MultiOptimizer,
    decays,
    discriminative_lr_groups,
    layerwise_lr_groups,
    weight_decay_groups,
)


class Zoo(nn.Module):
    """One of each kind of layer; names chosen to mislead a name-substring rule."""

    def __init__(self):
        super().__init__()
        self.ln_bias = nn.Linear(4, 4)  # a Linear whose name says "ln" and "bias"
        self.fc = nn.LayerNorm(4)  # a norm layer named like a linear one
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.rms = nn.RMSNorm(4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.rnn = nn.GRU(4, 4)
        self.gate = nn.Parameter(torch.ones(4, 4))  # a bare parameter of a custom module
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def ids(params):
    return {id(p) for p in params}


def test_decay_is_chosen_by_module_type():
    m = Zoo()
    groups = weight_decay_groups(m, 0.1)
    want_decay = [m.ln_bias.weight, m.conv.weight, m.attn.in_proj_weight, m.attn.out_proj.weight, m.rnn.weight_ih_l0, m.rnn.weight_hh_l0]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert ids(groups[0]["params"]) == ids(want_decay)
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert ids(groups[1]["params"]) == ids(trainable) - ids(want_decay)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(trainable)
    assert ids(m.frozen.parameters()).isdisjoint(ids(groups[0]["params"] + groups[1]["params"]))

    with_emb = weight_decay_groups(m, 0.1, decay_embeddings=True)
    assert ids(with_emb[0]["params"]) == ids(want_decay + [m.emb.weight])
    assert decays(m.rms, m.rms.weight) is False and decays(m.bn, m.bn.weight) is False


class TinyLM(nn.Module):
    def __init__(self, vocab=11, d=6, depth=3, tie=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d)) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)
        if tie:
            self.out.weight = self.emb.weight


def test_tied_weight_lands_in_exactly_one_group_judged_by_its_first_owner():
    m = TinyLM()
    for decay_embeddings in (False, True):
        groups = weight_decay_groups(m, 0.1, decay_embeddings=decay_embeddings)
        flat = [p for g in groups for p in g["params"]]
        assert len(flat) == len(ids(flat)) == len(list(m.parameters()))  # parameters() lists the tied one once
        decayed = ids(groups[0]["params"])
        assert (id(m.emb.weight) in decayed) is decay_embeddings


def test_weight_decay_groups_drive_adamw_like_two_separate_adamws():
    torch.manual_seed(0)
    m = TinyLM(tie=False).double()
    ref = copy.deepcopy(m)
    groups = weight_decay_groups(m, 0.3)
    opt = torch.optim.AdamW(groups, lr=0.01)
    ref_groups = weight_decay_groups(ref, 0.3)
    ref_opts = [torch.optim.AdamW(ref_groups[0]["params"], lr=0.01, weight_decay=0.3),
                torch.optim.AdamW(ref_groups[1]["params"], lr=0.01, weight_decay=0.0)]
    x = torch.randint(0, 11, (5,))
    for _ in range(3):
        for model, step in ((m, [opt]), (ref, ref_opts)):
            for o in step:
                o.zero_grad()
            model.out(model.norm(model.emb(x))).square().mean().backward()
            for o in step:
                o.step()
    for p, q in zip(m.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def lr_of(groups):
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_layerwise_lr_decay_by_block_depth():
    m = TinyLM(depth=3, tie=False)
    lr, gamma = 1.0, 0.5
    groups = layerwise_lr_groups(m, m.blocks, lr, gamma, head=[m.norm, m.out], weight_decay=0.1)
    got = lr_of(groups)
    assert len(got) == len(list(m.parameters()))
    assert got[id(m.emb.weight)] == (lr * gamma**4, 0.0)  # depth 0
    for i, block in enumerate(m.blocks):  # depth i + 1 of L = 3: rate gamma^(3 - i)
        rate = lr * gamma ** (3 - i)
        norm, linear = block
        assert got[id(linear.weight)] == (rate, 0.1)
        assert got[id(linear.bias)] == (rate, 0.0)  # same rate as its weight: depth is the block's
        assert got[id(norm.weight)] == (rate, 0.0)
    assert got[id(m.out.weight)] == (lr, 0.1)
    assert got[id(m.norm.bias)] == (lr, 0.0)
    assert sorted({g["depth"] for g in groups}) == [0, 1, 2, 3, 4]
    opt = torch.optim.AdamW(groups)  # the groups are valid optimizer input
    assert len(opt.param_groups) == len(groups)


def test_layerwise_tied_weight_takes_the_deepest_part():
    m = TinyLM(depth=2, tie=True)
    got = lr_of(layerwise_lr_groups(m, m.blocks, 1.0, 0.5, head=[m.out]))
    assert got[id(m.emb.weight)] == (1.0, 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"decay_rate": 0.0}, "decay_rate"), ({"decay_rate": 1.5}, "decay_rate"), ({"lr": -1.0}, "lr"),
     ({"weight_decay": -0.1}, "weight_decay")],
)
def test_layerwise_bad_arguments(kwargs, match):
    m = TinyLM()
    args = {"lr": 1.0, "decay_rate": 0.5} | kwargs
    with pytest.raises(ValueError, match=match):
        layerwise_lr_groups(m, m.blocks, **args)


def test_discriminative_lrs_per_named_part():
    m = TinyLM(depth=2, tie=False)
    lrs = {"emb": 1e-4, "blocks": 1e-3, "norm": 1e-2, "out": 1e-2}
    groups = discriminative_lr_groups(m, lrs, weight_decay=0.05)
    got = lr_of(groups)
    assert len(got) == len(list(m.parameters()))
    assert got[id(m.emb.weight)] == (1e-4, 0.0)
    assert got[id(m.blocks[1][1].weight)] == (1e-3, 0.05)
    assert got[id(m.blocks[1][1].bias)] == (1e-3, 0.0)
    assert got[id(m.out.weight)] == (1e-2, 0.05)
    with pytest.raises(ValueError, match="'norm.weight' belongs to none"):
        discriminative_lr_groups(m, {"emb": 1e-4, "blocks": 1e-3, "out": 1e-2})
    with pytest.raises(ValueError, match="two parts"):
        discriminative_lr_groups(m, lrs | {"blocks.0": 1e-3})
    with pytest.raises(ValueError, match=r"lrs\['out'\]"):
        discriminative_lr_groups(m, lrs | {"out": 0.0})


class TwoParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        return self.b(self.a(x))


def test_multi_optimizer_equals_separate_torch_optimizers_with_one_backward():
    torch.manual_seed(0)
    model = TwoParts().double()
    ref = copy.deepcopy(model)
    multi = MultiOptimizer(
        {"a": torch.optim.SGD(model.a.parameters(), lr=0.05, momentum=0.9),
         "b": torch.optim.Adam(model.b.parameters(), lr=0.01)},
        model=model,
    )
    ref_sgd = torch.optim.SGD(ref.a.parameters(), lr=0.05, momentum=0.9)
    ref_adam = torch.optim.Adam(ref.b.parameters(), lr=0.01)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    for _ in range(5):
        multi.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        multi.step()
        ref_sgd.zero_grad()
        ref_adam.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        ref_sgd.step()
        ref_adam.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_a_second_backward_on_one_graph_fails():
    model = TwoParts()
    loss = model(torch.randn(2, 3)).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_multi_optimizer_state_dict_round_trip_and_param_groups():
    torch.manual_seed(1)
    model = TwoParts()

    def build(m):
        return MultiOptimizer([torch.optim.SGD(m.a.parameters(), lr=0.1, momentum=0.9),
                               torch.optim.AdamW(m.b.parameters(), lr=0.01)])

    x = torch.randn(8, 3)

    def train(m, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()

    multi = build(model)
    train(model, multi, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": multi.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    train(model, multi, 3)

    other = TwoParts()
    other.load_state_dict(saved["model"])
    other_multi = build(other)
    other_multi.load_state_dict(saved["opt"])
    train(other, other_multi, 3)
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)

    # param_groups are the optimizers' own dicts: a scheduler per optimizer moves them
    assert [g["lr"] for g in multi.param_groups] == [0.1, 0.01]
    sched = torch.optim.lr_scheduler.StepLR(multi.optimizers["1"], step_size=1, gamma=0.5)
    multi.step()
    sched.step()
    assert [g["lr"] for g in multi.param_groups] == [0.1, 0.005]
    with pytest.raises(ValueError, match="optimizers"):
        multi.load_state_dict({"0": saved["opt"]["0"]})


def test_multi_optimizer_rejects_shared_and_missing_parameters():
    model = TwoParts()
    with pytest.raises(ValueError, match="in 'a' and in optimizer 'b'"):
        MultiOptimizer({"a": torch.optim.SGD(model.parameters(), lr=0.1), "b": torch.optim.Adam(model.b.parameters())})
    with pytest.raises(ValueError, match="'b.weight'"):
        MultiOptimizer({"a": torch.optim.SGD(model.a.parameters(), lr=0.1)}, model=model)
    with pytest.raises(ValueError, match="at least one"):
        MultiOptimizer({})
