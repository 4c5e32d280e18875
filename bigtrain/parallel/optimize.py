"""The fast path, applied to the plain model from outside, in a fixed order (torchtitan's):

    activation checkpointing (model.activation_checkpointing) -> torch.compile (train.compile) -> DeepSpeed

Both replace ``block.forward`` on the block *instance*: module classes, parameter names and the
state dict are untouched, so checkpoints and the HF converter see the same model. Each switch keeps
the model's function (loss parity: tests/test_fastpath.py).

Activation checkpointing (``torch.utils.checkpoint``, non-reentrant, so it works under DeepSpeed
ZeRO-3's parameter hooks, which re-gather a block's weights for the recomputation):

- ``full``: a block keeps only its input; backward re-runs its whole forward (+1 forward of FLOPs).
- ``selective``: per-op selective checkpointing: the outputs of matmuls, attention kernels and
  collectives are kept, everything else (RMSNorm in fp32, RoPE, SwiGLU, casts, residual adds) is
  recomputed from them in backward. Those elementwise intermediates are most of a block's
  activation memory (for a 2048-wide bf16 block, ~60% of it) but a negligible share of its FLOPs.

Compile: ``torch.compile`` of each block's forward (default inductor backend). Under ZeRO-3,
DeepSpeed's parameter hooks are ``torch.compiler.disable``-d, so the graph breaks around each
hooked linear layer and the pieces between them (norm, RoPE + attention, SwiGLU, residual add +
norm) are what gets fused; with ZeRO 0-2 the whole block is one graph.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from bigtrain.config.schema import ACTIVATION_CHECKPOINTING as AC_MODES


def optimize_model(model: nn.Module, activation_checkpointing: str = "none", compile: bool = False,
                   compile_backend: str = "inductor") -> nn.Module:
    """Apply the switches to every block of ``model.layers`` in place; returns ``model``."""
    if activation_checkpointing not in AC_MODES:
        raise ValueError(f"activation_checkpointing must be one of {AC_MODES}, got {activation_checkpointing!r}")
    for block in model.layers:
        if activation_checkpointing != "none":
            checkpoint_block(block, activation_checkpointing == "selective")
        if compile:
            block.forward = torch.compile(block.forward, backend=compile_backend)
    return model


def checkpoint_block(block: nn.Module, selective: bool) -> None:
    plain = block.forward
    context_fn = functools.partial(create_selective_checkpoint_contexts, save_policy) if selective else None

    def forward(*args):
        # preserve_rng_state=False: the model draws no random numbers (no dropout)
        kwargs = {"context_fn": context_fn} if context_fn else {}
        return checkpoint(plain, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    block.forward = forward


def saved_ops() -> frozenset:
    """aten ops whose outputs selective checkpointing keeps: matmuls, attention kernels, collectives."""
    aten = torch.ops.aten
    names = ["mm", "addmm", "bmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_mm"]
    ops = {getattr(aten, name).default for name in names if hasattr(aten, name)}
    for namespace, name in [("c10d", "allreduce_"), ("_c10d_functional", "all_reduce"),
                            ("flash_attn", "_flash_attn_forward")]:
        packet = getattr(getattr(torch.ops, namespace, None), name, None)
        if packet is not None:
            ops.add(packet.default)
    return frozenset(ops)


@functools.cache
def _saved() -> frozenset:
    return saved_ops()


def save_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _saved() else CheckpointPolicy.PREFER_RECOMPUTE
