"""Tests of course_lib.models.qwen: shapes, causality, GQA, RoPE, tying, RMSNorm, counts, FLOPs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from course_lib.models import PRESETS, QwenConfig, QwenLM, count_parameters, flops_per_token, lm_loss
from course_lib.models.qwen import (Attention, RMSNorm, apply_rope, gqa_kernel_applies, linear_cross_entropy,
                                    rope_cos_sin)

TINY = QwenConfig(vocab_size=61, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48,
                  max_seq_len=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(config: QwenConfig = TINY, seed: int = 0) -> QwenLM:
    torch.manual_seed(seed)
    return QwenLM(config).double()


def hand_count(c: QwenConfig, tied_twice: bool = False) -> int:
    """Parameters counted by hand: embedding, per block (q/k/v with bias, o, SwiGLU, 2 norms), final norm."""
    d, kv, f = c.d_model, c.n_kv_heads * c.head_dim, c.d_ff
    attention = (d * d + d) + 2 * (d * kv + kv) + d * d
    block = attention + 3 * d * f + 2 * d
    return c.vocab_size * d * (2 if tied_twice else 1) + c.n_layers * block + d


def test_logits_shape_and_initial_loss_is_uniform_guess():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    assert logits.shape == (3, 16, TINY.vocab_size)
    # weights of std 0.02 give logits near 0, so the next-token loss is near log(V); only each
    # position's own token stands out (tied embeddings: logit ~ d * 0.02), which adds ~0.02
    assert abs(lm_loss(logits[:, :-1], ids[:, 1:]).item() - math.log(TINY.vocab_size)) < 0.1


def test_too_long_input_is_rejected():
    with pytest.raises(ValueError, match="input_ids"):
        tiny_model()(torch.zeros(1, TINY.max_seq_len + 1, dtype=torch.long))


def test_changing_a_future_token_leaves_earlier_logits_alone():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] + 1) % TINY.vocab_size
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    assert (a[:, 7:] - b[:, 7:]).abs().amax(dim=-1).min() > 1e-6  # every later position sees it


def naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention written out: repeat each kv head, masked softmax, weighted sum."""
    b, t, _ = x.shape
    h, kvh, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias).view(b, t, h, hd).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T + attn.k_proj.bias).view(b, t, kvh, hd).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T + attn.v_proj.bias).view(b, t, kvh, hd).transpose(1, 2)
    cos, sin = rope_cos_sin(t, hd, dtype=x.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k = k.repeat_interleave(h // kvh, dim=1)
    v = v.repeat_interleave(h // kvh, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(b, t, h * hd)
    return y @ attn.o_proj.weight.T


def test_gqa_matches_naive_attention_and_mha_with_repeated_kv_heads():
    torch.manual_seed(3)
    gqa = Attention(TINY).double()
    for p in gqa.parameters():  # non-zero biases, so that they are tested too
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 10, TINY.d_model, dtype=torch.float64)
    cos, sin = rope_cos_sin(10, TINY.head_dim, dtype=torch.float64)
    out = gqa(x, cos, sin)
    torch.testing.assert_close(out, naive_attention(gqa, x), rtol=1e-10, atol=1e-12)

    mha = Attention(QwenConfig(**{**TINY.__dict__, "n_kv_heads": TINY.n_heads})).double()
    group = TINY.n_heads // TINY.n_kv_heads
    hd = TINY.head_dim
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(gqa, name), getattr(mha, name)
            w = src.weight.view(TINY.n_kv_heads, hd, -1).repeat_interleave(group, dim=0)
            dst.weight.copy_(w.reshape(TINY.n_heads * hd, -1))
            dst.bias.copy_(src.bias.view(TINY.n_kv_heads, hd).repeat_interleave(group, dim=0).flatten())
    torch.testing.assert_close(mha(x, cos, sin), out, rtol=1e-10, atol=1e-12)


def test_rope_rotates_each_pair_by_its_angle():
    hd, theta, t = 8, 10_000.0, 5
    x = torch.randn(t, hd, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cos, sin = rope_cos_sin(t, hd, theta, dtype=torch.float64)
    y = apply_rope(x, cos, sin)
    for pos in range(t):
        for i in range(hd // 2):
            a = pos * theta ** (-2 * i / hd)
            x1, x2 = x[pos, i].item(), x[pos, i + hd // 2].item()
            assert y[pos, i].item() == pytest.approx(x1 * math.cos(a) - x2 * math.sin(a), abs=1e-12)
            assert y[pos, i + hd // 2].item() == pytest.approx(x1 * math.sin(a) + x2 * math.cos(a),
                                                               abs=1e-12)


def test_rope_keeps_norms_and_scores_depend_on_relative_position_only():
    hd, length = 16, 40
    g = torch.Generator().manual_seed(5)
    cos, sin = rope_cos_sin(length, hd, dtype=torch.float64)
    x = torch.randn(3, length, hd, dtype=torch.float64, generator=g)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(hd, dtype=torch.float64, generator=g), torch.randn(hd, dtype=torch.float64, generator=g)
    rq = apply_rope(q.expand(length, hd), cos, sin)  # q placed at every position
    rk = apply_rope(k.expand(length, hd), cos, sin)
    scores = rq @ rk.T  # scores[m, n] = <R_m q, R_n k>
    for shift in (1, 7, 20):
        for m, n in ((3, 0), (10, 4), (5, 5), (2, 9)):
            assert scores[m + shift, n + shift].item() == pytest.approx(scores[m, n].item(), abs=1e-10)
    assert abs(scores[3, 0].item() - scores[4, 0].item()) > 1e-3  # but they do depend on m - n


def test_tied_embedding_is_one_tensor_and_gets_both_gradients():
    model = tiny_model()
    assert model.lm_head.weight is model.embed.weight
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    ids = torch.randint(0, TINY.vocab_size, (2, 8), generator=torch.Generator().manual_seed(6))
    lm_loss(model(ids), ids).backward()
    grad = model.embed.weight.grad.clone()
    # the same model with an untied copy of the matrix: its two gradients must add up to `grad`
    untied = tiny_model()
    untied.lm_head.weight = torch.nn.Parameter(untied.embed.weight.detach().clone())
    lm_loss(untied(ids), ids).backward()
    torch.testing.assert_close(untied.embed.weight.grad + untied.lm_head.weight.grad, grad)
    assert untied.embed.weight.grad.abs().sum() > 0 and untied.lm_head.weight.grad.abs().sum() > 0
    restored = QwenLM(TINY).double()
    restored.load_state_dict(model.state_dict())
    assert restored.lm_head.weight is restored.embed.weight
    torch.testing.assert_close(restored(ids), model(ids))


def test_rmsnorm_matches_closed_form():
    rng = np.random.default_rng(7)
    x, w = rng.normal(size=(4, 6, 10)) * 3.0, rng.normal(size=10)
    norm = RMSNorm(10, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w))
    expected = x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(norm(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12)
    low = norm.float().to(torch.bfloat16)(torch.from_numpy(x).to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    np.testing.assert_allclose(low.float().detach().numpy(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["smoke", "gpu"])
def test_parameter_count_matches_hand_count(name):
    config = PRESETS[name]
    assert count_parameters(config) == hand_count(config)
    assert count_parameters(config, count_tied_twice=True) == hand_count(config, tied_twice=True)
    if name == "smoke":  # a real model, not only the meta-device build
        assert count_parameters(QwenLM(config)) == hand_count(config)


def test_a_meta_model_has_the_real_shapes_and_a_real_model_is_initialized():
    """On the meta device initialization is skipped (no values to set); shapes and ties stay."""
    config = PRESETS["smoke"]
    with torch.device("meta"):
        meta = QwenLM(config)
    real = QwenLM(config)
    assert all(p.is_meta for p in meta.parameters())
    assert meta.lm_head.weight is meta.embed.weight
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert real.embed.weight.std().item() == pytest.approx(config.init_std, rel=0.05)
    assert torch.equal(real.norm.weight, torch.ones(config.d_model))


def test_presets_have_the_promised_sizes():
    assert 0.08e6 < count_parameters(PRESETS["smoke"]) < 0.15e6
    assert 10e6 < count_parameters(PRESETS["gpu"]) < 30e6
    paper = PRESETS["paper"]
    assert (paper.n_layers, paper.d_model, paper.n_heads, paper.max_seq_len) == (12, 768, 12, 1024)
    assert QwenConfig.preset("smoke", max_seq_len=32).max_seq_len == 32


def test_flops_per_token_matches_a_flop_counter():
    """PyTorch's FlopCounterMode counts matmul FLOPs of forward + backward; norms and biases
    are not matmuls, so the estimate exceeds the count by exactly 6 x their number."""
    config = QwenConfig.preset("smoke", max_seq_len=32)
    model = QwenLM(config)
    ids = torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(8))
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the math backend's bmm calls are counted
        lm_loss(model(ids), ids).backward()
    measured = counter.get_total_flops() / ids.numel()
    not_matmul = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert flops_per_token(config) == measured + 6 * not_matmul


def test_initialization_follows_gpt2():
    config = QwenConfig(vocab_size=512, n_layers=4, d_model=256, n_heads=4, n_kv_heads=4,
                        d_ff=512, max_seq_len=16)
    torch.manual_seed(9)
    model = QwenLM(config)
    block = model.layers[1]
    assert block.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.03)
    scaled = 0.02 / math.sqrt(2 * config.n_layers)
    assert block.attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.03)
    assert block.mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.03)
    assert torch.all(block.attn.q_proj.bias == 0) and torch.all(block.attn_norm.weight == 1)
    torch.manual_seed(9)
    plain = QwenLM(QwenConfig(**{**config.__dict__, "scaled_residual_init": False}))
    assert plain.layers[1].mlp.down_proj.weight.std().item() == pytest.approx(0.02, rel=0.03)


def test_a_few_adamw_steps_fit_one_batch():
    model = tiny_model(seed=10)
    ids = torch.randint(0, TINY.vocab_size, (2, 16), generator=torch.Generator().manual_seed(10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = lm_loss(model(ids[:, :-1]), ids[:, 1:]).item()
    for _ in range(30):
        opt.zero_grad()
        loss = lm_loss(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("field, value", [("n_kv_heads", 3), ("n_heads", 5), ("d_model", 36),
                                          ("vocab_size", 0), ("norm_eps", -1.0)])
def test_bad_config_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QwenConfig(**{**TINY.__dict__, field: value})


def test_unknown_preset_and_bad_seq_len_are_rejected():
    with pytest.raises(ValueError, match="name"):
        QwenConfig.preset("huge")
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(TINY, seq_len=0)


# ----------------------------------------------------------------------------- the loss inside the model


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_linear_cross_entropy_equals_cross_entropy_of_the_logits(dtype, tol, chunk):
    """Oracle: F.cross_entropy on the full logits, and autograd through it."""
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(50, 16, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(61, 16, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 61, (50,), generator=g)
    ours = linear_cross_entropy(hidden, weight, targets, chunk)
    (2.5 * ours).backward()  # a gradient from above is passed through
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    (2.5 * want).backward()
    torch.testing.assert_close(ours, want, rtol=tol, atol=tol)
    torch.testing.assert_close(got[0], hidden.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(got[1], weight.grad, rtol=tol, atol=tol)
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk), want, rtol=tol, atol=tol)


def test_linear_cross_entropy_under_bf16_autocast_matches_float32_logits():
    """The logits come from a bf16 matmul, as in training on a GPU; the softmax runs in float32 in both."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(40, 32, generator=g, requires_grad=True)
    weight = torch.randn(97, 32, generator=g, requires_grad=True) * 0.1
    weight = weight.detach().requires_grad_()
    targets = torch.randint(0, 97, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets, chunk=16)
        logits = hidden @ weight.T
    ours.backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want = torch.nn.functional.cross_entropy(logits.float(), targets)
    want.backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, want, rtol=1e-6, atol=1e-6)  # the same bf16 logits, the same float32 softmax
    torch.testing.assert_close(got[0], hidden.grad, rtol=2e-2, atol=1e-4)  # bf16 products, summed per chunk
    torch.testing.assert_close(got[1], weight.grad, rtol=2e-2, atol=1e-4)


def test_the_model_given_targets_returns_the_loss_of_its_logits():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (3, 16), generator=torch.Generator().manual_seed(6))
    x, y = ids[:, :-1], ids[:, 1:]
    loss = model(x, y)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    for name, p in model.named_parameters():  # the tied embedding gets both of its gradients
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert lm_loss(model(x), y).item() == pytest.approx(loss.item(), rel=1e-6)  # lm_loss works in float32
    with pytest.raises(ValueError, match="targets"):
        model(x, y[:, :-1])


def test_linear_cross_entropy_rejects_bad_input():
    h, w, t = torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="share d"):
        linear_cross_entropy(h, torch.randn(5, 2), t)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match="chunk"):
        linear_cross_entropy(h, w, t, chunk=0)


def test_sdpas_grouped_query_kernel_equals_repeated_kv_heads():
    """Oracle: the same attention with each key/value head repeated (repeat_interleave) and plain SDPA."""
    torch.manual_seed(8)
    attn = Attention(TINY).double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 10, TINY.d_model, dtype=torch.float64)
    cos, sin = rope_cos_sin(10, TINY.head_dim, dtype=torch.float64)
    attn.gqa_kernel = True  # scaled_dot_product_attention(..., enable_gqa=True), even on a CPU
    kernel = attn(x, cos, sin)
    attn.gqa_kernel = False
    repeated = attn(x, cos, sin)
    torch.testing.assert_close(kernel, repeated, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kernel, naive_attention(attn, x), rtol=1e-10, atol=1e-12)
    # the automatic choice: the kernel on a CUDA GPU in half precision only (where FlashAttention serves it)
    assert not gqa_kernel_applies(torch.zeros(1, 2, 3, 4))
    assert not gqa_kernel_applies(torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gqa_kernel_on_the_gpu_matches_repeated_heads_in_bf16():
    torch.manual_seed(9)
    attn = Attention(QwenConfig.preset("gpu")).cuda()
    x = torch.randn(2, 128, 512, device="cuda")
    cos, sin = rope_cos_sin(128, attn.head_dim, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auto = attn(x, cos, sin)
        attn.gqa_kernel = False
        repeated = attn(x, cos, sin)
    torch.testing.assert_close(auto.float(), repeated.float(), rtol=2e-2, atol=2e-2)
