"""The one place that reshapes weights between bigtrain's tensor-parallel layout and plain (HF) tensors.

bigtrain's layouts (see the docstring of bigtrain/model/llama.py), per TP rank r of ``tp``:

==========================  =====================================================================
``embed.weight``            rows (padded vocabulary) split over ranks: dim 0
``lm_head.weight``          same as ``embed.weight`` (absent with tied embeddings)
``layers.N.attn.qkv``       rows in grouped order (per KV group g: its q heads, k_g, v_g), whole
                            groups per rank: dim 0
``layers.N.mlp.fc1``        each rank holds ``[gate_r; up_r]`` (stride 2): dim 0, interleaved
``layers.N.attn.proj``,     columns split over ranks: dim 1
``layers.N.mlp.fc2``
``*norm.weight``            replicated
==========================  =====================================================================

``merge_tp``/``split_tp`` convert between per-rank shards and one TP=1 state dict (bigtrain names,
padded vocabulary); ``to_hf_parts``/``from_hf_parts`` convert one TP=1 tensor to/from its HF tensors
(un-fused q/k/v and gate/up, unpadded vocabulary). bigtrain's RoPE already uses HF's rotate_half
convention, so q and k need no permutation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bigtrain.checkpoint.errors import CheckpointError
from bigtrain.config.schema import ModelConfig

ROWS, COLUMNS, STRIDED_ROWS, REPLICATED = "rows", "columns", "strided_rows", "replicated"


def tp_layout(name: str) -> str:
    """How the parameter ``name`` is split over tensor-parallel ranks."""
    if name.endswith(("embed.weight", "lm_head.weight", "attn.qkv.weight")):
        return ROWS
    if name.endswith("mlp.fc1.weight"):
        return STRIDED_ROWS
    if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
        return COLUMNS
    if name.endswith(("norm.weight", "head.dense.weight")):  # head.dense: the encoder's (C, C) head matrix
        return REPLICATED
    raise CheckpointError(f"no tensor-parallel layout known for parameter {name!r}")


def merge_tp(shards: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-rank state dicts -> one TP=1 state dict. Consumes ``shards`` (emptied as it goes)."""
    names = list(shards[0])
    for r, shard in enumerate(shards[1:], 1):
        if set(shard) != set(names):
            raise CheckpointError(f"TP rank {r} holds parameters {sorted(set(shard) ^ set(names))} "
                                  f"that TP rank 0 does not (or the reverse)")
    out = {}
    for name in names:
        parts = [shard.pop(name) for shard in shards]
        out[name] = merge_param(name, parts)
    return out


def merge_param(name: str, parts: list[Tensor]) -> Tensor:
    layout = tp_layout(name)
    if layout == REPLICATED or len(parts) == 1:
        return parts[0]
    if layout == ROWS:
        return torch.cat(parts, dim=0)
    if layout == COLUMNS:
        return torch.cat(parts, dim=1)
    halves = [p.chunk(2, dim=0) for p in parts]  # [(gate_r, up_r)]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)  # [gate; up]


def split_tp(full: dict[str, Tensor], tp: int) -> list[dict[str, Tensor]]:
    """One TP=1 state dict -> ``tp`` per-rank state dicts (inverse of ``merge_tp``)."""
    shards: list[dict[str, Tensor]] = [{} for _ in range(tp)]
    for name, tensor in full.items():
        for r, part in enumerate(split_param(name, tensor, tp)):
            shards[r][name] = part
    return shards


def split_param(name: str, tensor: Tensor, tp: int) -> list[Tensor]:
    layout = tp_layout(name)
    if layout == REPLICATED:
        return [tensor] * tp
    dim = 1 if layout == COLUMNS else 0
    if tensor.shape[dim] % (tp * (2 if layout == STRIDED_ROWS else 1)):
        raise CheckpointError(f"{name} of shape {tuple(tensor.shape)} does not split over {tp} TP ranks")
    if layout == STRIDED_ROWS:
        gate, up = tensor.chunk(2, dim=0)
        return [torch.cat([g, u]) for g, u in zip(gate.chunk(tp), up.chunk(tp))]
    return [t.contiguous() for t in tensor.chunk(tp, dim=dim)]


def split_qkv(qkv: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Grouped (G*(q_per_group+2)*D, C) -> q (H*D, C), k (G*D, C), v (G*D, C) in HF head order."""
    head_dim = cfg.hidden_size // cfg.num_heads
    q_per_group = cfg.num_heads // cfg.num_kv_heads
    groups = qkv.view(cfg.num_kv_heads, q_per_group + 2, head_dim, -1)  # (G, q_per_group+2, D, C)
    q = groups[:, :q_per_group].reshape(cfg.num_heads * head_dim, -1)
    k = groups[:, q_per_group].reshape(cfg.num_kv_heads * head_dim, -1)
    v = groups[:, q_per_group + 1].reshape(cfg.num_kv_heads * head_dim, -1)
    return q, k, v


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, cfg: ModelConfig) -> Tensor:
    """Inverse of ``split_qkv``."""
    head_dim = cfg.hidden_size // cfg.num_heads
    q_per_group = cfg.num_heads // cfg.num_kv_heads
    c = q.shape[-1]
    groups = torch.cat([q.view(cfg.num_kv_heads, q_per_group, head_dim, c),
                        k.view(cfg.num_kv_heads, 1, head_dim, c),
                        v.view(cfg.num_kv_heads, 1, head_dim, c)], dim=1)  # (G, q_per_group+2, D, C)
    return groups.reshape(-1, c)


def to_hf_parts(name: str, tensor: Tensor, cfg: ModelConfig, vocab_size: int) -> tuple[Tensor, ...]:
    """One TP=1 bigtrain tensor -> its HF tensor(s), in the order hf_map.KEY_MAP lists their names."""
    if name.endswith("attn.qkv.weight"):
        return split_qkv(tensor, cfg)
    if name.endswith("mlp.fc1.weight"):
        return tuple(tensor.chunk(2, dim=0))  # gate, up
    if name in ("embed.weight", "lm_head.weight"):
        return (tensor[:vocab_size],)  # padding rows carry no probability: drop them
    return (tensor,)


def to_hf_tensors(name: str, tensor: Tensor, cfg: ModelConfig, vocab_size: int, hf_names: tuple[str, ...]):
    """``to_hf_parts`` for an architecture whose HF tensor may be fused: one HF name for several parts
    (ModernBERT's ``Wqkv`` = [q; k; v], ``Wi`` = [input; gate]) takes their concatenation."""
    parts = to_hf_parts(name, tensor, cfg, vocab_size)
    if len(hf_names) == 1 and len(parts) > 1:
        return (torch.cat(parts, dim=0),)
    return parts


def from_hf_parts(name: str, parts: tuple[Tensor, ...], cfg: ModelConfig, padded_vocab_size: int) -> Tensor:
    """Inverse of ``to_hf_parts``: HF tensor(s) -> one TP=1 bigtrain tensor."""
    if name.endswith("attn.qkv.weight"):
        return fuse_qkv(*parts, cfg)
    if name.endswith("mlp.fc1.weight"):
        return torch.cat(parts, dim=0)
    if name in ("embed.weight", "lm_head.weight"):
        return pad_vocab(parts[0], padded_vocab_size)
    return parts[0]


def pad_vocab(weight: Tensor, padded_vocab_size: int) -> Tensor:
    """Add zero rows up to ``padded_vocab_size`` (or drop padding rows beyond it)."""
    rows = weight.shape[0]
    if rows >= padded_vocab_size:
        return weight[:padded_vocab_size]
    return torch.cat([weight, weight.new_zeros(padded_vocab_size - rows, *weight.shape[1:])])
