"""Parameter counts and FLOPs per token of the bigtrain Llama, without torch.

These two facts also live in bigtrain/model/llama.py (the real model: tests/test_plan.py checks the count
against it) and bigtrain/train/flops.py (MFU); issue 12 moves them to bigtrain/config/arithmetic.py, their
one torch-free home, which this module will then re-export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigtrain.config.schema import ModelConfig


@dataclass
class ParamCounts:
    embedding: int  # per TP rank
    block: int  # one transformer block, per TP rank
    blocks: int
    final_norm: int
    lm_head: int
    per_tp_rank: int
    total: int  # the whole model (TP-replicated norms counted once)


def padded_vocab(vocab_size: int, pad_multiple: int, tp: int) -> int:
    """As bigtrain.model.llama.padded_vocab_size (not imported: plan must not import torch)."""
    multiple = math.lcm(pad_multiple, tp)
    return -(-vocab_size // multiple) * multiple


def count_params(m: ModelConfig, vocab_padded: int, tp: int) -> ParamCounts:
    h, d = m.hidden_size, m.hidden_size // m.num_heads
    qkv = h * (m.num_heads + 2 * m.num_kv_heads) * d // tp
    proj = m.num_heads * d * h // tp
    mlp = 3 * h * m.ffn_hidden_size // tp  # fc1 = [gate; up] (2F x h) + fc2 (h x F)
    block = qkv + proj + mlp + 2 * h  # + two RMSNorm gains (replicated on every TP rank)
    embedding = vocab_padded * h // tp
    lm_head = 0 if m.tie_embeddings else embedding
    per_rank = embedding + m.num_layers * block + h + lm_head
    total = (per_rank - m.num_layers * 2 * h - h) * tp + m.num_layers * 2 * h + h
    return ParamCounts(embedding, block, m.num_layers * block, h, lm_head, per_rank, total)


def flops_per_token(m: ModelConfig, vocab_size: int) -> int:
    """Forward + backward model FLOPs per token, 6 N + 12 L C T (as bigtrain/train/flops.py, PaLM's convention)."""
    h, f, d = m.hidden_size, m.ffn_hidden_size, m.hidden_size // m.num_heads
    per_layer = h * (m.num_heads + 2 * m.num_kv_heads) * d + m.num_heads * d * h + 3 * h * f
    return 6 * (m.num_layers * per_layer + h * vocab_size) + 12 * m.num_layers * h * m.seq_len
