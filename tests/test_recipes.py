"""course_lib.recipes: data and model stand-ins, the GAN helpers, and the published recipes."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import data, models, recipes
from course_lib.train import tasks
from course_lib.recipes import PUBLISHED, Recipe

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_pixels_in_unit_interval_and_stratified_split():
    s = data.load_digits(scale="unit", seed=0)
    assert s.x_train.shape == (1437, 64) and s.x_test.shape == (360, 64)
    for x in (s.x_train, s.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert s.n_classes == 10
    assert torch.bincount(s.y_test).min() >= 35  # every class held out in proportion


def test_digits_are_deterministic_and_seed_dependent():
    a, b, c = data.load_digits(scale="unit", seed=3), data.load_digits(scale="unit", seed=3), data.load_digits(scale="unit", seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)


def test_digits_images_and_class_subsets():
    img = data.load_digits(scale="unit", image=True)
    assert img.x_train.shape[1:] == (1, 8, 8)
    flat = data.load_digits(scale="unit")
    torch.testing.assert_close(img.x_train.flatten(1), flat.x_train)

    sub = data.load_digits(scale="unit", classes=[7, 3])
    assert sub.n_classes == 2 and set(sub.y_train.tolist()) == {0, 1}
    few = data.load_digits(scale="unit", classes=[7, 3], train_per_class=4)
    assert torch.bincount(few.y_train).tolist() == [4, 4]
    assert torch.equal(few.x_test, sub.x_test)  # the test split stays whole
    # relabelling follows the given order: class 0 is the digit 7
    full = data.load_digits(scale="unit")
    sevens = torch.cat([full.x_train[full.y_train == 7], full.x_test[full.y_test == 7]])
    threes = torch.cat([full.x_train[full.y_train == 3], full.x_test[full.y_test == 3]])
    for x, label in zip(few.x_train, few.y_train):
        pool = sevens if label == 0 else threes
        assert any(torch.equal(x, row) for row in pool)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"classes": [1, 1]}, "classes"),
        ({"classes": [10]}, "classes"),
        ({"train_per_class": 0}, "train_per_class"),
    ],
)
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load_digits(scale="unit", **kwargs)


# --------------------------------------------------------------------------------------------
# models and the sequence task
# --------------------------------------------------------------------------------------------


def test_mlp_structure_and_seeding():
    m = models.mlp([64, 32, 16, 10], seed=1, activation=nn.Tanh, dropout=0.5)
    kinds = [type(layer).__name__ for layer in m]
    assert kinds == ["Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    again = models.mlp([64, 32, 16, 10], seed=1, activation=nn.Tanh, dropout=0.5)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="sizes"):
        models.mlp([64])


def test_small_conv_net_shapes_and_parts():
    net = models.SmallConvNet(n_classes=5, width=4, seed=0)
    assert net(torch.rand(3, 1, 8, 8)).shape == (3, 5)
    assert len(net.blocks) == 3
    owned = {id(p) for b in net.blocks for p in b.parameters()} | {id(p) for p in net.head.parameters()}
    assert owned == {id(p) for p in net.parameters()}


def test_tiny_transformer_shapes_and_determinism():
    a, b = models.TinyTransformer(seed=2), models.TinyTransformer(seed=2)
    tokens = torch.randint(0, 10, (4, 8))
    a.eval(), b.eval()
    assert a(tokens).shape == (4, 8, 10)
    torch.testing.assert_close(a(tokens), b(tokens))
    assert len(models.TinyTransformer(n_layers=3).blocks) == 3


def test_tiny_vit_patches_are_the_image_squares_row_by_row():
    model = models.TinyViT(image_size=8, patch=2, channels=3)
    images = torch.randn(2, 3, 8, 8)
    patches = model.patches(images)
    assert patches.shape == (2, 16, 3 * 2 * 2) and model.n_patches == 16
    for b in range(2):
        for k in range(16):
            r, c = divmod(k, 4)  # row by row
            square = images[b, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            assert torch.equal(patches[b, k], square.reshape(-1))


def test_tiny_vit_shapes_seeding_and_parts():
    x = data.load_digits(scale="unit", image=True).x_train[:5]
    a, b = models.TinyViT(seed=3), models.TinyViT(seed=3)
    assert a(x).shape == (5, 10)
    torch.testing.assert_close(a(x), b(x))
    assert not torch.allclose(a(x), models.TinyViT(seed=4)(x))
    assert models.TinyViT(patch=4).n_patches == 4 and models.TinyViT(patch=8)(x).shape == (5, 10)
    deep = models.TinyViT(n_layers=3, n_classes=3)
    assert len(deep.blocks) == 3 and deep(x).shape == (5, 3)
    # every parameter belongs to the embedding, a block, the final norm or the head
    parts = [deep.embed, deep.pos, *deep.blocks, deep.norm, deep.head]
    owned = {id(p) for part in parts for p in part.parameters()}
    assert owned == {id(p) for p in deep.parameters()}


def test_tiny_vit_sees_where_a_pixel_is():
    # the position embedding breaks the symmetry between patches: moving a pixel changes the output
    model = models.TinyViT(seed=0)
    x = torch.zeros(1, 1, 8, 8)
    left, right = x.clone(), x.clone()
    left[0, 0, 0, 0], right[0, 0, 7, 7] = 1.0, 1.0
    assert not torch.allclose(model(left), model(right))


@pytest.mark.parametrize("patch", [0, 3, 16])
def test_tiny_vit_bad_patch(patch):
    with pytest.raises(ValueError, match="patch"):
        models.TinyViT(image_size=8, patch=patch)


def test_sort_task_targets_are_sorted_inputs():
    ds = data.sort_task(50, length=6, vocab=7, seed=0)
    x, y = ds.tensors
    assert x.shape == y.shape == (50, 6) and int(x.max()) < 7
    assert torch.equal(y, x.sort(dim=1).values)
    assert torch.equal(data.sort_task(50, 6, 7, seed=0).tensors[0], x)
    with pytest.raises(ValueError):
        data.sort_task(0)


class _Sorter(nn.Module):
    """A perfect model for the sort task, and a parameter so that .parameters() is not empty."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, tokens):
        return F.one_hot(tokens.sort(dim=1).values, self.vocab).float() * self.scale


def test_sequence_loss_and_accuracy():
    ds = data.sort_task(64, seed=1)
    perfect = _Sorter(10)
    assert tasks.sequence_loss(perfect, ds.tensors).item() < 1e-6
    assert tasks.sequence_accuracy(perfect, ds) == (1.0, 1.0)
    model = models.TinyTransformer(seed=0)
    loss = tasks.sequence_loss(model, ds.tensors)
    assert math.isfinite(loss.item()) and loss.item() > 1.0  # untrained: near ln(10)
    token_acc, seq_acc = tasks.sequence_accuracy(model, ds)
    assert 0.0 <= seq_acc <= token_acc <= 1.0
    assert model.training  # restored


# --------------------------------------------------------------------------------------------
# GAN helpers
# --------------------------------------------------------------------------------------------


def test_ring_data_lies_on_the_modes():
    g = torch.Generator().manual_seed(0)
    pts = data.ring_data(1000, modes=8, radius=2.0, std=0.05, generator=g)
    radius = pts.norm(dim=1)
    assert (radius - 2.0).abs().max() < 0.3
    angles = torch.atan2(pts[:, 1], pts[:, 0]) % (2 * math.pi)
    which = torch.round(angles / (2 * math.pi / 8)).long() % 8
    assert torch.bincount(which, minlength=8).min() > 80


class _Constant(nn.Module):
    def __init__(self, points):
        super().__init__()
        self.points = points
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, z):
        return self.points[torch.arange(z.shape[0]) % len(self.points)]


def test_gan_quality_on_known_generators():
    centres = torch.tensor([[2 * math.cos(a), 2 * math.sin(a)] for a in [2 * math.pi * k / 8 for k in range(8)]])
    assert tasks.gan_quality(_Constant(centres)) == (8, 1.0)
    modes, good = tasks.gan_quality(_Constant(centres[:3]))
    assert (modes, good) == (3, 1.0)
    assert tasks.gan_quality(_Constant(torch.zeros(1, 2))) == (0, 0.0)


def test_ring_share_on_known_generators():
    angles = torch.linspace(0, 2 * math.pi, 50)
    on_ring = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert tasks.ring_share(_Constant(2.0 * on_ring)) == 1.0  # anywhere on the ring, modes or not
    assert tasks.ring_share(_Constant(2.2 * on_ring)) == 1.0  # within the tolerance of 0.3
    assert tasks.ring_share(_Constant(2.5 * on_ring)) == 0.0
    assert tasks.ring_share(_Constant(torch.zeros(1, 2))) == 0.0
    half = torch.cat([2.0 * on_ring[:25], 0.5 * on_ring[:25]])
    assert tasks.ring_share(_Constant(half), n=1000) == 0.5
    with pytest.raises(ValueError, match="tolerance"):
        tasks.ring_share(_Constant(on_ring), tolerance=0.0)


def test_train_gan_calls_on_step_after_every_step():
    g, d = models.gan_pair(hidden=8, seed=0)
    og = torch.optim.Adam(g.parameters(), 1e-3)
    od = torch.optim.Adam(d.parameters(), 1e-3)
    start = g[0].weight.detach().clone()
    seen, weights = [], []

    def on_step(t):
        seen.append(t)
        weights.append(g[0].weight.detach().clone())

    tasks.train_gan(g, d, og, od, steps=4, batch_size=8, on_step=on_step)
    assert seen == [1, 2, 3, 4]
    # called after the step: the first call already sees moved weights, the last one the final weights
    assert not torch.equal(weights[0], start)
    assert all(not torch.equal(a, b) for a, b in zip(weights, weights[1:]))
    assert torch.equal(weights[-1], g[0].weight)


def test_train_gan_is_deterministic_and_logs_both_losses():
    def run():
        g, d = models.gan_pair(hidden=16, seed=0)
        og = torch.optim.Adam(g.parameters(), 1e-3, betas=(0.5, 0.999))
        od = torch.optim.Adam(d.parameters(), 1e-3, betas=(0.5, 0.999))
        return tasks.train_gan(g, d, og, od, steps=5, batch_size=32, seed=3), g

    (h1, g1), (h2, g2) = run(), run()
    assert len(h1["d_loss"]) == len(h1["g_loss"]) == 5
    assert h1 == h2
    assert all(torch.equal(p, q) for p, q in zip(g1.parameters(), g2.parameters()))
    with pytest.raises(ValueError, match="steps"):
        tasks.train_gan(g1, nn.Linear(2, 1), og := torch.optim.SGD(g1.parameters(), 0.1), og, steps=0)


# --------------------------------------------------------------------------------------------
# recipes
# --------------------------------------------------------------------------------------------


def _bib_keys():
    keys = set()
    for bib in [ROOT / "book" / "references.bib", *sorted((ROOT / "book" / "bib").glob("*.bib"))]:
        if bib.exists():
            keys |= set(re.findall(r"@\w+\{([^,]+),", bib.read_text()))
    return keys


def test_every_published_recipe_names_a_real_citation():
    keys = _bib_keys()
    for name, recipe in PUBLISHED.items():
        assert recipe.source in keys, f"{name}: source {recipe.source!r} is in no bibliography"


def test_published_lengths_and_warmup_shares():
    resnet = PUBLISHED["resnet50_imagenet"]
    assert resnet.total_steps == 90 * math.ceil(1_281_167 / 256)
    assert resnet.warmup_fraction == 0.0
    assert PUBLISHED["bert_pretraining"].warmup_fraction == pytest.approx(0.01)
    assert PUBLISHED["vit_b16_imagenet"].warmup_fraction == pytest.approx(10_000 / (300 * 313))
    assert PUBLISHED["bert_finetuning"].total_steps is None
    assert PUBLISHED["bert_finetuning"].warmup_fraction == 0.1
    assert PUBLISHED["dcgan"].betas == (0.5, 0.999)


def _trace(opt, sched, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return lrs


def test_build_follows_each_schedule():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))

    opt, sched = PUBLISHED["resnet50_imagenet"].scaled(lr=0.1).build(model, total_steps=90)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    lrs = _trace(opt, sched, 90)
    assert lrs[29] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(1e-3) and lrs[80] == pytest.approx(1e-4)

    opt, sched = PUBLISHED["bert_pretraining"].scaled(lr=1.0).build(model, total_steps=200)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["eps"] == 1e-6
    lrs = _trace(opt, sched, 201)
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1.0)  # 1% of 200 steps: warmup of 2
    assert lrs[101] == pytest.approx(0.5) and lrs[200] == 0.0

    opt, sched = PUBLISHED["vit_b16_imagenet"].scaled(lr=1.0).build(model, total_steps=100, warmup_steps=10)
    lrs = _trace(opt, sched, 101)
    assert lrs[5] == pytest.approx(0.5) and lrs[55] == pytest.approx(0.5) and lrs[100] == pytest.approx(0.0)

    opt, sched = PUBLISHED["dcgan"].build(model, total_steps=10)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert sched is None and opt.param_groups[0]["betas"] == (0.5, 0.999)


def test_build_decays_weight_matrices_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    opt, _ = PUBLISHED["bert_pretraining"].build(model, total_steps=100)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}


def test_build_with_groups_keeps_their_ratios():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    groups = [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[1].parameters()}]
    opt, sched = PUBLISHED["bert_finetuning"].scaled(lr=1.0).build(model, total_steps=50, groups=groups)
    assert opt.param_groups[1]["lr"] == 0.0  # warmup starts at 0
    for _ in range(20):
        opt.step()
        sched.step()
    body, head = (g["lr"] for g in opt.param_groups)
    assert body / head == pytest.approx(0.01)
    assert opt.param_groups[1]["weight_decay"] == 0.01  # the recipe's default


def test_constant_schedule_with_warmup():
    model = nn.Linear(2, 1)
    opt, sched = Recipe("x", "y", "SGD", lr=1.0, batch_size=1).build(model, total_steps=10, warmup_steps=4)
    assert _trace(opt, sched, 8) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])


def test_recipe_validation():
    with pytest.raises(ValueError, match="optimizer"):
        Recipe("x", "y", "Lion", lr=1e-3, batch_size=1)
    with pytest.raises(ValueError, match="schedule"):
        Recipe("x", "y", "SGD", lr=1e-3, batch_size=1, schedule="cyclic")
    with pytest.raises(ValueError, match="milestones"):
        Recipe("x", "y", "SGD", lr=1e-3, batch_size=1, schedule="multistep", milestones=(30,))
    with pytest.raises(ValueError, match="lr"):
        Recipe("x", "y", "SGD", lr=0.0, batch_size=1)
    with pytest.raises(ValueError, match="Adam with weight_decay"):
        Recipe("x", "y", "Adam", lr=1e-3, batch_size=1, weight_decay=0.1).build(nn.Linear(2, 1), 10)
    with pytest.raises(ValueError, match="warmup share is unknown"):
        Recipe("x", "y", "AdamW", lr=1e-3, batch_size=1, warmup_steps=100).build(nn.Linear(2, 1), 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        PUBLISHED["bert_pretraining"].build(nn.Linear(2, 1), total_steps=10, warmup_steps=10)


def test_scaled_changes_only_what_is_named():
    base = PUBLISHED["vit_b16_imagenet"]
    small = base.scaled(lr=1e-3, batch_size=64)
    assert (small.lr, small.batch_size) == (1e-3, 64)
    assert (small.weight_decay, small.warmup_steps, small.source) == (base.weight_decay, base.warmup_steps, base.source)
    assert base.lr == 3e-3  # the published recipe is untouched


def test_scaled_keeps_the_published_warmup_share():
    vit = PUBLISHED["vit_b16_imagenet"]  # warmup given in steps, length in epochs: the share depends on batch_size
    share = 10_000 / (300 * math.ceil(1_281_167 / 4096))
    for batch_size in (64, 1024, 4096):
        assert vit.scaled(batch_size=batch_size).warmup_fraction == pytest.approx(share)
    # without the pin, a smaller batch would make the same 10,000 steps a far smaller share
    assert dataclasses.replace(vit, batch_size=64).warmup_fraction < share / 50
    model = nn.Linear(2, 1)
    opt, sched = vit.scaled(lr=1.0, batch_size=64).build(model, total_steps=100)
    lrs = _trace(opt, sched, 20)
    warmup = round(share * 100)
    assert lrs[0] == 0.0 and lrs[warmup - 1] < 1.0 and lrs[warmup] == pytest.approx(1.0)
    # setting the warmup anew
    assert vit.scaled(batch_size=64, warmup_steps=0).warmup_fraction == 0.0
    assert vit.scaled(warmup_ratio=0.2).warmup_fraction == 0.2
    bert = PUBLISHED["bert_pretraining"]  # length in steps: batch_size does not change the share anyway
    assert bert.scaled(batch_size=32).warmup_fraction == pytest.approx(0.01)
    assert PUBLISHED["bert_finetuning"].scaled(batch_size=8).warmup_fraction == 0.1
