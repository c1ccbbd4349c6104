r"""Block-wise dynamic 8-bit quantization, the storage format of 8-bit Adam's moments.

Dettmers et al. (2022), "8-bit Optimizers via Block-wise Quantization" (arXiv 2110.02861), keep
each moment tensor as one byte per element:

1. cut the flattened tensor into blocks of ``blocksize`` elements (256 by default);
2. divide each block by its largest magnitude, its *absmax* (one float32 per block), so that
   every value lands in :math:`[-1, 1]`;
3. store, for each value, the index (a ``uint8``) of the nearest of 256 *code* values.

The code is a *dynamic* map: it is dense near zero and sparse near one, like a floating-point
format, because optimizer moments span many orders of magnitude. Dequantization is a table
look-up and one multiplication: :math:`x \approx \text{code}[q] \cdot \text{absmax}`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["dynamic_map", "signed_map", "unsigned_map", "quantize_blockwise", "dequantize_blockwise"]


def dynamic_map(signed: bool = True) -> Tensor:
    r"""The 256 sorted values (float32) of the 8-bit dynamic tree quantization map.

    A code is read as: [a sign bit], then :math:`e` zero bits (the exponent, base 10: the value
    is scaled by :math:`10^{-e}`), then a one bit (the indicator), then the remaining bits, a
    linear fraction. Without a sign bit, the exponents :math:`e = 0, \dots, 6` have :math:`7 - e`
    fraction bits, i.e. :math:`2^{7-e}` values each: the midpoints of that many equal bins of
    :math:`[0.1, 1]`, times :math:`10^{-e}`. A sign bit takes one fraction bit from every exponent
    and mirrors the values to the negative side. The values 0 and 1 complete the map, so that
    zero is exact and each block's largest value is stored without error.

    The layout is the paper's; the values agree with ``bitsandbytes.functional.create_dynamic_map``
    (up to float32 rounding: that function averages the bin edges in float32).

    >>> m = dynamic_map(signed=False)
    >>> m.shape, m[0].item(), m[-1].item(), bool((m[1:] > m[:-1]).all())
    (torch.Size([256]), 0.0, 1.0, True)
    """
    values = [torch.tensor([0.0, 1.0], dtype=torch.float64)]
    for e in range(7):
        bits = (6 if signed else 7) - e  # larger numbers get more fraction bits
        edges = torch.linspace(0.1, 1.0, 2**bits + 1, dtype=torch.float64)
        magnitudes = 10.0**-e * (edges[:-1] + edges[1:]) / 2
        values += [magnitudes, -magnitudes] if signed else [magnitudes]
    return torch.cat(values).sort().values.to(torch.float32)


@functools.cache
def _cached_map(signed: bool, device: torch.device) -> Tensor:
    return dynamic_map(signed).to(device)


def signed_map(device: torch.device | str = "cpu") -> Tensor:
    """The 8-bit signed dynamic map (for Adam's first moment), cached per device."""
    return _cached_map(True, torch.device(device))


def unsigned_map(device: torch.device | str = "cpu") -> Tensor:
    """The 8-bit unsigned dynamic map (for Adam's second moment, which is never negative)."""
    return _cached_map(False, torch.device(device))


def _blocks(flat: Tensor, blocksize: int) -> Tensor:
    """``flat`` padded with zeros to whole blocks, as a (blocks, blocksize) matrix."""
    return torch.nn.functional.pad(flat, (0, -flat.numel() % blocksize)).view(-1, blocksize)


def quantize_blockwise(x: Tensor, code: Tensor, blocksize: int = 256) -> tuple[Tensor, Tensor]:
    r"""Quantize ``x`` to ``uint8`` indices into ``code``, block by block.

    Returns ``(q, absmax)``: ``q`` has the shape of ``x``; ``absmax`` holds one float32 per block
    of ``blocksize`` consecutive elements (the last block may be shorter). Each value
    :math:`x / \text{absmax}` goes to the nearest code value: ``code`` is sorted, so the midpoints
    between neighbouring codes are the decision boundaries and ``torch.bucketize`` (a binary
    search) finds the interval.

    One exception: under an unsigned map (no negative codes, as for Adam's second moment
    :math:`v`), a positive value never becomes 0; it takes at least the smallest positive code.
    A :math:`v` stored as 0 next to a first moment :math:`m` that is not 0 would turn the next step
    into :math:`\eta\, m / \epsilon`, a huge step, on every coordinate whose gradient is small
    compared with the largest one in its block and then zero for a while (rare input features,
    padding). Rounding :math:`v` up instead only makes that coordinate's step smaller.
    """
    flat = x.detach().reshape(-1).to(torch.float32)
    blocks = _blocks(flat, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(1)
    scaled = scaled.view(-1)[: flat.numel()]
    boundaries = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, boundaries)
    if code[0] >= 0:  # unsigned map: keep positive values positive
        smallest_positive = int((code <= 0).sum())
        q = torch.where(scaled > 0, q.clamp(min=smallest_positive), q)
    return q.to(torch.uint8).view(x.shape), absmax


def dequantize_blockwise(q: Tensor, absmax: Tensor, code: Tensor, blocksize: int = 256) -> Tensor:
    r"""The float32 tensor that ``q`` and ``absmax`` stand for: :math:`\text{code}[q] \cdot \text{absmax}`."""
    values = _blocks(code[q.reshape(-1).long()], blocksize) * absmax.unsqueeze(1)
    return values.view(-1)[: q.numel()].view(q.shape)
