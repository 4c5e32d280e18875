"""The bare baseline: bigtrain's Llama as plain PyTorch, trained by a plain PyTorch loop.

Same model and code paths as bigtrain/model/llama.py (the same RMSNorm, RoPE, attention kernel and
SwiGLU functions, the same fused ``qkv`` and ``fc1`` layouts, the same parameter names and dtypes),
but ``nn.Linear`` / ``nn.Embedding`` instead of megatron's tensor-parallel layers, ``F.cross_entropy``
instead of megatron's vocab-parallel one, and no DeepSpeed: the step is forward, backward, gradient
clipping and ``torch.optim.AdamW`` (with bf16: bf16 weights and compute, fp32 master weights and
fp32 gradient accumulation, as DeepSpeed's bf16 mode does). The same fast-path switches
(activation checkpointing, compile) apply, through the same bigtrain/parallel/optimize.py.

Because the names and layouts match, :func:`copy_weights` loads a bigtrain model's weights as they
are, and the two must compute the same loss (bench/run.py checks it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.config.arithmetic import is_decayed, padded_vocab_size
from bigtrain.config.schema import ModelConfig, TrainConfig
from bigtrain.model.llama import PAD_LOGIT, RMSNorm, attention_core, swiglu
from bigtrain.model.rope import rope_cache
from bigtrain.config.schedule import lr_lambda


class BareAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.q_per_group = cfg.num_heads // cfg.num_kv_heads
        self.groups = cfg.num_kv_heads
        self.backend = cfg.attention_backend
        self.qkv = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(cfg.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.compute = attention_core  # llama.py's: RoPE + the same attention kernel

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        y = self.compute(self.qkv(x), cos, sin, self.groups, self.q_per_group, self.head_dim, self.backend)
        return self.proj(y)  # (B, T, C)


class BareMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, 2 * cfg.ffn_hidden_size, bias=False)  # [gate; up]
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)
        self.compute = swiglu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.compute(self.fc1(x)))


class BareBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = BareAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = BareMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class BareLlama(nn.Module):
    """Parameter names equal bigtrain's LlamaModel at TP=1 (``lm_head.weight`` absent when tied)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, cfg.vocab_pad_multiple, 1)
        self.embed = nn.Embedding(self.padded_vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(BareBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, self.padded_vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """tokens, labels (B, T) -> per-token losses (B, T) in fp32."""
        T = tokens.shape[1]
        cos, sin = rope_cache(T, self.cfg.hidden_size // self.cfg.num_heads, self.cfg.rope_theta, tokens.device)
        x = self.embed(tokens)  # (B, T, C)
        for block in self.layers:
            x = block(x, cos, sin)
        x = self.norm(x)
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, weight).float()  # (B, T, V_padded)
        if self.padded_vocab_size != self.vocab_size:
            logits[..., self.vocab_size:] = PAD_LOGIT
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)


@torch.no_grad()
def copy_weights(bare: BareLlama, state: dict[str, torch.Tensor]) -> None:
    """Load bigtrain LlamaModel weights (TP=1, names as they are) into ``bare``, checking every name."""
    own = dict(bare.named_parameters())
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"bare model and bigtrain model differ: missing {missing}, unexpected {unexpected}")
    for name, param in own.items():
        param.copy_(state[name])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """As bigtrain/parallel/engine.py: no weight decay on the norms' gains (config/arithmetic.py)."""
    decay = [p for n, p in model.named_parameters() if is_decayed(n)]
    no_decay = [p for n, p in model.named_parameters() if not is_decayed(n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class BareTrainer:
    """Forward/backward per micro-batch, then clip + AdamW + LR schedule, in plain PyTorch.

    ``dtype`` bf16: the model holds bf16 weights; each micro-batch's bf16 gradients are added to fp32
    gradients of fp32 master weights, which AdamW updates and copies back (DeepSpeed's bf16 recipe).
    """

    def __init__(self, model: BareLlama, t: TrainConfig, dtype: torch.dtype):
        self.model, self.t, self.dtype = model, t, dtype
        self.params = [p for p in model.parameters()]
        if dtype == torch.float32:
            self.master = self.params
        else:
            self.master = [p.detach().float().requires_grad_() for p in self.params]
            for m in self.master:
                m.grad = torch.zeros_like(m)
        groups = param_groups(model, t.weight_decay)
        index = {id(p): i for i, p in enumerate(self.params)}
        master_groups = [{**g, "params": [self.master[index[id(p)]] for p in g["params"]]} for g in groups]
        self.optimizer = torch.optim.AdamW(master_groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                                           fused=t.fused_adam)  # the kernel DeepSpeed's torch_adam runs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(t))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens[:, :-1], tokens[:, 1:]).mean()

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        (loss / accum).backward()  # as DeepSpeed: each micro-batch adds its share of the mean
        if self.master is not self.params:  # accumulate in fp32, free the bf16 gradients
            torch._foreach_add_([m.grad for m in self.master], [p.grad for p in self.params])
            for p in self.params:
                p.grad = None

    def step(self) -> torch.Tensor:
        """The update at the end of a step; returns the gradient norm before clipping (no host sync)."""
        grads = [m.grad for m in self.master]
        norm = torch.nn.utils.clip_grad_norm_(self.master, self.t.grad_clip if self.t.grad_clip else math.inf)
        self.optimizer.step()
        self.scheduler.step()
        if self.master is self.params:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            torch._foreach_copy_(self.params, self.master)
            torch._foreach_zero_(grads)
        return norm
