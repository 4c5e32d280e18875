"""Activation memory of one micro batch (b sequences of s tokens) on one GPU, and the logits buffers.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models") count the
tensors autograd saves per layer, s*b*h*(34 + 5*a*s/h) bytes for GPT (fp16, dropout). Redone for this
model (RMSNorm in fp32, grouped-query attention, SwiGLU, no dropout), per token, with a = 4 (fp32) or 2
(bf16, fp16) bytes, h hidden, D head dim, n_q = heads / t and n_kv = kv heads / t held by a TP rank,
F = ffn / t, and q = t with sequence parallelism (else 1):

    RMSNorm           (4h + 2a*h + 4) / q          fp32 input, normed copy, the next linear's input, 1/rms
    attention         a*(3 n_q + 3 n_kv)*D + 4 n_q  qkv, roped q and k, output, fp32 log-sum-exp (flash,
                                                   efficient, cudnn: no s x s scores)
        math kernel   a*(3 n_q + 2 n_kv)*D + 4 n_q*s (+ 4 (n_q + n_kv) D for bf16): the fp32 scores
        efficient/cudnn with GQA: k, v expanded to n_q heads: a*(5 n_q + 2 n_kv)*D + 4 n_q
    SwiGLU            4a*F                         [gate; up], silu(gate), their product
    block = 2 RMSNorm + attention + SwiGLU;  output layer = RMSNorm + 17 (labels, loss bookkeeping)

plus the fp32 RoPE table 8*D*s, the padding mask V/t, and with sequence parallelism megatron's
all-gather buffer a*b*s*h (one, reused by every layer). ``model.activation_checkpointing``:

- none: every block holds its tensors until backward;
- full: a block holds only its input, a*h / q per token; backward recomputes one block at a time;
- selective (bigtrain/parallel/optimize.py keeps matmul, attention and collective outputs): a block holds
  its input a*h/q, qkv a*(n_q + 2 n_kv)*D, attention output a*n_q*D + 4 n_q (math: + 4 n_q*s), proj and fc2
  outputs a*h each (whole: with sequence parallelism the reduce-scatter after them is recomputed) and fc1's 2a*F.

``activations`` is what is held after forward plus one block's recomputation in backward. The logits
buffers are separate (bigtrain/config/arithmetic.py LOGIT_BYTES): bf16 logits and their fp32 copy, which
megatron's cross entropy turns in place into the softmax and then the gradient: 6 * b*s*V/t at the peak
(fp32: 4), 4 * b*s*V/t held until backward; the padding mask is applied in place.
tests/test_plan_measure.py checks all of this against the bytes the real model keeps, TP 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigtrain.config.arithmetic import LOGIT_BYTES
from bigtrain.config.schema import ModelConfig

FLASH_LIKE = ("auto", "flash", "efficient", "cudnn", "flash_attn")


@dataclass(frozen=True)
class Shape:
    """A TP rank's view of the model, in the units of the formulas."""
    h: int
    D: int
    n_q: int
    n_kv: int
    F: int
    layers: int
    s: int
    t: int
    q: int  # t with sequence parallelism, else 1
    a: int  # activation bytes

    @staticmethod
    def of(m: ModelConfig, tp: int, sp: bool, act_bytes: int) -> Shape:
        return Shape(m.hidden_size, m.hidden_size // m.num_heads, m.num_heads // tp, m.num_kv_heads // tp,
                     m.ffn_hidden_size // tp, m.num_layers, m.seq_len, tp, tp if sp and tp > 1 else 1, act_bytes)


def norm_bytes(x: Shape) -> float:
    return (4 * x.h + 2 * x.a * x.h + 4) / x.q


def attention_bytes(x: Shape, kernel: str) -> int:
    if kernel == "math":
        upcast = 4 * (x.n_q + x.n_kv) * x.D if x.a != 4 else 0
        return x.a * (3 * x.n_q + 2 * x.n_kv) * x.D + 4 * x.n_q * x.s + upcast
    if kernel in ("efficient", "cudnn") and x.n_q != x.n_kv:
        return x.a * (5 * x.n_q + 2 * x.n_kv) * x.D + 4 * x.n_q
    return x.a * (3 * x.n_q + 3 * x.n_kv) * x.D + 4 * x.n_q


def block_bytes(x: Shape, kernel: str) -> float:
    """Per token, one block without checkpointing."""
    return 2 * norm_bytes(x) + attention_bytes(x, kernel) + 4 * x.a * x.F


def selective_block_bytes(x: Shape, kernel: str) -> float:
    """Per token, one block under selective checkpointing: its input and the kept op outputs."""
    attention = x.a * x.n_q * x.D + (4 * x.n_q * x.s if kernel == "math" else 4 * x.n_q)
    return x.a * x.h / x.q + x.a * (x.n_q + 2 * x.n_kv) * x.D + attention + 2 * x.a * x.h + 2 * x.a * x.F


def activation_bytes(m: ModelConfig, vocab: int, vocab_padded: int, tp: int, sp: bool, act_bytes: int,
                     micro_batch: int, mode: str, kernel: str) -> dict[str, int]:
    """{held, recompute, total}: bytes held after forward (logits buffers excluded), the extra bytes of one
    block recomputed in backward, and their sum."""
    x = Shape.of(m, tp, sp, act_bytes)
    tokens = micro_batch * m.seq_len
    per_block = {"none": block_bytes(x, kernel), "full": x.a * x.h / x.q,
                 "selective": selective_block_bytes(x, kernel)}[mode]
    per_token = m.num_layers * per_block + norm_bytes(x) + 17
    fixed = 8 * x.D * m.seq_len + (vocab_padded // tp if vocab_padded != vocab else 0)
    fixed += x.a * tokens * x.h if x.q > 1 else 0  # megatron's all-gather buffer (sequence parallelism)
    held = round(tokens * per_token + fixed)
    recompute = 0 if mode == "none" else round(tokens * (block_bytes(x, kernel) - per_block + x.a * x.h / x.q))
    return {"held": held, "recompute": recompute, "total": held + recompute}


def logits_bytes(vocab_padded: int, tp: int, precision: str, tokens: int) -> dict[str, int]:
    """{held, peak}: what the output layer and the loss hold from forward to backward, and at their peak
    (bytes per token x local vocabulary element: LOGIT_BYTES, the one home of that count)."""
    local = tokens * vocab_padded // tp
    per = LOGIT_BYTES[precision]
    return {"held": per["saved"] * local, "peak": max(per["forward"], per["backward"]) * local}
