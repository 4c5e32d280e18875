"""A ModernBERT-style encoder for masked-LM pretraining (``train.objective=mlm``), from megatron-core TP layers.

The architecture is exactly Hugging Face's ``ModernBertForMaskedLM`` with these settings, so the
export (bigtrain/convert/hf_map.py, ``ENCODER_KEY_MAP``) loads with logit parity:

- token embedding -> LayerNorm (no bias: ``norm_bias=False``) -> blocks -> final LayerNorm;
- block: ``x + attn(attn_norm(x))`` then ``x + mlp(mlp_norm(x))``, pre-norm; layer 0 has no
  ``attn_norm`` (the embedding norm plays its part: HF's ``nn.Identity``);
- attention: bidirectional (no mask: sequences are packed, never padded), fused q/k/v, RoPE in the
  rotate_half convention with ``model.rope_theta`` (HF ``global_rope_theta``), global attention in every
  layer (``global_attn_every_n_layers=1``), no biases;
- MLP: GeGLU, ``fc2(gelu(a) * b)`` with ``[a; b]`` fused in ``fc1`` (HF ``Wi``), exact (erf) GELU;
- head: ``norm(gelu(dense(x)))``, then the decoder tied to the token embedding, no decoder bias
  (``decoder_bias=False``).

Reused from llama.py: the fused, grouped q/k/v layout (here one "group" per head: ``[q_h; k_h; v_h]``),
the strided ``[a_r; b_r]`` MLP layout, the padded, vocab-parallel embedding and the padding mask.
Replicated across TP ranks: the LayerNorm gains and the head's dense matrix (its input is the full
hidden state on every rank). Shapes: B batch, T time, C hidden, V/tp the local vocabulary shard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.config.arithmetic import padded_vocab_size
from bigtrain.config.schema import ModelConfig
from bigtrain.model.layers import Parallel, column_linear, cross_entropy, embedding
from bigtrain.model.llama import MLP, PAD_LOGIT, Attention, normal_init
from bigtrain.model.rope import rope_cache

IGNORE = -100  # label of positions that carry no loss (not chosen for prediction)


def layer_norm(size: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(size, eps=eps, bias=False)


def geglu(h: torch.Tensor) -> torch.Tensor:
    """(..., 2F) = [a; b] -> gelu(a) * b (..., F)."""
    a, b = h.chunk(2, dim=-1)
    return F.gelu(a) * b


class EncoderMLP(MLP):
    def __init__(self, cfg: ModelConfig, tp: Parallel):
        super().__init__(cfg, tp)
        self.compute = geglu


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: Parallel, first: bool):
        super().__init__()
        self.attn_norm = nn.Identity() if first else layer_norm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg, tp, causal=False)
        self.mlp_norm = layer_norm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = EncoderMLP(cfg, tp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Dense(nn.Linear):
    """A replicated (C, C) matrix drawn from N(0, std) at construction (under ZeRO-3's zero.Init too)."""

    def __init__(self, size: int, std: float):
        self.std = std
        super().__init__(size, size, bias=False)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.std)


class PredictionHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = Dense(cfg.hidden_size, cfg.init_std)
        self.norm = layer_norm(cfg.hidden_size, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


class EncoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, tp: Parallel):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, cfg.vocab_pad_multiple, tp.tensor_model_parallel_size)
        self.embed = embedding(self.padded_vocab_size, cfg.hidden_size, tp, normal_init(cfg.init_std))
        self.embed_norm = layer_norm(cfg.hidden_size, cfg.norm_eps)
        self.layers = nn.ModuleList(EncoderBlock(cfg, tp, first=i == 0) for i in range(cfg.num_layers))
        self.norm = layer_norm(cfg.hidden_size, cfg.norm_eps)
        self.head = PredictionHead(cfg)
        self.lm_head = column_linear(cfg.hidden_size, self.padded_vocab_size, tp, normal_init(cfg.init_std),
                                     skip_weight_param_allocation=True)  # tied to embed.weight
        self.tp = tp

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> per-token losses (B, T) in fp32 if labels are given (0 where the label is
        ``IGNORE``), else local logits (B, T, V/tp)."""
        T = tokens.shape[1]
        cos, sin = rope_cache(T, self.cfg.hidden_size // self.cfg.num_heads, self.cfg.rope_theta, tokens.device)
        x = self.embed_norm(self.embed(tokens))  # (B, T, C)
        for block in self.layers:
            x = block(x, cos, sin)
        x = self.head(self.norm(x))
        logits, _ = self.lm_head(x, weight=self.embed.weight)  # (B, T, V/tp)
        logits = self.mask_padding(logits)
        if labels is None:
            return logits
        chosen = labels != IGNORE
        losses = cross_entropy(logits, labels.masked_fill(~chosen, 0), self.tp)
        return losses * chosen

    def mask_padding(self, logits: torch.Tensor) -> torch.Tensor:
        """Give padding rows of the vocabulary a logit of -1e30 so they carry no probability."""
        if self.padded_vocab_size == self.vocab_size:
            return logits
        shard = logits.shape[-1]
        start = self.embed.vocab_start_index
        ids = torch.arange(start, start + shard, device=logits.device)
        return logits.masked_fill(ids >= self.vocab_size, PAD_LOGIT)
