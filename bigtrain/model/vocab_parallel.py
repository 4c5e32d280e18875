"""Losses and metrics on vocabulary-parallel logits: no rank ever holds full-vocabulary logits.

Each tensor-parallel rank holds logits (..., V/tp) for its contiguous slice of the (padded) vocabulary,
as megatron's ``vocab_parallel_cross_entropy`` expects. Reductions over the vocabulary are a local
reduction plus an all-reduce over the tensor-parallel group (max, then sum of exponentials), so the
result is the same on every TP rank and equal to the dense computation (tests/test_objectives.py).
At TP=1, or in a process without megatron's groups (bigtrain/model/layers.py's ``SingleProcess``), the
all-reduces are skipped and the logits are the full vocabulary.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy


def _parallel() -> bool:
    """Megatron's groups exist (training): logits are vocabulary shards of the TP group."""
    return parallel_state.model_parallel_is_initialized()


def _tp_rank() -> int:
    return parallel_state.get_tensor_model_parallel_rank() if _parallel() else 0


def _all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if _parallel() and parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(t, op=op, group=parallel_state.get_tensor_model_parallel_group())
    return t


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy (...) in fp32 (megatron's vocab-parallel one when its groups exist: it
    works in place on ``logits.float()``, so compute anything else from the logits first)."""
    if _parallel():
        return vocab_parallel_cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="none").view_as(labels)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Local shard (..., V/tp) of log softmax over the full vocabulary: (z - max) - log sum exp(z - max)."""
    shifted = logits - _all_reduce(logits.max(dim=-1).values, dist.ReduceOp.MAX).unsqueeze(-1)
    total = _all_reduce(torch.exp(shifted).sum(dim=-1))  # (...)
    return shifted - total.log().unsqueeze(-1)


class VocabParallelKL(torch.autograd.Function):
    """Per-token T² · KL(softmax(teacher/T) ‖ softmax(student/T)) from local logit shards (..., V/tp).

    Backward (student only, the teacher is frozen): d/dz_s = T · (p_s − p_t) on the local shard.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        log_ps = log_softmax(student.float() / temperature)
        log_pt = log_softmax(teacher.float() / temperature)
        p_t = torch.exp(log_pt)
        terms = torch.where(p_t > 0, p_t * (log_pt - log_ps), torch.zeros_like(p_t))  # padding rows: p_t = 0
        kl = _all_reduce(terms.sum(dim=-1))
        ctx.save_for_backward(torch.exp(log_ps), p_t)
        ctx.temperature = temperature
        return kl * temperature ** 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p_s, p_t = ctx.saved_tensors
        return (p_s - p_t) * (grad * ctx.temperature).unsqueeze(-1), None, None


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token T² · KL(teacher_T ‖ student_T), fp32, shape (...)."""
    return VocabParallelKL.apply(student, teacher, temperature)


@torch.no_grad()
def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(...) bool: the label has the highest logit over the full vocabulary (ties count as correct)."""
    shard = logits.shape[-1]
    start = _tp_rank() * shard
    local = (labels >= start) & (labels < start + shard)
    index = (labels - start).clamp(0, shard - 1).unsqueeze(-1)
    target = torch.where(local, logits.gather(-1, index).squeeze(-1), torch.zeros((), dtype=logits.dtype,
                                                                                   device=logits.device))
    target = _all_reduce(target.float())
    top = _all_reduce(logits.max(dim=-1).values.float(), dist.ReduceOp.MAX)
    return target >= top
