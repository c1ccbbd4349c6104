"""Model FLOPs utilization: the FLOP/s a run achieves as a share of its GPUs' dense bf16 peak."""

from __future__ import annotations

import re

__all__ = ["PEAK_BF16_TFLOPS", "mfu", "peak_bf16_tflops"]


PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    # (regular expression on torch.cuda.get_device_name(), dense bf16 tensor-core TFLOP/s)
    # NVIDIA's data sheets list bf16 "with sparsity"; the dense peak is half of that figure.
    # Sources: the NVIDIA H100 Tensor Core GPU data sheet (SXM, PCIe and NVL columns), the
    # NVIDIA H200 Tensor Core GPU data sheet (SXM and NVL), the NVIDIA HGX B200 / DGX B200
    # data sheets (per GPU), the A100, L40S, L4 and A10 data sheets.
    # Checked in order: the first match wins. None: a variant whose peak this table does not
    # know (so MFU is reported as unknown rather than against a wrong peak).
    (r"\bH200\b.*\bNVL\b", 835.5),    # H200 NVL: 1671 sparse
    (r"\bH200\b", 989.4),             # H200 SXM: 1979 sparse
    (r"\bH100\b.*\bPCIe\b", 756.0),   # H100 PCIe: 1513 sparse
    (r"\bH100\b.*\bNVL\b", 835.5),    # H100 NVL (94 GB, PCIe card): 1671 sparse
    (r"\bH100\b", 989.4),             # H100 SXM ("NVIDIA H100 80GB HBM3"): 1979 sparse
    (r"\bB200\b", 2250.0),            # B200 (HGX, 1000 W): 4.5 PFLOP/s sparse; not GB200
    (r"\bA100\b", 312.0),             # A100 SXM and PCIe, 40 and 80 GB: 624 sparse
    (r"\bL40S\b", 362.05),            # L40S: 733 sparse
    (r"\bL4\b", 121.0),               # L4: 242 sparse
    (r"\bA10\b", 125.0),              # A10 (not A10G, not A100): 250 sparse
)
"""Dense bf16 peak of some NVIDIA data-center GPUs, matched on the device name."""


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named ``device_name``; ``None`` if unknown or no name."""
    if not device_name:
        return None
    for pattern, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, device_name: str | None,
        n_devices: int = 1) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over the peak of ``n_devices`` GPUs of that name.

    ``tokens_per_s`` counts the tokens of all devices together; ``flops_per_tok`` is the
    training cost of one token (:func:`course_lib.models.qwen.flops_per_token`). ``None``
    when the peak is unknown (a CPU, or a GPU missing from :data:`PEAK_BF16_TFLOPS`).
    """
    peak = peak_bf16_tflops(device_name)
    if peak is None:
        return None
    return tokens_per_s * flops_per_tok / (peak * 1e12 * n_devices)
