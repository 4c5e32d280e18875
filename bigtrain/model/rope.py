"""Rotary position embeddings in the HF Llama convention (rotate_half over two halves of each head).

Using HF's convention means q/k weights convert to HF without any permutation.
"""

from __future__ import annotations

import torch


def rope_cache(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, D), computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, D); cos/sin (T, D). Rotation in fp32, result in x's dtype."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, D) broadcast over heads
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
