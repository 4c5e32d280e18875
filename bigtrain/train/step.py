"""One optimizer step: ``accum`` micro-batches of forward/backward, then DeepSpeed's update."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state


@dataclass
class StepResult:
    loss: float  # mean next-token loss over the global batch
    grad_norm: float | None  # global gradient norm before clipping
    lr: float
    data_wait: float  # seconds spent waiting for batches
    step_time: float  # wall seconds of the whole step


def fetch(batches, accum: int) -> list[torch.Tensor]:
    """All micro-batches of a step, read before any compute. bigtrain's TrainLoader (``next_step``)
    also makes the ranks agree on data errors here, so none enters a collective another has left."""
    if hasattr(batches, "next_step"):
        return batches.next_step()
    return [next(batches) for _ in range(accum)]


def train_step(engine, batches: Iterator[torch.Tensor], accum: int, device: torch.device) -> StepResult:
    start = time.perf_counter()
    micro_batches = fetch(batches, accum)
    data_wait = time.perf_counter() - start
    total = torch.zeros((), device=device)
    for tokens in micro_batches:
        tokens = tokens.to(device, non_blocking=True).long()  # (M, T+1); shards hold uint16/uint32
        losses = engine(tokens[:, :-1], tokens[:, 1:])  # (M, T) fp32
        loss = losses.mean()
        engine.backward(loss)
        engine.step()  # DeepSpeed updates only at the accumulation boundary
        total += loss.detach()
    mean = total / accum
    dist.all_reduce(mean, group=parallel_state.get_data_parallel_group())
    mean /= parallel_state.get_data_parallel_world_size()
    norm = engine.get_global_grad_norm()
    return StepResult(loss=mean.item(), grad_norm=None if norm is None else float(norm),
                      lr=engine.get_lr()[0], data_wait=data_wait, step_time=time.perf_counter() - start)
