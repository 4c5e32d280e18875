"""The model's arithmetic, torch-free: the one home of numbers several layers need.

The model (bigtrain/model/llama.py), the plan (bigtrain/plan/), MFU (bigtrain/train/flops.py,
bigtrain/bench/report.py), the optimizer's parameter groups (bigtrain/parallel/engine.py,
bigtrain/bench/bare.py) and the checkpoint readers (bigtrain/checkpoint/zero_reader.py) all take
these from here, so they cannot disagree.

- **Padded vocabulary**: the embedding table has ``padded_vocab_size`` rows, a multiple of
  ``lcm(vocab_pad_multiple, TP)`` (the same for every TP size dividing ``vocab_pad_multiple``).
- **Parameter counts** per part (:class:`ParamCounts`), per tensor-parallel rank and in total.
- **FLOPs per token** (PaLM, Chowdhery et al. 2022, appendix B), per trained token (forward + backward)::

      6 * N  +  12 * L * C * T

  ``N`` = parameters that take part in a matmul: per layer the fused QKV (C x (H + 2G) D), the
  attention output (H D x C), the SwiGLU ``fc1`` (C x 2F) and ``fc2`` (F x C); plus the output
  projection (C x V, counted even when it is tied to the embedding, because the logits matmul runs
  either way). The embedding *lookup* and the RMSNorm gains are not matmuls and are excluded.
  ``V`` is the tokenizer's vocabulary, not the padded table: padding rows are an implementation
  detail, and MFU counts model FLOPs, not executed ones. ``12 * L * C * T``: attention scores QK^T
  and the weighted sum AV cost 2 * T * C multiply-adds each per token and layer in the forward pass
  (x3 for forward + backward). Causal masking is not discounted (PaLM's convention), and
  grouped-query attention does not reduce it (every query head still attends over T keys).
- **Weight decay**: matrices are decayed, the RMSNorm gains (``*norm.weight``) are not. The
  optimizer has two parameter groups in this order: decayed, then not decayed, each in the model's
  ``named_parameters`` order. The DeepSpeed checkpoint reader finds a parameter's Adam state by that
  order (:func:`optimizer_order`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from bigtrain.config.schema import ModelConfig

NO_DECAY_SUFFIX = "norm.weight"  # RMSNorm gains: 1-D, not decayed


# Bytes per (token x local vocabulary) element that the output layer and the loss hold in training, by
# precision (bigtrain/model/llama.py's forward + megatron's vocab_parallel_cross_entropy; for the plan):
# "forward" at the loss's peak, "saved" from forward to backward, "backward" at the gradient's peak.
# bf16/fp16: the lm_head output (2) and its fp32 copy (4) meet once; megatron's cross entropy then works
# in place on the copy (max-subtract, exp) and saves it as exp_logits (4); its backward turns that buffer
# into the fp32 gradient in place, which autograd casts to a bf16 gradient (2) for lm_head's backward.
# fp32: ``.float()`` is the same tensor and everything happens in it (4). The vocabulary-padding mask is
# applied in place (no copy). What remains above the 2-byte logits of bf16 is the fp32 loss math itself.
LOGIT_BYTES = {"fp32": {"forward": 4, "saved": 4, "backward": 4},
               "bf16": {"forward": 6, "saved": 4, "backward": 6},
               "fp16": {"forward": 6, "saved": 4, "backward": 6}}


def padded_vocab_size(vocab_size: int, pad_multiple: int, tensor_parallel: int) -> int:
    """Rows of the embedding table: independent of TP for TP sizes dividing ``pad_multiple``."""
    multiple = math.lcm(pad_multiple, tensor_parallel)
    return -(-vocab_size // multiple) * multiple


@dataclass
class ParamCounts:
    """Parameters of each part of the model; ``tp`` parts are per tensor-parallel rank."""

    embedding: int  # per TP rank (padded rows included)
    attention: int  # one block's qkv + proj, per TP rank
    mlp: int  # one block's fc1 ([gate; up]) + fc2, per TP rank
    norms: int  # one block's two RMSNorm gains (replicated on every TP rank)
    block: int  # one transformer block, per TP rank
    blocks: int
    final_norm: int
    lm_head: int  # per TP rank; 0 with tied embeddings
    per_tp_rank: int
    total: int  # the whole model (TP-replicated norms counted once)


def param_counts(m: ModelConfig, vocab_padded: int, tp: int = 1) -> ParamCounts:
    """What bigtrain's model holds (tests/test_plan.py checks it against the model's parameters)."""
    h, d = m.hidden_size, m.hidden_size // m.num_heads
    attention = (h * (m.num_heads + 2 * m.num_kv_heads) * d + m.num_heads * d * h) // tp  # qkv + proj
    mlp = 3 * h * m.ffn_hidden_size // tp  # fc1 = [gate; up] (2F x h) + fc2 (h x F)
    norms = 2 * h
    block = attention + mlp + norms
    embedding = vocab_padded * h // tp
    lm_head = 0 if m.tie_embeddings else embedding
    per_rank = embedding + m.num_layers * block + h + lm_head
    replicated = m.num_layers * norms + h
    total = (per_rank - replicated) * tp + replicated
    return ParamCounts(embedding, attention, mlp, norms, block, m.num_layers * block, h, lm_head, per_rank, total)


def matmul_params(m: ModelConfig, vocab_size: int) -> int:
    """N: parameters used in matmuls (see the module docstring)."""
    C, F = m.hidden_size, m.ffn_hidden_size
    D = C // m.num_heads
    qkv = C * (m.num_heads + 2 * m.num_kv_heads) * D
    attn_out = m.num_heads * D * C
    mlp = C * 2 * F + F * C
    return m.num_layers * (qkv + attn_out + mlp) + C * vocab_size


def train_flops_per_token(m: ModelConfig, vocab_size: int) -> int:
    """Forward + backward FLOPs per token: 6 * N + 12 * L * C * T."""
    attention = 12 * m.num_layers * m.hidden_size * m.seq_len
    return 6 * matmul_params(m, vocab_size) + attention


def is_decayed(name: str) -> bool:
    """Whether AdamW decays the parameter ``name`` (matrices yes, RMSNorm gains no)."""
    return not name.endswith(NO_DECAY_SUFFIX)


def optimizer_order(names: Iterable[str]) -> list[str]:
    """Parameter names in the optimizer's order: the decayed group, then the not-decayed one."""
    names = list(names)
    return [n for n in names if is_decayed(n)] + [n for n in names if not is_decayed(n)]
