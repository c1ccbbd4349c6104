"""Checks for the 8-bit quantization exercise; the oracles are
:func:`course_lib.optim.quantization.quantize_blockwise` and ``dequantize_blockwise``.

One block :math:`x` of 256 values is stored as its absmax :math:`a = \\max_i |x_i|` (one float32) and, for
each value, the index :math:`q_i` (a ``uint8``) of the code value nearest to :math:`x_i / a`; it stands
for :math:`\\text{code}[q_i] \\cdot a`. The code is the 8-bit dynamic map of Dettmers et al. (2022),
dense near zero: :func:`course_lib.optim.quantization.signed_map` for values of both signs,
:func:`~course_lib.optim.quantization.unsigned_map` for values that are never negative.
"""

from __future__ import annotations

from typing import Callable

import torch

from course_lib.optim.quantization import dequantize_blockwise, quantize_blockwise, signed_map, unsigned_map

from ._core import Trials, describe, passed
from ._policy import policy

__all__ = ["quantize_block", "dequantize_block", "POLICY"]

POLICY = policy(
    "quantize_block", "dequantize_block",
    forbid=("course_lib.optim.quantization.quantize_blockwise", "course_lib.optim.quantization.dequantize_blockwise",
            "bitsandbytes.functional.quantize_blockwise", "bitsandbytes.functional.dequantize_blockwise"),
    reason="the task is to quantize a block yourself (the maps signed_map and unsigned_map are yours to use)",
)  # fmt: skip

BLOCK = 256
_TIE = 1e-6  # a returned index may differ from the reference's where both codes are as near (round-off)


def _random_block(run: Trials, trial: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A block, its code and the code's name. Trial 0: normal values, signed map; 1: squares (like
    Adam's second moment), unsigned map; 2: magnitudes from 1e-6 to 10, largest one negative; 3: all
    zeros; 4: an evenly spaced code; later: a random mix."""
    kind = trial if trial < 5 else run.integer(0, 2)
    if kind == 1:
        return (run.mixed_scale(BLOCK, low=1e-4, high=1.0) ** 2).float(), unsigned_map(), "unsigned_map()"
    if kind == 2:
        block = run.mixed_scale(BLOCK, low=1e-6, high=10.0).float()
        top = int(block.abs().argmax())
        block[top] = -block[top].abs()
        return block, signed_map(), "signed_map()"
    if kind == 3:
        return torch.zeros(BLOCK), signed_map(), "signed_map()"
    if kind == 4:
        return run.normal(BLOCK).float(), torch.linspace(-1.0, 1.0, 256), "torch.linspace(-1, 1, 256)"
    return run.normal(BLOCK, scale=run.log_uniform(1e-3, 1.0)).float(), signed_map(), "signed_map()"


def _nearest(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(values, (code[:-1] + code[1:]) / 2)


def quantize_block(fn: Callable, *, seed: int | None = None, trials: int = 6) -> None:
    """Check ``fn(block, code) -> (q, absmax)`` for one float32 block of 256 values.

    ``absmax`` (a number or a one-element tensor) must be the block's largest magnitude; ``q`` a
    ``torch.uint8`` tensor of the block's shape whose every entry is the index of a code value nearest
    to ``block / absmax`` (ties within round-off may go either way), except that under an unsigned
    map a positive value takes at least the smallest positive code. A block of zeros must give the
    index of the code's 0. The trials cover both dynamic maps, magnitudes over seven orders, a block
    whose largest magnitude is negative, a block of zeros and an evenly spaced code.
    """
    run = Trials("quantize_block", fn, seed, trials)
    for trial in run:
        block, code, code_name = _random_block(run, trial)
        inputs = describe(block=block, code=code_name)
        want_q, want_absmax = quantize_blockwise(block, code, blocksize=BLOCK)
        result = run.call(fn, "quantize_block", inputs, block.clone(), code.clone())
        got_q, got_absmax = run.expect_tuple(result, ("q", "absmax"), "quantize_block")
        if isinstance(got_absmax, torch.Tensor) and got_absmax.numel() != 1:
            shape = tuple(got_absmax.shape)
            raise run.fail(f"absmax should be one number, but it has shape {shape}, on input\n{inputs}")
        run.expect_close(
            "absmax",
            got_absmax,
            want_absmax.item(),
            inputs,
            rtol=1e-7,
            atol=0.0,
            hints={"absmax is the largest magnitude, block.abs().max(), not the largest value.": block.max().item()},
        )
        if not isinstance(got_q, torch.Tensor):
            raise run.fail(f"q should be a torch.Tensor of indices, but it is a {type(got_q).__name__}: {got_q!r:.200}")
        if got_q.dtype != torch.uint8:
            raise run.fail(f"q has dtype {got_q.dtype}: "
                           "store each index in one byte, as torch.uint8 (q.to(torch.uint8)).")
        if tuple(got_q.shape) != tuple(block.shape):
            raise run.fail(f"q has shape {tuple(got_q.shape)}, expected {tuple(block.shape)}, on input\n{inputs}")
        scaled = block / want_absmax.clamp(min=torch.finfo(torch.float32).tiny)
        if code[0] >= 0:  # unsigned map: positive values must not be stored as 0
            zeroed = ((scaled > 0) & (code[got_q.long()] <= 0)).nonzero().flatten()
            if len(zeroed):
                i, smallest = int(zeroed[0]), int((code <= 0).sum())
                raise run.fail(
                    f"block[{i}] / absmax = {scaled[i].item():.3g} is positive, but q[{i}] = {int(got_q[i])} stands "
                    f"for {code[int(got_q[i])].item():g} ({len(zeroed)} of {BLOCK} positive values stored as 0) on "
                    f"input\n{inputs}\nHint: under an unsigned map (no negative codes, as for Adam's v) a positive "
                    f"value keeps at least the smallest positive code, index {smallest}: after the nearest-code "
                    "look-up, raise the index of every positive value to at least that one."
                )
        got_distance = (scaled - code[got_q.long()]).abs()
        want_distance = (scaled - code[want_q.long()]).abs()
        wrong = (got_distance > want_distance + _TIE).nonzero().flatten()
        if len(wrong) == 0:
            continue
        i = int(wrong[0])
        message = (
            f"q[{i}] = {int(got_q[i])} stands for code[{int(got_q[i])}] = {code[int(got_q[i])].item():.6g}, but "
            f"block[{i}] / absmax = {scaled[i].item():.6g} is nearest to code[{int(want_q[i])}] = "
            f"{code[int(want_q[i])].item():.6g}: expected q[{i}] = {int(want_q[i])}.\n"
            f"  expected q = {want_q[:12].tolist()} ...\n  returned q = {got_q[:12].tolist()} ...\n"
            f"({len(wrong)} of {BLOCK} indices are not the nearest code) on input\n{inputs}"
        )
        if want_absmax.item() == 0:
            message += (
                "\nHint: a block of zeros has absmax 0: guard the division (for instance divide by "
                "absmax.clamp(min=torch.finfo(torch.float32).tiny)) so that zeros map to the code's 0."
            )
        else:
            hints = {
                "divide the block by its absmax first: the code covers [-1, 1], the block does not.":
                    _nearest(block, code),
                "that rounds up to the first code value at or above x: the nearest code is within half a gap, so "
                "compare with the midpoints between neighbouring codes (or take argmin |x - code|).": torch.bucketize(
                    scaled, code
                ).clamp(max=255),
                "that rounds down to the last code value at or below x: the nearest code is within half a gap, so "
                "compare with the midpoints between neighbouring codes (or take argmin |x - code|).": (
                    torch.bucketize(scaled, code, right=True) - 1
                ).clamp(min=0),
                "the dynamic map is not evenly spaced: look each value up in code instead of rounding "
                "(x + 1) * 127.5.": ((scaled + 1) * 127.5).round().clamp(0, 255),
            }
            for advice, mistaken in hints.items():
                if torch.equal(got_q.long(), mistaken.long()):
                    message += f"\nHint: {advice}"
                    break
        raise run.fail(message)
    passed("quantize_block", f"{run.n} random blocks match course_lib's quantize_blockwise (nearest code, no positive v as 0, absmax)")


def dequantize_block(fn: Callable, *, seed: int | None = None, trials: int = 4) -> None:
    """Check ``fn(q, absmax, code) -> values``: the float32 values ``code[q] * absmax`` that a block's
    ``uint8`` indices ``q`` and its absmax (a 0-dim float32 tensor) stand for, against
    :func:`~course_lib.optim.quantization.dequantize_blockwise`."""
    run = Trials("dequantize_block", fn, seed, trials)
    for trial in run:
        code, code_name = (signed_map(), "signed_map()") if trial % 2 == 0 else (unsigned_map(), "unsigned_map()")
        q = torch.randint(0, 256, (BLOCK,), generator=run.generator, dtype=torch.uint8)
        absmax = torch.tensor(run.log_uniform(1e-4, 1e2), dtype=torch.float32)
        inputs = describe(q=q, absmax=absmax, code=code_name)
        want = dequantize_blockwise(q, absmax.reshape(1), code, blocksize=BLOCK)
        got = run.call(fn, "dequantize_block", inputs, q.clone(), absmax.clone(), code.clone())
        if isinstance(got, torch.Tensor) and tuple(got.shape) != tuple(want.shape):
            advice = ""
            if got.dim() == 1 and got.numel() == int((q != 0).sum()):
                advice = (
                    "\nHint: index with q.long(): a uint8 tensor used as an index is read as a mask of booleans "
                    "(it keeps the entries where q is not 0)."
                )
            shapes = f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            raise run.fail(f"the values have {shapes}, on input\n{inputs}{advice}")
        mask = {}
        if bool((q != 0).all()):  # code[q] with a uint8 q is code[q != 0], which then keeps every entry
            mask["index with q.long(): a uint8 tensor used as an index is read as a mask of booleans."] = code * absmax
        run.expect_tensor(
            "the values",
            got,
            want,
            inputs,
            rtol=1e-6,
            atol=0.0,
            hints={
                **mask,
                "multiply the code values by absmax: code[q] is in [-1, 1], the block's own scale is absmax.": code[
                    q.long()
                ],
                "q is an index into code, not a value: look it up, code[q.long()], then multiply by absmax.": (
                    q.float() / 255 * absmax
                ),
                "multiply by absmax, do not divide.": code[q.long()] / absmax,
            },
        )
    passed("dequantize_block", f"{run.n} random blocks match course_lib's dequantize_blockwise")
