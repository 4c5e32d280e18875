"""Sequence parallelism (``parallel.sequence_parallel``): what megatron-core's layers do not do for us.

Megatron-style SP (Korthikanti et al. 2022) shards the residual stream, the RMSNorms and the other
pointwise ops along the sequence over the tensor-parallel group; megatron-core's layers, built with
``ModelParallelConfig(sequence_parallel=True)``, all-gather the sequence before each column-parallel
projection and reduce-scatter after each row-parallel one (bigtrain/model/llama.py wires the embedding's
reduce-scatter and the output layer's gather). Two things are left to the caller:

- **Gradients of TP-replicated parameters.** The RMSNorm gains are replicated on every TP rank but each
  rank now sees only its shard of the sequence, so each holds a partial gradient: they must be summed over
  the TP group before DeepSpeed averages them over data parallelism. Megatron does this in
  ``finalize_model_grads`` (``_allreduce_layernorm_grads``); DeepSpeed's engine does not. A tensor hook on
  each such parameter all-reduces its gradient as autograd produces it, *before* it is accumulated into
  ``.grad`` -- hence before ZeRO-1/2's accumulation hooks copy it into their buckets and before ZeRO-3's
  hooks reduce-scatter and partition it (the gradient autograd hands the hook is the whole tensor, also
  under ZeRO-3). One small all-reduce per norm and micro batch.
- **CPU.** megatron-core 0.16 allocates the gather/scatter outputs and its global all-gather buffer on
  ``torch.cuda.current_device()``, which raises without CUDA. :func:`allow_sequence_parallel_on_cpu`
  makes that call answer "cpu" when CUDA is unavailable (there is no CUDA device to prefer), so the same
  megatron code runs on gloo; on a CUDA machine it changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn


def allow_sequence_parallel_on_cpu() -> None:
    """On a machine without CUDA, let megatron-core's ``torch.cuda.current_device()`` mean the CPU."""
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: torch.device("cpu")


def tp_replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters every TP rank holds whole (megatron marks the sharded ones ``tensor_model_parallel``)."""
    return [p for p in model.parameters() if p.requires_grad and not getattr(p, "tensor_model_parallel", False)]


def sum_replicated_grads_over_tp(model: nn.Module, tp_group) -> int:
    """Register the all-reduce of each TP-replicated parameter's gradient; returns how many."""
    def all_reduce(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=tp_group)
        return grad

    params = tp_replicated_parameters(model)
    for param in params:
        param.register_hook(all_reduce)
    return len(params)
