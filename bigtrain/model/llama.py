"""A Llama-style decoder built from megatron-core tensor-parallel layers.

Plain model code: no engine, launcher or checkpoint logic. Parallelism enters only through the
megatron ``ModelParallelConfig`` handed to each layer and the process groups megatron already holds;
given ``layers.SingleProcess`` instead, the same model runs alone in a process on plain torch layers
(no process group: eval, generate, the export's parity check).
Shapes in comments: B batch, T time, C hidden, H local query heads, G local key/value heads,
D head dim, V/tp the local vocabulary shard.

Tensor-parallel layouts (also what the HF converter undoes, see bigtrain/checkpoint/layout.py):
- ``qkv.weight`` is one fused matrix in Megatron's *grouped* order: for each key/value head g,
  its q heads, then k_g, then v_g. A contiguous split over TP ranks hands each rank whole groups.
- ``fc1.weight`` is ``[gate; up]`` created with ``stride=2``, so each rank holds ``[gate_r; up_r]``.
- the vocabulary is padded to a multiple of ``vocab_pad_multiple`` (and of TP); logits of padding
  rows are masked out of the loss, so the padding never changes the model's function.

Sequence parallelism (``tp.sequence_parallel``, bigtrain/parallel/sequence.py): the residual stream is
sharded along the sequence in megatron's sequence-first layout, (T/tp, B, C). The embedding reduce-scatters
its output into it, megatron's linears gather before and reduce-scatter after the attention and MLP, the
output layer gathers the whole sequence, and the loss is computed on (T, B). Parameters and their names
do not change: a checkpoint does not know whether SP was on.

With ``use_cpu_initialization`` every rank draws the *full* master weight of each layer and keeps
its slice, so the initial model is identical for every TP size. :func:`normal_init` draws it in fp32
on the CPU from the global CPU generator (``train.seed``) whatever device or dtype megatron's buffer has:
under ZeRO-3's ``zero.Init`` that buffer is created on ``cuda:LOCAL_RANK`` (and in bf16 for bf16
runs), which would otherwise draw from the CUDA RNG. So the initial weights are the same for every
ZeRO stage, TP size and device. Cost: every rank draws every layer whole: ~N fp32 normals per rank
for an N-parameter model (8B: ~8e9 draws, tens of seconds of CPU per rank, and a transient fp32
buffer of the largest layer, 2 GiB for a 128k x 4096 embedding) — paid once, at construction.

Logit buffers per (token x local vocabulary) element: ``LOGIT_BYTES`` in bigtrain/config/arithmetic.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.config.arithmetic import padded_vocab_size
from bigtrain.config.schema import ModelConfig
from bigtrain.model.attention import causal_attention
from bigtrain.model.layers import Parallel, column_linear, cross_entropy, embedding, row_linear
from bigtrain.model.rope import apply_rope, rope_cache

PAD_LOGIT = -1.0e30  # exp() underflows to exactly 0 in fp32 and bf16


def normal_init(std: float):
    """N(0, std) drawn in fp32 on the CPU from the global CPU generator, then copied into ``weight``
    (any device or dtype; see the module docstring for why)."""
    def init(weight: torch.Tensor) -> torch.Tensor:
        # .float(): under zero.Init a bf16 run's constructors return bf16 even for a CPU tensor
        draw = torch.empty(weight.shape, device="cpu").float().normal_(mean=0.0, std=std)
        with torch.no_grad():
            return weight.copy_(draw)
    return init


class RMSNorm(nn.Module):
    """Computed in fp32 like HF's LlamaRMSNorm, then cast back before the weight multiply."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.compute = rms_norm  # the parameter-free math; train.compile swaps in a compiled copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compute(x, self.weight, self.eps)


# The parameter-free math of each layer, as plain functions of tensors: what bigtrain/parallel/optimize.py
# compiles (train.compile) without tracing the layers' parameter hooks (DeepSpeed ZeRO-3 gathers).

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """(..., 2F) = [gate; up] -> silu(gate) * up (..., F)."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def attention_core(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, groups: int, q_per_group: int,
                   head_dim: int, backend: str, causal: bool = True) -> torch.Tensor:
    """Fused projections (B, T, G*(q_per_group+2)*D) -> RoPE -> attention (causal or not) -> (B, T, H*D)."""
    B, T, _ = qkv.shape
    qkv = qkv.view(B, T, groups, q_per_group + 2, head_dim)
    q = qkv[:, :, :, :q_per_group].reshape(B, T, -1, head_dim)  # (B, T, H, D)
    k, v = qkv[:, :, :, -2], qkv[:, :, :, -1]  # (B, T, G, D)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, D)
    y = causal_attention(q, k, v, backend, causal)  # (B, H, T, D)
    return y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: Parallel, causal: bool = True):
        super().__init__()
        self.causal = causal  # False: bidirectional (bigtrain/model/encoder.py)
        tp_size = tp.tensor_model_parallel_size
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.q_per_group = cfg.num_heads // cfg.num_kv_heads
        self.local_groups = cfg.num_kv_heads // tp_size
        self.backend = cfg.attention_backend  # which kernel computes softmax(QK^T)V: attention.py
        self.sequence_first = tp.sequence_parallel  # megatron's (T, B, ...) layout around the linears
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        qkv_size = (cfg.num_heads + 2 * cfg.num_kv_heads) * self.head_dim
        self.qkv = column_linear(cfg.hidden_size, qkv_size, tp, normal_init(cfg.init_std))
        self.proj = row_linear(cfg.num_heads * self.head_dim, cfg.hidden_size, tp, normal_init(out_std))
        self.compute = attention_core

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv(x)  # (B, T, G*(q_per_group+2)*D); sequence parallel: gathered, (T, B, ...)
        if self.sequence_first:
            qkv = qkv.transpose(0, 1).contiguous()
        y = self.compute(qkv, cos, sin, self.local_groups, self.q_per_group, self.head_dim, self.backend, self.causal)
        if self.sequence_first:
            y = y.transpose(0, 1).contiguous()  # (T, B, H*D)
        out, _ = self.proj(y)  # (B, T, C); sequence parallel: reduce-scattered, (T/tp, B, C)
        return out


class MLP(nn.Module):
    """SwiGLU: fc2(silu(gate(x)) * up(x)) with gate and up fused in fc1."""

    def __init__(self, cfg: ModelConfig, tp: Parallel):
        super().__init__()
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        self.fc1 = column_linear(cfg.hidden_size, 2 * cfg.ffn_hidden_size, tp, normal_init(cfg.init_std), stride=2)
        self.fc2 = row_linear(cfg.ffn_hidden_size, cfg.hidden_size, tp, normal_init(out_std))
        self.compute = swiglu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.fc1(x)  # (B, T, 2*F/tp) = [gate_r; up_r]
        out, _ = self.fc2(self.compute(h))
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: Parallel):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg, tp)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg, tp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, tp: Parallel):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, cfg.vocab_pad_multiple,
                                                   tp.tensor_model_parallel_size)
        self.sequence_parallel = tp.sequence_parallel
        self.embed = embedding(self.padded_vocab_size, cfg.hidden_size, tp, normal_init(cfg.init_std))
        self.layers = nn.ModuleList(Block(cfg, tp) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = column_linear(cfg.hidden_size, self.padded_vocab_size, tp, normal_init(cfg.init_std),
                                     skip_weight_param_allocation=cfg.tie_embeddings)
        self.tp = tp

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> per-token losses (B, T) in fp32 if labels are given, else local logits (B, T, V/tp)."""
        T = tokens.shape[1]
        cos, sin = rope_cache(T, self.cfg.hidden_size // self.cfg.num_heads, self.cfg.rope_theta, tokens.device)
        x = self.embed(tokens)  # (B, T, C); sequence parallel: (T/tp, B, C)
        for block in self.layers:
            x = block(x, cos, sin)
        x = self.norm(x)
        weight = self.embed.weight if self.cfg.tie_embeddings else None
        logits, _ = self.lm_head(x, weight=weight)  # (B, T, V/tp); sequence parallel: gathered, (T, B, V/tp)
        if labels is None:
            logits = self.mask_padding_(logits)
            return logits.transpose(0, 1) if self.sequence_parallel else logits
        # fp32 for the loss (the same tensor in fp32 runs), masked in place; megatron's cross entropy then
        # works in place on it: bigtrain/config/arithmetic.py LOGIT_BYTES
        if self.sequence_parallel:  # the loss on (T, B), returned as (B, T)
            return cross_entropy(self.mask_padding_(logits.float()), labels.t().contiguous(), self.tp).t()
        return cross_entropy(self.mask_padding_(logits.float()), labels, self.tp)

    def mask_padding_(self, logits: torch.Tensor) -> torch.Tensor:
        """In place: padding rows of the vocabulary get a logit of -1e30, so they carry no probability."""
        if self.padded_vocab_size == self.vocab_size:
            return logits
        shard = logits.shape[-1]
        start = self.lm_head_rank() * shard
        ids = torch.arange(start, start + shard, device=logits.device)
        return logits.masked_fill_(ids >= self.vocab_size, PAD_LOGIT)

    def lm_head_rank(self) -> int:
        return self.embed.vocab_start_index // self.embed.num_embeddings_per_partition
