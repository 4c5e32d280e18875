"""Model FLOPs per token and per-device peak FLOP/s: the two halves of MFU.

FLOPs per token: ``train_flops_per_token`` of bigtrain/config/arithmetic.py (PaLM's 6N + 12LCT).

MFU = achieved model FLOP/s per device / peak FLOP/s of that device in the run's precision.
Peaks are dense (no sparsity) vendor figures, :data:`PEAK_TFLOPS`. On a CPU or an unknown device
:func:`peak_flops` measures a square GEMM once in the run's precision instead and says so in
``Peak.source``; a measured peak is a practical ceiling, not a datasheet one, so MFU against it
reads higher than against a datasheet peak. Issue-7's ``bigtrain bench`` reuses this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# Dense peak TFLOP/s by device-name fragment (first match wins, so specific names come first).
# bf16/fp16: tensor cores; fp32: plain FP32 (torch does not use TF32 for matmuls by default).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("GH200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H800", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("L40", {"bf16": 181.0, "fp16": 181.0, "fp32": 90.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("MI300X", {"bf16": 1307.0, "fp16": 1307.0, "fp32": 163.4}),
    ("MI250X", {"bf16": 383.0, "fp16": 383.0, "fp32": 47.9}),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s of one device
    source: str  # "table: <device name>" or "measured: <what>"

    @property
    def tflops(self) -> float:
        return self.flops / 1e12


def table_peak(device_name: str, precision: str) -> Peak | None:
    for fragment, peaks in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            if precision not in peaks:
                return None
            return Peak(peaks[precision] * 1e12, f"table: {device_name} {precision} dense")
    return None


def peak_flops(device: torch.device | str, precision: str, measure_unknown: bool = True) -> Peak | None:
    """Peak FLOP/s of one ``device`` in ``precision`` (fp32/bf16/fp16): the table for known GPUs,
    else a GEMM measured once (or None with ``measure_unknown=False``)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = table_peak(name, precision)
        if found is not None or not measure_unknown:
            return found
    elif not measure_unknown:
        return None
    return measure_peak(device, precision)


def measure_peak(device: torch.device, precision: str, size: int | None = None, seconds: float = 0.5) -> Peak:
    """Best FLOP/s of repeated (size x size) @ (size x size) matmuls in ``precision`` for ~``seconds``."""
    size = size or (8192 if device.type == "cuda" else 512)
    dtype = DTYPES[precision]
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up (kernel selection, thread pool start)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    return Peak(best, f"measured: {size}x{size} {precision} GEMM on {device.type}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mfu(tokens_per_sec_per_device: float, flops_per_token: float, peak: Peak) -> float:
    """Model FLOPs utilisation in [0, 1] (may exceed 1 against a measured, pessimistic peak)."""
    return tokens_per_sec_per_device * flops_per_token / peak.flops
