"""Causal (decoder) or bidirectional (encoder) attention through a selectable kernel (``model.attention_backend``).

Every backend computes the same function, softmax(Q K^T / sqrt(D) + causal mask) V (no mask when
``causal=False``), so switching
only changes speed and memory (tests/test_fastpath.py checks loss parity on CPU, tests/test_gpu.py
on CUDA):

- ``auto``: ``scaled_dot_product_attention`` and let PyTorch pick (flash / memory-efficient / cuDNN
  on CUDA, its flash kernel for CPU on CPU);
- ``flash``, ``efficient``, ``cudnn``, ``math``: SDPA restricted to that one kernel (an error if it
  cannot run these inputs, rather than a silent fallback to a slower one);
- ``flash_attn``: the flash-attn package (``pip install flash-attn``; CUDA, bf16/fp16 only).

Shapes: q (B, H, T, D); k, v (B, G, T, D) with H a multiple of G (grouped-query attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bigtrain.config.schema import ATTENTION_BACKENDS as BACKENDS  # noqa: F401  (the choices, validated in config)


def sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto",
                     causal: bool = True) -> torch.Tensor:
    """-> (B, H, T, D). ``causal=False``: every position attends to every position (encoders)."""
    gqa = q.shape[1] != k.shape[1]
    if backend == "auto":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    if backend == "flash_attn":
        return flash_attn_causal(q, k, v, causal)
    from torch.nn.attention import sdpa_kernel

    if gqa and backend in ("cudnn", "efficient"):
        # these kernels take no enable_gqa on every PyTorch build: expand K/V to the query heads
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        gqa = False
    with sdpa_kernel(sdpa_backend(backend)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


def flash_attn_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    from flash_attn import flash_attn_func  # (B, T, heads, D) layout; GQA natively

    y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
    return y.transpose(1, 2)
