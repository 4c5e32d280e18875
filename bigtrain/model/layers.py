"""The model's layers: megatron-core's tensor-parallel ones, or plain single-process equivalents.

Training hands ``LlamaModel`` a megatron ``ModelParallelConfig`` (bigtrain/parallel/engine.py) and
gets megatron's ``ColumnParallelLinear``/``RowParallelLinear``/``VocabParallelEmbedding``, which need
the process groups megatron holds. Running one model in one process (``bigtrain eval``/``generate``,
the export's parity check: bigtrain/convert/load.py) hands it :class:`SingleProcess` instead and gets
plain torch layers with the same parameter names, shapes and math as megatron's at TP=1, and no
process group, no DeepSpeed.

Both kinds return ``(output, bias)`` like megatron's layers; bigtrain's Llama has no biases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                           vocab_parallel_cross_entropy)
from torch import nn

Init = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class SingleProcess:
    """The narrow parallel config of a model alone in its process: TP=1, fp32, plain torch layers."""

    perform_initialization: bool = True  # False: weights left uninitialised (a checkpoint fills them)
    tensor_model_parallel_size: int = 1
    sequence_parallel: bool = False


Parallel = ModelParallelConfig | SingleProcess


class Linear(nn.Module):
    """``y = x W^T`` with megatron's call convention; ``weight=`` overrides W (tied output layer)."""

    def __init__(self, in_features: int, out_features: int, cfg: SingleProcess, init_method: Init,
                 allocate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features)) if allocate else None
        if allocate and cfg.perform_initialization:
            init_method(self.weight)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return F.linear(x, self.weight if weight is None else weight), None


class Embedding(nn.Module):
    """Token id -> row of the (padded) table; the vocabulary-shard attributes of megatron's, at TP=1."""

    def __init__(self, num_embeddings: int, dim: int, cfg: SingleProcess, init_method: Init):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        self.vocab_start_index, self.num_embeddings_per_partition = 0, num_embeddings
        if cfg.perform_initialization:
            init_method(self.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


def column_linear(in_features: int, out_features: int, tp: Parallel, init_method: Init, stride: int = 1,
                  skip_weight_param_allocation: bool = False) -> nn.Module:
    """Output features split over TP ranks (each rank's output stays local)."""
    if isinstance(tp, SingleProcess):
        return Linear(in_features, out_features, tp, init_method, allocate=not skip_weight_param_allocation)
    return ColumnParallelLinear(in_features, out_features, config=tp, bias=False, gather_output=False, stride=stride,
                                init_method=init_method, skip_weight_param_allocation=skip_weight_param_allocation)


def row_linear(in_features: int, out_features: int, tp: Parallel, init_method: Init) -> nn.Module:
    """Input features split over TP ranks; the output is all-reduced."""
    if isinstance(tp, SingleProcess):
        return Linear(in_features, out_features, tp, init_method)
    return RowParallelLinear(in_features, out_features, config=tp, bias=False, input_is_parallel=True,
                             skip_bias_add=False, init_method=init_method)


def embedding(num_embeddings: int, dim: int, tp: Parallel, init_method: Init) -> nn.Module:
    """Vocabulary rows split over TP ranks; with sequence parallelism the output is reduce-scattered along
    the sequence into megatron's (T/tp, B, C) layout instead of all-reduced."""
    if isinstance(tp, SingleProcess):
        return Embedding(num_embeddings, dim, tp, init_method)
    return VocabParallelEmbedding(num_embeddings, dim, config=tp, init_method=init_method,
                                  reduce_scatter_embeddings=tp.sequence_parallel)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, tp: Parallel) -> torch.Tensor:
    """Per-token losses (B, T) from local logits (B, T, V/tp), in fp32."""
    if isinstance(tp, SingleProcess):
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    return vocab_parallel_cross_entropy(logits.float(), labels)
