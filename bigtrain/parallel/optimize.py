"""The fast path, applied to the plain model from outside, in a fixed order (torchtitan's):

    activation checkpointing (model.activation_checkpointing) -> torch.compile (train.compile) -> DeepSpeed

Both change instance attributes only (``block.forward``, a layer's ``compute``): module classes,
parameter names and the state dict are untouched, so checkpoints and the HF converter see the same
model. Each switch keeps the model's function (loss parity: tests/test_fastpath.py).

Activation checkpointing (``torch.utils.checkpoint``, non-reentrant, so it works under DeepSpeed
ZeRO-3's parameter hooks, which re-gather a block's weights for the recomputation):

- ``full``: a block keeps only its input; backward re-runs its whole forward (+1 forward of FLOPs).
- ``selective``: per-op selective checkpointing: the outputs of matmuls, attention kernels and
  all-reduces are kept, everything else (RMSNorm in fp32, RoPE, SwiGLU, casts, residual adds, and
  sequence parallelism's all-gathers and reduce-scatters) is recomputed from them in backward: most of
  a block's activation memory, a negligible share of its FLOPs.

Compile: ``torch.compile`` (inductor) of each layer's parameter-free math, llama.py's ``compute``
functions: RMSNorm, RoPE + attention, SwiGLU, one compiled function shared by all layers (no
recompilation per layer). Compiling whole blocks instead would trace DeepSpeed ZeRO-3's
parameter-gathering module hooks (measured: dynamo hits its recompile limit on them and falls back);
the matmuls are single library calls either way. Inductor needs a C++ compiler on CPU and Triton on
CUDA: :func:`compile_problem` checks for them.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from bigtrain.config.schema import ACTIVATION_CHECKPOINTING as AC_MODES


def optimize_model(model: nn.Module, activation_checkpointing: str = "none", compile: bool = False) -> nn.Module:
    """Apply the switches to ``model`` (its ``layers`` and every module with a ``compute``) in place."""
    if activation_checkpointing not in AC_MODES:
        raise ValueError(f"activation_checkpointing must be one of {AC_MODES}, got {activation_checkpointing!r}")
    if activation_checkpointing != "none":
        for block in model.layers:
            checkpoint_block(block, activation_checkpointing == "selective")
    if compile:
        for module in model.modules():
            if callable(getattr(module, "compute", None)):
                module.compute = compiled(module.compute)
    return model


@functools.cache
def compiled(fn: Callable) -> Callable:
    """One compiled copy per function, shared by every layer that uses it."""
    return torch.compile(fn)


def compile_problem(device_type: str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on this machine, or None if it can."""
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs the triton package (pip install triton)"
        return None
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as error:  # inductor raises its own error types when no compiler is found
        return f"torch.compile on CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX): {error}"
    return None


def checkpoint_block(block: nn.Module, selective: bool) -> None:
    plain = block.forward
    context_fn = functools.partial(create_selective_checkpoint_contexts, save_policy) if selective else None

    def forward(*args):
        # preserve_rng_state=False: the model draws no random numbers (no dropout)
        kwargs = {"context_fn": context_fn} if context_fn else {}
        return checkpoint(plain, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    block.forward = forward


@functools.cache
def saved_ops() -> frozenset:
    """aten ops whose outputs selective checkpointing keeps: matmuls, attention kernels, collectives."""
    aten = torch.ops.aten
    names = ["mm", "addmm", "bmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_mm"]
    ops = {getattr(aten, name).default for name in names if hasattr(aten, name)}
    # sequence parallelism's collectives are recomputed: megatron's reduce-scatter and all-gather write into
    # a tensor they are given (c10d's in-place ops), which selective checkpointing cannot cache
    for namespace, name in [("c10d", "allreduce_"), ("_c10d_functional", "all_reduce"),
                            ("flash_attn", "_flash_attn_forward")]:
        packet = getattr(getattr(torch.ops, namespace, None), name, None)
        if packet is not None:
            ops.add(packet.default)
    return frozenset(ops)


def save_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE
