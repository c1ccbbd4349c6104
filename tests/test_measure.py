"""course_lib.measure: bytes of optimizer state, checked against closed forms."""

import pytest
import torch

import course_lib.optim as co
from course_lib.measure import param_count, state_bytes, state_bytes_per_param, state_tensors


def params(*shapes, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.randn(*s, dtype=dtype, requires_grad=True) for s in shapes]


def one_step(opt, ps, **kwargs):
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step(**kwargs)
    return opt


def test_adam_keeps_two_numbers_per_parameter():
    ps = params((10, 20), (20,))
    opt = co.Adam(ps, lr=1e-3)
    assert state_bytes(opt) == 0  # state is created on the first step
    one_step(opt, ps)
    assert param_count(opt) == 220
    assert state_bytes(opt) == 220 * 2 * 4
    assert state_bytes_per_param(opt) == 8.0


def test_bytes_follow_the_dtype():
    ps = params((7, 3), dtype=torch.float64)
    assert state_bytes_per_param(one_step(co.Adam(ps), ps)) == 16.0


def test_sgd_with_and_without_momentum():
    ps = params((5, 5))
    assert state_bytes(one_step(co.SGD(ps, lr=0.1), ps)) == 0
    ps = params((5, 5))
    assert state_bytes_per_param(one_step(co.SGD(ps, lr=0.1, momentum=0.9), ps)) == 4.0


def test_torch_adam_counts_its_step_tensors():
    ps = params((4, 6), (6,))
    opt = one_step(torch.optim.Adam(ps, foreach=False), ps)
    # exp_avg and exp_avg_sq per element, plus one float32 step counter per parameter tensor
    assert state_bytes(opt) == 30 * 8 + 2 * 4


def test_lookahead_adds_the_slow_weights_of_the_wrapper():
    ps = params((8, 8), (8,))
    opt = one_step(co.Lookahead(co.AdamW(ps, lr=1e-3)), ps)
    assert state_bytes_per_param(opt) == 12.0
    assert len(state_tensors(opt)) == 3 * len(ps)


def test_adam8bit_one_byte_per_moment_plus_a_scale_per_block():
    ps = params((64, 64))  # 4096 elements: quantized (min_8bit_size=4096), 16 blocks of 256
    opt = one_step(co.Adam8bit(ps, blocksize=256), ps)
    assert state_bytes(opt) == 2 * 4096 * 1 + 2 * 16 * 4
    assert state_bytes_per_param(opt) == 2 + 2 * 4 / 256


def test_adafactor_keeps_row_and_column_statistics_of_a_matrix():
    n, m = 12, 30
    ps = params((n, m))
    opt = one_step(co.Adafactor(ps), ps)
    assert state_bytes(opt) == (n + m) * 4


def test_a_tensor_is_counted_once_however_often_it_appears():
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    buffer = torch.zeros(10)
    opt.state[p] = {"a": buffer, "b": [buffer, (torch.zeros(2, dtype=torch.uint8),)], "step": 3, "note": "x"}
    assert state_bytes(opt) == 10 * 4 + 2


def test_no_parameters_is_an_error():
    ps = params((2,))
    opt = co.SGD(ps, lr=0.1)
    opt.param_groups[0]["params"] = []
    with pytest.raises(ValueError, match="no parameters"):
        state_bytes_per_param(opt)
